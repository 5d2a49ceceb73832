"""Run the real `binfmtd run` as systemd would: a process, a notify socket, signals
(the daemon and reliability tiers).

Every daemon watches a private binfmt_misc (tests/support/kernel.py): either from the
host, through the instance's /proc/PID/root path, or, where the test is about what the
daemon sees in its own mount namespace (binfmt_misc unmounted, mounted again), run inside.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from binfmtd.daemon.inotify import IN_CLOSE_WRITE, Inotify
from tests.support.kernel import PrivateBinfmt
from tests.support.waiting import until

IN_CLOSE_NOWRITE = 0x00000010


class RunningDaemon:
    """A `binfmtd run` process, the messages it sent to NOTIFY_SOCKET, and its files."""

    def __init__(self, root: Path, namespace: PrivateBinfmt, *, inside: bool = False,
                 binfmt_misc: Optional[Path] = None) -> None:
        self.root = root
        self.namespace = namespace
        self.inside = inside  # run in the namespace, where binfmt_misc is at its usual path
        self.nix_conf = root / "etc-nix" / "nix.conf"
        self.nix_conf.parent.mkdir(exist_ok=True)
        if not self.nix_conf.exists():
            self.nix_conf.write_text("sandbox = true\n")
        self.config = root / "config.toml"
        self.restart_log = root / "restarts.log"
        self.binfmt_misc = binfmt_misc or (None if inside else namespace.binfmt_misc)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(root / "notify.sock"))
        self.messages: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.pid = 0  # binfmtd itself (inside, nsenter is its parent and passes no signal on)

    def write_config(self, extra: str = "") -> None:
        recorder = self.root / "restart-nix-daemon"
        if not recorder.exists():  # never rewrite it: it may be running (ETXTBSY)
            recorder.write_text(f"#!/bin/sh\necho restart >> {self.restart_log}\n")
            recorder.chmod(0o755)
        self.config.write_text(f'restart = ["{recorder}"]\nrestart-interval-seconds = 0.5\n'
                               + extra)

    def start(self, *args: str) -> None:
        if not self.config.exists():
            self.write_config()
        env = {**os.environ, "NOTIFY_SOCKET": str(self.root / "notify.sock"),
               "BINFMTD_NIX_CONF": str(self.nix_conf), "BINFMTD_CONFIG": str(self.config)}
        env.pop("BINFMTD_BINFMT_MISC", None)
        if self.binfmt_misc is not None:
            env["BINFMTD_BINFMT_MISC"] = str(self.binfmt_misc)
        argv = [sys.executable, "-m", "binfmtd", "run", "--log-format", "json", *args]
        if self.inside:
            argv = self.namespace.argv(argv)
        with open(self.root / "daemon.log", "w") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(argv, env=env, stderr=log, text=True)
        self.pid = (self.namespace.child_of(self.process) if self.inside
                    else self.process.pid)

    @property
    def restarts(self) -> int:
        return len(self.restart_log.read_text().splitlines()) if self.restart_log.exists() else 0

    @property
    def log(self) -> str:
        return (self.root / "daemon.log").read_text()

    def wait_for_message(self, wanted: str, timeout: float = 5) -> str:
        """The first new notify message containing `wanted`."""
        def received() -> Optional[str]:
            try:
                message = self.socket.recv(4096).decode()  # blocks for a poll's interval
            except socket.timeout:
                return None
            self.messages.append(message)
            return message if wanted in message else None

        self.socket.settimeout(0.01)
        message = until(received, timeout, interval=0)
        if message is None:
            raise AssertionError(
                f"no notify message with {wanted!r}; got {self.messages}\n{self.log}")
        return message

    def wait_until(self, condition: Callable[[], bool], timeout: float = 3) -> float:
        """Seconds until `condition` held; fails after `timeout`."""
        start = time.monotonic()
        if not until(condition, timeout):
            raise AssertionError(f"condition not met within {timeout} s\n{self.log}")
        return time.monotonic() - start

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=5)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.socket.close()


class Reads:
    """Who read a binfmt_misc folder's entries since our last write to it.

    Every reconcile reads the entries; the kernel reports each read-only close as
    IN_CLOSE_NOWRITE, in order with our own writes (IN_CLOSE_WRITE). So "a read after my
    last write" means the daemon looked at the world as I left it.
    """

    def __init__(self, folder: Path) -> None:
        self.inotify = Inotify()
        self.inotify.add_watch(str(folder), IN_CLOSE_NOWRITE | IN_CLOSE_WRITE)
        self.events: list[tuple[int, str]] = []

    def wait_for_a_read_after_my_writes(self, timeout: float = 3) -> None:
        def read_after() -> bool:
            self.events += [(e.mask, e.name) for e in self.inotify.read_events()]
            writes = [i for i, (mask, _) in enumerate(self.events) if mask & IN_CLOSE_WRITE]
            after = self.events[writes[-1] + 1:] if writes else self.events
            return any(mask & IN_CLOSE_NOWRITE and name for mask, name in after)

        assert until(read_after, timeout), f"nobody read the entries: {self.events}"

    def close(self) -> None:
        self.inotify.close()


def wakeups(pid: int) -> int:
    """How often the process was scheduled: it cannot run without a context switch."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def blocked_in_select(pid: int) -> bool:
    """Asleep in select/poll (the kernel names the function it waits in)."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    wchan = Path(f"/proc/{pid}/wchan").read_text()
    return state == "S" and ("poll" in wchan or "select" in wchan)


def declares(daemon: RunningDaemon, system: str) -> Callable[[], bool]:
    return lambda: system in daemon.nix_conf.read_text()


def lacks(daemon: RunningDaemon, system: str) -> Callable[[], bool]:
    return lambda: system not in daemon.nix_conf.read_text()
