"""Gather what status shows beyond the plan: Nix's own reading, and nix-daemon's age."""

from __future__ import annotations

import contextlib
import os
from typing import Optional

from .config import Config
from .errors import BinfmtdError
from .host import Host, World
from .nixdaemon import failed_units, find_nix_daemons, started_before, systemd_running
from .nixtool import find_nix, validate_candidate
from .reconcile import Plan
from .report import Report


def gather_report(world: World, planned: Plan, host: Host, config: Config, *,
                  ask_nix: bool = True) -> Report:
    effective: Optional[dict[str, str]] = None
    effective_error = None
    nix = find_nix() if ask_nix else None
    if nix is not None:
        try:
            effective = validate_candidate(nix, host.nix_conf, world.managed,
                                           world.managed_text or "", world.main_text or "")
        except BinfmtdError as error:
            effective_error = str(error)
    daemons = tuple(find_nix_daemons(str(host.nix_conf.parent)))
    nix_installed = nix is not None or world.managed.parent.is_dir()
    unit = config.restart.unit
    unit_failure = failed_units(unit) if unit is not None and systemd_running() else None
    changed = _last_change(world)
    stale = tuple(d for d in daemons if changed is not None and started_before(d, changed))
    return Report(
        binfmt_misc=str(host.binfmt_misc),
        mounted=world.binfmt.mounted,
        enabled=world.binfmt.enabled,
        nix_conf=str(world.managed),
        plan=planned,
        effective=effective,
        effective_error=effective_error,
        daemons=daemons,
        stale_daemons=stale,
        nix_installed=nix_installed,
        unit_failure=unit_failure,
    )


def _last_change(world: World) -> Optional[float]:
    times = []
    for path in {world.managed, world.managed.parent / "nix.conf"}:
        with contextlib.suppress(OSError):
            times.append(os.stat(path).st_mtime)
    return max(times, default=None)
