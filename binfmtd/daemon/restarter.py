"""The daemon's nix-daemon restarts: how often systemd allows them, and doing one.

When restarts come (debounced, rate-limited, backed off) is rules.py's business; this
module knows the unit: systemd's start limit (5 starts in 10 s by default) fails
nix-daemon and its socket for good when restarts come too fast, so the gap between
restarts is widened to stay clear of it, and after each restart the units are checked
(nixdaemon.restart_nix_daemon) rather than trusted.
"""

from __future__ import annotations

from typing import Optional

from ..config import RestartPolicy
from ..errors import BinfmtdError
from ..nixdaemon import restart_nix_daemon, restart_spacing, systemd_running
from .log import get_logger


class Restarter:
    """Restarts nix-daemon under one policy, or never (`--no-restart`, `restart = false`)."""

    def __init__(self, policy: RestartPolicy, *, allowed: bool) -> None:
        self.policy = policy
        self.enabled = allowed and not policy.never
        self._log = get_logger()

    def gap(self, configured: float) -> float:
        """restart-interval-seconds, widened where systemd's start limit for the unit
        would otherwise fail nix-daemon (and its socket) for good."""
        unit = self.policy.unit
        if not (self.enabled and unit is not None and systemd_running()):
            return configured
        needed = restart_spacing(unit)
        if needed <= configured:
            return configured
        self._log.info("restart.paced", unit=unit, seconds=round(needed, 2),
                       reason="systemd's start limit for the unit")
        return needed

    def restart(self) -> Optional[str]:
        """Restart nix-daemon; None when it worked, else what went wrong."""
        try:
            said = restart_nix_daemon(self.policy)
        except BinfmtdError as error:
            return str(error)
        self._log.info("nixdaemon.restarted", how=said)
        return None
