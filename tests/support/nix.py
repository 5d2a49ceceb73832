"""A real nix-daemon without systemd, in a test's private namespace, and a Nix client
that cannot override it; what every tier's Nix is configured with, and what it builds.

The daemon runs inside the test's namespace (tests/support/kernel.py): it sees only the
private binfmt_misc, and owns the namespace's own /nix/var/nix/daemon-socket, so it
neither needs nor touches the host's socket, /etc/nix or nix-daemon. The store is the
host's /nix/store, as any second Nix client's would be.

nix-daemon reads nix.conf only at start and SIGHUP kills it (no reload), so a restart is
kill + start. This module, run as a program inside the namespace, does both, so the test
fixture and any other program there (binfmtd's `restart = [...]`, through a small script)
restart the very same daemon: `python -m tests.support.nix start|restart|stop STATE_DIR`
(with the repository on PYTHONPATH: entering the namespace leaves the working folder).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.parts import REPO
from tests.support.waiting import until

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tests.support.containers import Machine
    from tests.support.kernel import PrivateBinfmt

SOCKET = Path("/nix/var/nix/daemon-socket/socket")
BUILD_USERS = 10  # as many as Debian's nix-setup-systemd creates
NOBODY = 65534
SO_ACCEPTCON = 0x10000  # /proc/net/unix: the socket listens

DAEMON_CONF = """\
# The test nix-daemon's whole configuration (tests/e2e, and the booted matrix, system and
# farm tiers). Nothing here about platforms: that is for the test, or binfmtd, to add.
build-users-group = nixbld
# Without these two a sandbox that fails to set up builds unsandboxed, proving nothing.
sandbox = true
sandbox-fallback = false
# No network here: never ask a binary cache.
substituters =
"""

# What every tier builds: `busybox sh -c script` as the builder of a derivation for `system`,
# busybox lying beside the file at busybox_path(system). A new nonce for every build gives a
# new output path, so no build is ever answered from the store. Built with
# `nix-build FILE *derivation_args(system, nonce, script)`.
BUSYBOX_DERIVATION = """\
{ system, nonce, script ? "uname -m > $out" }:
derivation {
  name = "binfmtd-test";
  inherit system nonce;
  # busybox picks the applet from argv[0]: the file must be called busybox.
  builder = "${./src-${system}}/busybox";
  args = [ "sh" "-c" script ];
}
"""


DERIVATION_FILE = "default.nix"  # BUSYBOX_DERIVATION's name in the folder it builds from


def busybox_path(system: str) -> str:
    """Where BUSYBOX_DERIVATION takes the builder for `system` from, beside its file."""
    return f"src-{system}/busybox"


def derivation_args(system: str, nonce: str, script: str | None = None) -> list[str]:
    """nix-build's arguments for BUSYBOX_DERIVATION (the script: `uname -m > $out`)."""
    chosen = ["--argstr", "script", script] if script is not None else []
    return ["--argstr", "system", system, "--argstr", "nonce", nonce, *chosen]


def lay_out_builds(machine: Machine, folder: str, user: str,
                   busyboxes: Mapping[str, str]) -> str:
    """In a booted container: BUSYBOX_DERIVATION in `folder`, with the busybox for each
    system (a path in the container) beside it, all `user`'s; return the file's path."""
    for system, busybox in busyboxes.items():
        machine.run(["install", "-D", "-m", "755", "-o", user, busybox,
                     f"{folder}/{busybox_path(system)}"])
    path = f"{folder}/{DERIVATION_FILE}"
    machine.run(["install", "-m", "644", "-o", user, "/dev/stdin", path],
                input=BUSYBOX_DERIVATION)
    return path


def not_declared(system: str) -> str:
    """What Nix 2.8 says when no platform it declares can build for `system`."""
    return f"a '{system}' with features {{}} is required to build"


class NixTestError(RuntimeError):
    """The test nix-daemon did not start or stop as it should."""


@dataclass
class BuildResult:
    returncode: int
    stdout: str
    stderr: str
    output: str | None  # the text of $out when the build succeeded


def listeners(proc: Path = Path("/proc")) -> list[int]:
    """Pids (as `proc` numbers them) of the processes holding nix-daemon's listening socket.

    Each connection makes nix-daemon fork a worker, also called nix-daemon, that closes
    the listening socket: counting listeners rather than names tells the daemon apart.
    """
    listening = set()
    for line in (proc / "1" / "net" / "unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[7] == str(SOCKET) and int(fields[3], 16) & SO_ACCEPTCON:
            listening.add(f"socket:[{fields[6]}]")
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in listening for fd in (entry / "fd").iterdir()):
                    found.append(int(entry.name))
    return sorted(found)


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


class DaemonFiles:
    """Where one test nix-daemon keeps its configuration, pid (as the namespace numbers
    it), log and restart script."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.conf_dir = state / "conf"
        self.conf_path = self.conf_dir / "nix.conf"
        self.pid_file = state / "nix-daemon.pid"
        self.log_path = state / "nix-daemon.log"
        self.restart_script = state / "restart-nix-daemon"

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None


class InsideDaemon(DaemonFiles):
    """The daemon as the program inside the namespace starts and stops it."""

    def start(self, timeout: float = 20.0) -> int:
        """Start nix-daemon in a session of its own; wait until it listens on its socket.

        Nothing connects to find out (a connection would fork a worker): the daemon is
        ready when it holds a listening socket at SOCKET.
        """
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
        if not until(lambda: proc.pid in listeners() or proc.poll() is not None, timeout) \
                or proc.poll() is not None:
            self.stop()
            raise NixTestError(f"nix-daemon did not come up; log {self.log_path}:\n"
                               + self.log_path.read_text(errors="replace")[-2000:])
        return proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon's process group. Connection workers (each in a session of its
        own) keep running, as with systemd's KillMode=process for the upstream unit, so
        builds in flight survive; the namespace's end stops them."""
        pid = self.pid
        if pid is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            if until(lambda: _gone(pid), timeout):
                break
        else:
            raise NixTestError(f"nix-daemon {pid} survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)

    def restart(self) -> int:
        self.stop()
        return self.start()


class NixDaemon(DaemonFiles):
    """The test's nix-daemon as the host sees it: it runs inside `namespace`, configured
    only by `conf_path`; `restart_command` restarts it from any program in there."""

    def __init__(self, state: Path, namespace: PrivateBinfmt) -> None:
        super().__init__(state)
        self.namespace = namespace

    @property
    def restart_command(self) -> list[str]:
        """What another program inside the namespace runs to restart this daemon."""
        return [str(self.restart_script)]

    def setup(self) -> None:
        """Write the daemon's nix.conf and restart script; prepare the build users."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(DAEMON_CONF)
        self.restart_script.write_text(
            f"#!/bin/sh\nPYTHONPATH={REPO} exec {' '.join(self._program('restart'))}\n")
        self.restart_script.chmod(0o755)
        ensure_build_users()

    def start(self) -> None:
        self._inside("start")

    def restart(self) -> None:
        self._inside("restart")

    def stop(self) -> None:
        self._inside("stop")

    def listeners(self) -> list[int]:
        """Pids inside of the processes that hold the daemon's listening socket."""
        return listeners(self.namespace.inside("/proc"))

    def _program(self, command: str) -> list[str]:
        return [sys.executable, "-m", "tests.support.nix", command, str(self.state)]

    def _inside(self, command: str) -> None:
        done = self.namespace.run(self._program(command), timeout=60,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            raise NixTestError(f"tests.support.nix {command}: {done.stdout}{done.stderr}")


class NixClient:
    """nix-build as an ordinary user, whose own settings cannot reach the daemon.

    Nix forwards a client's overrides (user nix.conf, NIX_CONFIG, --option) to the daemon,
    which obeys them from root, a trusted user. So the client runs as nobody, with an
    empty NIX_CONF_DIR, no user configuration files, no NIX_* variables and no --option:
    the daemon's nix.conf alone decides which platforms can be built. It runs inside the
    namespace, in a network namespace of its own (unshare -n): the daemon's socket is a
    file and still reachable, anything on the network is not. `state` must be readable
    by everyone (nobody reads the derivation and the builder from there).
    """

    def __init__(self, state: Path, namespace: PrivateBinfmt) -> None:
        self.state = state
        self.namespace = namespace
        self.conf_dir = state / "conf"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "nix.conf").write_text("# empty: the daemon's nix.conf decides\n")
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "HOME": str(state), "NIX_REMOTE": "daemon",
                    "NIX_CONF_DIR": str(self.conf_dir), "NIX_USER_CONF_FILES": "/dev/null"}

    def begin(self, system: str, busybox: Path, script: str) -> RunningBuild:
        """Start building a derivation for `system` whose builder is `busybox sh -c script`."""
        work = self.state / f"build-{uuid.uuid4().hex[:8]}"
        builder = work / busybox_path(system)
        builder.parent.mkdir(parents=True)
        shutil.copy2(busybox, builder)
        (work / DERIVATION_FILE).write_text(BUSYBOX_DERIVATION)
        cmd = ["unshare", "--net", "--", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
               "--clear-groups", "nix-build", "--no-out-link", str(work / DERIVATION_FILE),
               *derivation_args(system, uuid.uuid4().hex, script)]
        with open(work / "build.log", "w") as log:  # the child keeps its own copy
            return RunningBuild(work, subprocess.Popen(
                self.namespace.argv(cmd, cwd=str(work)), env=self.env, stdout=subprocess.PIPE,
                stderr=log, text=True))

    def build(self, system: str, busybox: Path, script: str,
              timeout: float = 300.0) -> BuildResult:
        return self.begin(system, busybox, script).wait(timeout)


class RunningBuild:
    """A nix-build in progress; its log (the builder's output included) grows as it runs."""

    def __init__(self, work: Path, process: subprocess.Popen[str]) -> None:
        self.work = work
        self.process = process

    def log(self) -> str:
        """What nix-build printed so far. Nix 2.8 passes a failed builder's error on in its
        wire format, each string after its length as bytes, which need not be UTF-8."""
        return (self.work / "build.log").read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 300.0) -> BuildResult:
        stdout, _ = self.process.communicate(timeout=timeout)
        output = None
        if self.process.returncode == 0:
            output = Path(stdout.strip().splitlines()[-1]).read_text()
        return BuildResult(self.process.returncode, stdout, self.log(), output)


def _gone(pid: int) -> bool:
    """True once `pid` no longer runs (the namespace's first process reaps orphans; a
    zombie not yet reaped holds no socket any more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "restart", "stop"):
        sys.exit(f"usage: {sys.argv[0]} start|restart|stop STATE_DIR")
    daemon = InsideDaemon(Path(sys.argv[2]))
    if sys.argv[1] == "stop":
        daemon.stop()
    else:
        pid = daemon.restart() if sys.argv[1] == "restart" else daemon.start()
        print(f"nix-daemon listening, pid {pid}")
