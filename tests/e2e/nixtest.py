"""A real nix-daemon without systemd, and a Nix client that cannot override it.

nix-daemon reads nix.conf only at start and SIGHUP kills it (no reload), so a restart is
kill + start. The same code serves the pytest fixture and, through a small script file,
any other program (binfmtd's `restart = [...]`), so both restart the very same daemon.

Run as a program: `python3 nixtest.py restart|stop STATE_DIR`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SOCKET = Path("/nix/var/nix/daemon-socket/socket")
BUILD_USERS = 10  # as many as Debian's nix-setup-systemd creates

DAEMON_CONF = """\
# The test nix-daemon's whole configuration (tests/e2e). Nothing here about platforms:
# that is for the test, or binfmtd, to add.
build-users-group = nixbld
# Without these two a sandbox that fails to set up builds unsandboxed, proving nothing.
sandbox = true
sandbox-fallback = false
# No network here: never ask a binary cache.
substituters =
"""

DERIVATION = """\
derivation {{
  name = "binfmtd-e2e";
  system = {system};
  # busybox picks the applet from argv[0]: the file must be called busybox.
  builder = "${{./dir}}/busybox";
  args = [ "sh" "-c" {script} ];
  # A new output path for every build, so no build is ever answered from the store.
  nonce = {nonce};
}}
"""


class NixTestError(RuntimeError):
    """The test nix-daemon did not start or stop as it should."""


@dataclass
class BuildResult:
    returncode: int
    stdout: str
    stderr: str
    output: str | None  # the text of $out when the build succeeded


def running_daemons() -> list[int]:
    """Pids of every nix-daemon process, zombies included (as `pgrep -x nix-daemon`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "nix-daemon":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return sorted(pids)


def ensure_build_users() -> None:
    """Create the nixbld group and users if missing, as nix-setup-systemd's postinst."""
    subprocess.run(["groupadd", "--force", "--system", "nixbld"], check=True)
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    for n in range(1, BUILD_USERS + 1):
        if subprocess.run(["id", f"nixbld{n}"], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--comment", f"Nix build user {n}",
                            "--home-dir", "/var/empty", "--gid", "nixbld",
                            "--groups", "nixbld", "--no-user-group", "--shell", nologin,
                            f"nixbld{n}"], check=True)


class NixDaemon:
    """One test nix-daemon whose configuration and pid live in `state`."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.conf_dir = state / "conf"
        self.conf_path = self.conf_dir / "nix.conf"
        self.pid_file = state / "nix-daemon.pid"
        self.log_path = state / "nix-daemon.log"
        self.restart_script = state / "restart-nix-daemon"

    @property
    def restart_command(self) -> list[str]:
        """What another program runs to restart this daemon."""
        return [str(self.restart_script)]

    def setup(self) -> None:
        """Write the daemon's nix.conf and restart script; prepare users and socket dir."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(DAEMON_CONF)
        self.restart_script.write_text(
            f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} restart {self.state}\n")
        self.restart_script.chmod(0o755)
        ensure_build_users()
        SOCKET.parent.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 20.0) -> int:
        """Start nix-daemon in a session of its own and wait until its socket answers."""
        if self.pid is not None and not _gone(self.pid):
            raise NixTestError(f"nix-daemon {self.pid} is still running")
        SOCKET.unlink(missing_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "HOME": str(self.state), "NIX_CONF_DIR": str(self.conf_dir),
               "NIX_USER_CONF_FILES": "/dev/null"}
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(["nix-daemon", "--daemon"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while not _answers(SOCKET):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise NixTestError(f"nix-daemon did not come up; log {self.log_path}:\n"
                                   + self.log_path.read_text(errors="replace")[-2000:])
            time.sleep(0.01)
        return proc.pid

    def stop(self, everything: bool = False, timeout: float = 10.0) -> None:
        """Stop the daemon's process group; with `everything`, its workers too.

        A restart keeps connection workers (each in a session of its own) running, as
        systemd's KillMode=process does for the upstream unit, so builds in flight survive.
        """
        pid = self.pid
        if pid is None:
            return
        pids = [pid] + (_descendants(pid) if everything else [])
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    if p == pid:
                        os.killpg(p, sig)  # the daemon leads its own process group
                    else:
                        os.kill(p, sig)
            if _wait(lambda: all(_gone(p) for p in pids), timeout):
                break
        else:
            raise NixTestError(f"nix-daemon {pids} survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)

    def restart(self) -> int:
        self.stop()
        return self.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop everything and wait until no nix-daemon process, zombie or not, is left.

        The fixture refuses to start beside another nix-daemon, so every one left is ours.
        """
        self.stop(everything=True)
        if not _wait(lambda: not [p for p in running_daemons() if not _gone(p, reap_only=True)],
                     timeout):
            left = running_daemons()
            for p in left:  # workers orphaned by an earlier restart
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            if not _wait(lambda: not running_daemons(), timeout):
                raise NixTestError(f"nix-daemon processes left: {running_daemons()}")


class NixClient:
    """nix-build as a client whose own settings cannot reach the daemon.

    Nix forwards a client's overrides (user nix.conf, NIX_CONFIG, --option) to the daemon,
    which obeys them from root, a trusted user. So the client gets an empty NIX_CONF_DIR,
    no user configuration files, no NIX_* variables and no --option: the daemon's
    nix.conf alone decides which platforms can be built.
    """

    def __init__(self, state: Path) -> None:
        self.state = state
        self.conf_dir = state / "conf"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "nix.conf").write_text("# empty: the daemon's nix.conf decides\n")
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "HOME": str(state), "NIX_REMOTE": "daemon",
                    "NIX_CONF_DIR": str(self.conf_dir), "NIX_USER_CONF_FILES": "/dev/null"}

    def build(self, system: str, busybox: Path, script: str,
              timeout: float = 300.0) -> BuildResult:
        """Build a derivation for `system` whose builder is `busybox sh -c script`.

        The client runs in a network namespace of its own (unshare -n): the daemon's
        socket is a file and still reachable, anything on the network is not.
        """
        work = self.state / f"build-{uuid.uuid4().hex[:8]}"
        (work / "dir").mkdir(parents=True)
        shutil.copy2(busybox, work / "dir" / "busybox")
        (work / "default.nix").write_text(DERIVATION.format(
            system=nix_string(system), script=nix_string(script),
            nonce=nix_string(uuid.uuid4().hex)))
        cmd = ["nix-build", "--no-out-link", str(work / "default.nix")]
        proc = subprocess.run(["unshare", "--net", "--", *cmd], env=self.env, cwd=work,
                              capture_output=True, text=True, timeout=timeout)
        output = None
        if proc.returncode == 0:
            output = Path(proc.stdout.strip().splitlines()[-1]).read_text()
        return BuildResult(proc.returncode, proc.stdout, proc.stderr, output)


def nix_string(text: str) -> str:
    """A Nix string literal: quotes, backslashes and `${` must not be read by Nix."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped.replace("\n", "\\n") + '"'


def _answers(path: Path) -> bool:
    """True once the daemon accepts connections (the file alone exists before listen())."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie does not)."""
    return not _gone(pid)


def _gone(pid: int, reap_only: bool = False) -> bool:
    """True if `pid` no longer runs: reaped (by us if our child) or a zombie.

    A daemon started by the restart script is an orphan; the pytest process is made a
    child subreaper so that it can reap it at once. Elsewhere the zombie no longer holds
    the socket, which is all a restart needs. With `reap_only`, a zombie we cannot reap
    still counts as present (as pgrep sees it).
    """
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z" and not reap_only


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (connection workers, their builders)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("restart", "stop"):
        sys.exit(f"usage: {sys.argv[0]} restart|stop STATE_DIR")
    daemon = NixDaemon(Path(sys.argv[2]))
    if sys.argv[1] == "restart":
        print(f"nix-daemon restarted, pid {daemon.restart()}")
    else:
        daemon.stop()
