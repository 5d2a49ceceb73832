"""When the daemon acts: a pure state machine, the clock and events in, actions out.

Every rule about timing lives here and nowhere else:
- debounce: an event sets a deadline `debounce` seconds away, and each further event
  pushes it out again, so a burst (systemd-binfmt flushing and re-registering twenty
  handlers) becomes one reconcile that sees only the end state;
- storm cap: however long a burst lasts, the reconcile comes at most `max_delay` seconds
  after its first event;
- resync: a full reconcile at least every `resync` seconds, events or not;
- rate limit: nix-daemon restarts at least `restart_gap` seconds apart;
- back-off: after a failed restart, the next try waits 2, 4, 8 ... seconds, at most 300.

The loop (daemon.py) asks `due(now)` what to do and `timeout(now)` how long it may sleep,
does the work, and reports back through `reconciled()` and `restarted()`. Nothing here
reads a clock or touches the system, so unit tests drive it with made-up times.
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple, Optional

MAX_RESTART_BACKOFF_SECONDS = 300.0


class Action(enum.Enum):
    RECONCILE = "reconcile"
    RESTART = "restart"
    WATCHDOG = "watchdog"


class Timing(NamedTuple):
    """The daemon's intervals, in seconds."""

    debounce: float
    restart_gap: float
    resync: float
    watchdog: Optional[float] = None  # None: systemd asked for no watchdog
    max_delay: float = 1.0


def restart_backoff(failures: int) -> float:
    """Seconds before the next try after `failures` failed restarts in a row."""
    return min(MAX_RESTART_BACKOFF_SECONDS, 2.0 ** failures)


class Rules:
    """Deadlines for the next reconcile, restart and watchdog ping."""

    def __init__(self, timing: Timing, now: float) -> None:
        self.timing = timing
        self.restart_failures = 0
        self._reconcile_at: Optional[float] = None
        self._burst_started: Optional[float] = None
        self._resync_at = now + timing.resync
        self._restart_owed = False
        self._restart_at: Optional[float] = None
        self._last_restart = -math.inf
        self._watchdog_at = now + timing.watchdog if timing.watchdog else None

    @property
    def restart_pending(self) -> bool:
        return self._restart_at is not None

    def retime(self, timing: Timing) -> None:
        """A reloaded config brings new intervals; deadlines already set stand."""
        self.timing = timing

    # --- events in ----------------------------------------------------------------

    def changed(self, now: float) -> None:
        """Something that may matter happened: reconcile once things are quiet."""
        if self._reconcile_at is None:
            self._burst_started = now
        start = self._burst_started if self._burst_started is not None else now
        self._reconcile_at = min(now + self.timing.debounce, start + self.timing.max_delay)

    def resync(self, now: float) -> None:
        """Reconcile at once (a reload, a resync)."""
        self._reconcile_at = now

    def reconciled(self, now: float, *, restart: bool) -> None:
        """A reconcile ran; `restart`: it changed what nix-daemon must read."""
        self._reconcile_at = self._burst_started = None
        self._resync_at = now + self.timing.resync
        self._restart_owed = self._restart_owed or restart
        if self._restart_owed and self._restart_at is None:
            self._restart_at = max(now, self._last_restart + self.timing.restart_gap)

    def restarted(self, now: float, *, ok: bool) -> Optional[float]:
        """A restart ran; on failure, the seconds until the next try."""
        self._last_restart = now
        if ok:
            self._restart_owed, self._restart_at, self.restart_failures = False, None, 0
            return None
        self.restart_failures += 1
        delay = restart_backoff(self.restart_failures)
        self._restart_at = now + delay
        return delay

    def watchdog_sent(self, now: float) -> None:
        if self.timing.watchdog:
            self._watchdog_at = now + self.timing.watchdog

    # --- actions out --------------------------------------------------------------

    def due(self, now: float) -> tuple[Action, ...]:
        """What to do now, in this order."""
        actions = []
        if self._watchdog_at is not None and now >= self._watchdog_at:
            actions.append(Action.WATCHDOG)
        if now >= self._resync_at or (self._reconcile_at is not None
                                      and now >= self._reconcile_at):
            actions.append(Action.RECONCILE)
        if self._restart_at is not None and now >= self._restart_at:
            actions.append(Action.RESTART)
        return tuple(actions)

    def timeout(self, now: float) -> Optional[float]:
        """How long the loop may wait for events; None: until one comes."""
        deadlines = [t for t in (self._reconcile_at, self._restart_at, self._watchdog_at,
                                 self._resync_at) if t is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None
