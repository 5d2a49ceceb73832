"""`binfmtd run`: one thread, one select() over inotify, signals and (while binfmt_misc
is not mounted) the mount table.

An event only sets a deadline; at the deadline everything is read again and planned,
so a burst of events (systemd-binfmt registering twenty handlers, or flushing and
re-registering them all) becomes one reconcile, and an end state equal to the start
writes nothing and restarts nothing. Idle means select() with no timeout but the
safety-net resync (and the watchdog, when systemd asks for one).
"""

from __future__ import annotations

import math
import os
import select
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Callable, Optional

from . import inotify
from .config import Config, read_config
from .errors import BinfmtdError
from .host import Host, apply_plan, plan_for, read_world
from .log import get_logger
from .nixdaemon import restart_nix_daemon, restart_spacing, systemd_running
from .notify import sd_notify
from .reconcile import Plan

BINFMT_EVENTS = (inotify.IN_MODIFY | inotify.IN_CLOSE_WRITE | inotify.IN_CREATE
                 | inotify.IN_DELETE | inotify.IN_ATTRIB | inotify.IN_ONLYDIR)
FOLDER_EVENTS = (inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM
                 | inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_ONLYDIR)
# However long a storm lasts, act at least this often.
MAX_DELAY_SECONDS = 1.0
MAX_RESTART_BACKOFF_SECONDS = 300.0
MOUNTINFO = "/proc/self/mountinfo"


def emulated_status(platforms: tuple[str, ...]) -> str:
    """The STATUS= line `systemctl status binfmtd` shows."""
    if not platforms:
        return "nothing emulated"
    return f"{len(platforms)} emulated: {' '.join(platforms)}"


def restart_backoff(failures: int) -> float:
    """Seconds before the next try after `failures` failed restarts in a row."""
    return min(MAX_RESTART_BACKOFF_SECONDS, 2.0 ** failures)


def watchdog_interval(environ: dict[str, str]) -> Optional[float]:
    """Half of WATCHDOG_USEC, when systemd set a watchdog for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Daemon:
    """The state of one running binfmtd: watches, deadlines, what it last saw."""

    def __init__(self, host: Host, config: Config, *, restart: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.config = config
        self.restart_allowed = restart  # --no-restart says False
        self.clock = clock
        self.log = get_logger()
        self.inotify = inotify.Inotify()
        self.watches: dict[int, str] = {}  # wd -> folder
        self.binfmt_wd: Optional[int] = None
        self.watched_names: set[str] = set()
        self.reconcile_at: Optional[float] = None
        self.burst_started: Optional[float] = None
        self.resync_at = clock() + config.resync_seconds
        self.restart_owed = False
        self.restart_at: Optional[float] = None
        self.last_restart = -math.inf
        self.restart_failures = 0
        self.restart_gap = self._restart_gap()
        self.watchdog_every = watchdog_interval(dict(os.environ))
        self.watchdog_at = clock() + self.watchdog_every if self.watchdog_every else None
        self.platforms: tuple[str, ...] = ()
        self.reported: frozenset[str] = frozenset()
        self.error: Optional[str] = None
        self.stopping = False
        self.reload_requested = False
        self.sent_status: Optional[str] = None

    @property
    def restart_enabled(self) -> bool:
        return self.restart_allowed and self.config.restart is not None

    # --- the loop ---------------------------------------------------------------

    def run(self) -> int:
        with _signal_wakeup(self._on_signal) as wakeup_fd, open(MOUNTINFO, "rb") as mounts:
            self.rewatch()
            self.reconcile()
            self.sent_status = self.status_line()
            _notify_quietly(f"READY=1\nSTATUS={self.sent_status}")
            self.log.info("daemon.ready", platforms=self.platforms)
            while not self.stopping:
                self._wait(wakeup_fd, mounts)
                self._run_due_work()
            _notify_quietly("STOPPING=1")
            self.log.info("daemon.stopped")
            self.inotify.close()
        return 0

    def _wait(self, wakeup_fd: int, mounts: BinaryIO) -> None:
        timeout = self._timeout()
        # The mount table is only watched while binfmt_misc is not: it is the one
        # change that has no inotify event (mountinfo raises POLLPRI instead).
        exceptional = [mounts.fileno()] if self.binfmt_wd is None else []
        events_fd = self.inotify.fileno()
        readable, _, changed = select.select([events_fd, wakeup_fd], [], exceptional, timeout)
        if wakeup_fd in readable:
            _drain(wakeup_fd)
        if events_fd in readable:
            self.on_events(self.inotify.read_events())
        if changed:
            mounts.seek(0)
            mounts.read()
            if self.rewatch():
                self.log.info("binfmt_misc.mounted", path=str(self.host.binfmt_misc))
                self.schedule_reconcile()

    def _timeout(self) -> Optional[float]:
        deadlines = [t for t in (self.reconcile_at, self.restart_at, self.watchdog_at,
                                 self.resync_at) if t is not None]
        return max(0.0, min(deadlines) - self.clock()) if deadlines else None

    def _run_due_work(self) -> None:
        if self.reload_requested:
            self.reload()
        now = self.clock()
        if self.watchdog_at is not None and now >= self.watchdog_at:
            _notify_quietly("WATCHDOG=1")
            self.watchdog_at = now + (self.watchdog_every or 0)
        if now >= self.resync_at:
            self.schedule_reconcile(immediately=True)
        if self.reconcile_at is not None and now >= self.reconcile_at:
            self.reconcile()
        if self.restart_at is not None and self.clock() >= self.restart_at:
            self.restart_nix_daemon()

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    # --- events -----------------------------------------------------------------

    def on_events(self, events: list[inotify.Event]) -> None:
        """Decide whether events matter; act on none of them directly."""
        relevant = False
        for event in events:
            if event.mask & inotify.IN_Q_OVERFLOW:
                self.log.warning("inotify.overflow")
                relevant = True
            elif event.mask & inotify.IN_IGNORED:
                self._forget_watch(event.wd)
                relevant = True
            elif event.wd == self.binfmt_wd:
                relevant = True
            elif event.name in self.watched_names:
                if event.name == self.host.config.name:
                    self.reload_requested = True
                relevant = True
            elif self.error is not None:  # e.g. space freed beside a nix.conf we could not write
                relevant = True
        if relevant:
            self.schedule_reconcile()

    def schedule_reconcile(self, immediately: bool = False) -> None:
        now = self.clock()
        if immediately:
            self.reconcile_at = now
            return
        if self.reconcile_at is None:
            self.burst_started = now
        start = self.burst_started if self.burst_started is not None else now
        self.reconcile_at = min(now + self.config.debounce_seconds, start + MAX_DELAY_SECONDS)

    # --- watches ----------------------------------------------------------------

    def rewatch(self, managed: Optional[Path] = None) -> bool:
        """(Re)establish watches; True when binfmt_misc became watched now."""
        became_watched = False
        if self.binfmt_wd is None and (self.host.binfmt_misc / "register").exists():
            self.binfmt_wd = self._watch(self.host.binfmt_misc, BINFMT_EVENTS)
            became_watched = self.binfmt_wd is not None
        names = {self.host.nix_conf.name, self.host.config.name}
        folders = {self.host.nix_conf.parent, self.host.config.parent}
        if managed is not None:
            names.add(managed.name)
            folders.add(managed.parent)
        self.watched_names = names
        watched = set(self.watches.values())
        for folder in folders:
            if str(folder) not in watched and folder.is_dir():
                self._watch(folder, FOLDER_EVENTS)
        return became_watched

    def _watch(self, folder: Path, mask: int) -> Optional[int]:
        try:
            wd = self.inotify.add_watch(str(folder), mask)
        except OSError as error:
            self.log.warning("watch.failed", path=str(folder), error=error.strerror)
            return None
        self.watches[wd] = str(folder)
        return wd

    def _unwatch_binfmt(self) -> None:
        """binfmt_misc vanished from its path while its inodes live on (mounted elsewhere):
        the watch would follow them, so drop it and wait for the path to be a mount again."""
        assert self.binfmt_wd is not None
        self.inotify.rm_watch(self.binfmt_wd)
        self._forget_watch(self.binfmt_wd)

    def _forget_watch(self, wd: int) -> None:
        folder = self.watches.pop(wd, None)
        if wd == self.binfmt_wd:
            self.binfmt_wd = None
            self.log.warning("binfmt_misc.unwatched", path=folder,
                             reason="unmounted or gone; waiting for it to return")

    # --- acting -------------------------------------------------------------------

    def reconcile(self) -> None:
        """Read everything, plan, write if needed; never raises for bad input."""
        self.reconcile_at = self.burst_started = None
        self.resync_at = self.clock() + self.config.resync_seconds
        try:
            world = read_world(self.host, self.config)
            planned = plan_for(world, self.config, self.host)
            self._report(planned)
            if planned.blocked is None:
                outcome = apply_plan(world, planned, self.config, self.host, restart=False)
                if outcome.written:
                    self.log.info("nixconf.written", path=str(world.managed),
                                  platforms=planned.platforms,
                                  sandbox_paths=planned.sandbox_paths)
                    self.restart_owed = self.restart_enabled
            # What nix.conf declares now: the plan, unless it was left alone.
            self.platforms = planned.platforms if planned.text else planned.declared_platforms
            self._set_error(None)
            if not world.binfmt.mounted and self.binfmt_wd is not None:
                self._unwatch_binfmt()
            self.rewatch(world.managed)
        except BinfmtdError as error:
            self._set_error(str(error))
        if self.restart_owed and self.restart_at is None:
            self.restart_at = max(self.clock(), self.last_restart + self.restart_gap)
        self._notify_status()

    def _report(self, planned: Plan) -> None:
        """Log each problem once, when it appears, and say when it is gone."""
        current = frozenset(str(p) for p in planned.problems)
        for problem in sorted(current - self.reported):
            self.log.warning("problem", problem=problem)
        for problem in sorted(self.reported - current):
            self.log.info("problem.resolved", problem=problem)
        self.reported = current

    def _set_error(self, error: Optional[str]) -> None:
        if error != self.error and error is not None:
            self.log.error("reconcile.failed", error=error,
                           retry="on the next change, or at the next resync")
        self.error = error

    def _restart_gap(self) -> float:
        """restart-interval-seconds, widened where systemd's start limit for the unit
        would otherwise fail nix-daemon (and its socket) for good."""
        gap = self.config.restart_interval_seconds
        unit = self.config.restart
        if self.restart_enabled and isinstance(unit, str) and systemd_running():
            needed = restart_spacing(unit)
            if needed > gap:
                self.log.info("restart.paced", unit=unit, seconds=round(needed, 2),
                              reason="systemd's start limit for the unit")
                gap = needed
        return gap

    def restart_nix_daemon(self) -> None:
        self.restart_at = None
        try:
            said = restart_nix_daemon(self.config.restart)
        except BinfmtdError as error:
            self.restart_failures += 1
            delay = restart_backoff(self.restart_failures)
            self.restart_at = self.clock() + delay
            self.log.error("nixdaemon.restart_failed", error=str(error), retry_in=delay)
        else:
            self.restart_owed = False
            self.restart_failures = 0
            self.log.info("nixdaemon.restarted", how=said)
        self.last_restart = self.clock()
        self._notify_status()

    def reload(self) -> None:
        """SIGHUP or a changed config.toml: read it again, keep the old one if it is bad."""
        self.reload_requested = False
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        _notify_quietly(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")
        try:
            self.config = read_config(self.host.config, required=self.host.config_required)
            self.restart_gap = self._restart_gap()
            self.log.info("config.reloaded", path=str(self.host.config))
        except BinfmtdError as error:
            self.log.error("config.rejected", error=str(error), keeping="the previous config")
        self.reconcile()
        _notify_quietly("READY=1")

    def _notify_status(self) -> None:
        """Tell systemd the status line when it changed, and only then."""
        line = self.status_line()
        if line != self.sent_status:
            self.sent_status = line
            _notify_quietly(f"STATUS={line}")

    def status_line(self) -> str:
        parts = [emulated_status(self.platforms)]
        if self.restart_failures:
            parts.append(f"nix-daemon restart failed {self.restart_failures}x, retrying")
        elif self.restart_at is not None:
            parts.append("nix-daemon restart pending")
        if self.binfmt_wd is None:
            parts.append("waiting for binfmt_misc to be mounted")
        if self.error:
            parts.append(f"error: {self.error}")
        return "; ".join(parts)


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
