"""`binfmtd run`: one thread, one select() over inotify, signals and (while binfmt_misc
is not mounted) the mount table.

This is the shell around three parts: `rules.Rules` decides when to act (debounce,
storm cap, resync, restart rate limit, back-off), `watches.Watches` says which events
matter, and `restarter.Restarter` restarts nix-daemon. Each reconcile is the same
read -> plan -> apply path as `binfmtd sync` (host.reconcile_once). Idle means select()
with no timeout but the safety-net resync (and the watchdog, when systemd asks for one).
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import BinaryIO, Callable, Optional

from ..apply import Outcome, reconcile_once
from ..config import Config, read_config
from ..errors import BinfmtdError
from ..host import Host
from ..nixtool import find_nix, nix_version
from .log import get_logger
from .notify import sd_notify
from .restarter import Restarter
from .rules import Action, Rules, Timing
from .watches import Watches

MOUNTINFO = "/proc/self/mountinfo"


def emulated_status(platforms: tuple[str, ...]) -> str:
    """The STATUS= line `systemctl status binfmtd` shows."""
    if not platforms:
        return "nothing emulated"
    return f"{len(platforms)} emulated: {' '.join(platforms)}"


def watchdog_interval(environ: dict[str, str]) -> Optional[float]:
    """Half of WATCHDOG_USEC, when systemd set a watchdog for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def timing(config: Config, restarter: Restarter) -> Timing:
    """The rules' intervals, from config.toml, systemd's start limit and its watchdog."""
    return Timing(debounce=config.debounce_seconds,
                  restart_gap=restarter.gap(config.restart_interval_seconds),
                  resync=config.resync_seconds,
                  watchdog=watchdog_interval(dict(os.environ)))


def status_line(platforms: tuple[str, ...], rules: Rules, binfmt_watched: bool,
                error: Optional[str]) -> str:
    """The STATUS= line: what is emulated, and anything that needs a look."""
    parts = [emulated_status(platforms)]
    if rules.restart_failures:
        parts.append(f"nix-daemon restart failed {rules.restart_failures}x, retrying")
    elif rules.restart_pending:
        parts.append("nix-daemon restart pending")
    if not binfmt_watched:
        parts.append("waiting for binfmt_misc to be mounted")
    if error:
        parts.append(f"error: {error}")
    return "; ".join(parts)


class Announcer:
    """What the daemon tells the log and systemd, each thing once, when it changes."""

    def __init__(self) -> None:
        self.error: Optional[str] = None
        self._cause: Optional[str] = None
        self._problems: frozenset[str] = frozenset()
        self._status: Optional[str] = None
        self._log = get_logger()

    def problems(self, problems: Iterable[object]) -> None:
        """Log each problem when it appears, and say when it is gone."""
        current = frozenset(str(p) for p in problems)
        for problem in sorted(current - self._problems):
            self._log.warning("problem", problem=problem)
        for problem in sorted(self._problems - current):
            self._log.info("problem.resolved", problem=problem)
        self._problems = current

    def failed(self, error: Optional[BinfmtdError]) -> None:
        """The last reconcile's error (None: it worked); each cause is logged once."""
        if error is not None and error.cause != self._cause:
            self._log.error("reconcile.failed", error=str(error),
                            retry="on the next change, or at the next resync")
        self.error = None if error is None else str(error)
        self._cause = None if error is None else error.cause

    def ready(self, status: str) -> None:
        self._status = status
        _notify_quietly(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Tell systemd the status line when it changed, and only then."""
        if status != self._status:
            self._status = status
            _notify_quietly(f"STATUS={status}")


class Daemon:
    """One running binfmtd: the loop, and what it last saw and said."""

    def __init__(self, host: Host, config: Config, *, restart: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.config = config
        self.clock = clock
        self.log = get_logger()
        self.restarter = Restarter(config.restart, allowed=restart)
        self.restart_allowed = restart  # --no-restart says False
        self.watches = Watches(host.binfmt_misc, (host.nix_conf, host.config))
        self.rules = Rules(timing(self.config, self.restarter), clock())
        self.said = Announcer()
        self.platforms: tuple[str, ...] = ()
        self.stopping = False
        self.reload_requested = False

    # --- the loop ---------------------------------------------------------------

    def run(self) -> int:
        with _signal_wakeup(self._on_signal) as wakeup_fd, open(MOUNTINFO, "rb") as mounts:
            self.watches.rewatch()
            self.reconcile()
            nix = find_nix()  # asked before READY=1: after it, the daemon only waits
            self.log.info("daemon.ready", platforms=self.platforms, nix=nix,
                          nix_version=nix_version(nix) if nix else None)
            self.said.ready(self._status())
            while not self.stopping:
                self._wait(wakeup_fd, mounts)
                self._act()
            _notify_quietly("STOPPING=1")
            self.log.info("daemon.stopped")
            self.watches.close()
        return 0

    def _wait(self, wakeup_fd: int, mounts: BinaryIO) -> None:
        # The mount table is only watched while binfmt_misc is not: it is the one
        # change that has no inotify event (mountinfo raises POLLPRI instead).
        exceptional = [] if self.watches.binfmt_watched else [mounts.fileno()]
        events_fd = self.watches.fileno()
        readable, _, changed = select.select([events_fd, wakeup_fd], [], exceptional,
                                             self.rules.timeout(self.clock()))
        if wakeup_fd in readable:
            _drain(wakeup_fd)
        if events_fd in readable:
            seen = self.watches.read(failing=self.said.error is not None)
            self.reload_requested = self.reload_requested or seen.config_changed
            if seen.relevant:
                self.rules.changed(self.clock())
        if changed:
            mounts.seek(0)
            mounts.read()
            if self.watches.rewatch():
                self.log.info("binfmt_misc.mounted", path=str(self.host.binfmt_misc))
                self.rules.changed(self.clock())

    def _act(self) -> None:
        if self.reload_requested:
            self.reload()
        for action in self.rules.due(self.clock()):
            if action is Action.WATCHDOG:
                _notify_quietly("WATCHDOG=1")
                self.rules.watchdog_sent(self.clock())
            elif action is Action.RECONCILE:
                self.reconcile()
            else:
                self.restart_nix_daemon()

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    # --- acting -------------------------------------------------------------------

    def reconcile(self) -> None:
        """The read -> plan -> apply path of `binfmtd sync`; never raises for bad input."""
        try:
            outcome = reconcile_once(self.host, self.config, write=True, restart=False)
        except BinfmtdError as error:
            self.said.failed(error)
            self.rules.reconciled(self.clock(), restart=False)
        else:
            self._take(outcome)
            self.rules.reconciled(self.clock(),
                                  restart=outcome.written and self.restarter.enabled)
        self.said.status(self._status())

    def _take(self, outcome: Outcome) -> None:
        """Log what changed, and follow binfmt_misc and the file that holds the block."""
        self.said.problems(outcome.plan.problems)
        if outcome.written:
            self.log.info("nixconf.written", path=str(outcome.world.managed),
                          platforms=outcome.plan.platforms,
                          sandbox_paths=outcome.plan.sandbox_paths)
        self.platforms = outcome.declared_platforms
        self.said.failed(None)
        if not outcome.world.binfmt.mounted:
            self.watches.unwatch_binfmt()
        self.watches.rewatch(outcome.world.managed)

    def restart_nix_daemon(self) -> None:
        error = self.restarter.restart()
        retry_in = self.rules.restarted(self.clock(), ok=error is None)
        if error is not None:
            self.log.error("nixdaemon.restart_failed", error=error, retry_in=retry_in)
        self.said.status(self._status())

    def reload(self) -> None:
        """SIGHUP or a changed config.toml: read it again, keep the old one if it is bad."""
        self.reload_requested = False
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        _notify_quietly(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")
        try:
            self.config = read_config(self.host.config, required=self.host.config_required)
            self.restarter = Restarter(self.config.restart, allowed=self.restart_allowed)
            self.rules.retime(timing(self.config, self.restarter))
            self.log.info("config.reloaded", path=str(self.host.config))
        except BinfmtdError as error:
            self.log.error("config.rejected", error=str(error), keeping="the previous config")
        self.reconcile()
        _notify_quietly("READY=1")

    def _status(self) -> str:
        return status_line(self.platforms, self.rules, self.watches.binfmt_watched,
                           self.said.error)


@contextmanager
def _signal_wakeup(handler: Callable[[int], None]) -> Iterator[int]:
    """Route SIGTERM, SIGINT and SIGHUP to `handler`, and wake select() through a pipe."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        handler(signum)

    previous = {s: signal.signal(s, on_signal) for s in wanted}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield read_fd
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, old in previous.items():
            signal.signal(signum, old)
        os.close(read_fd)
        os.close(write_fd)


def _notify_quietly(state: str) -> None:
    """A status line systemd could not take in time is not worth stopping for."""
    try:
        sd_notify(state)
    except OSError as error:
        get_logger().warning("notify.failed", error=error.strerror or str(error))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def run_daemon(host: Host, config: Config, *, restart: bool) -> int:
    return Daemon(host, config, restart=restart).run()
