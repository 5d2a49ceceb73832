"""Gather what status shows beyond the plan: Nix's own reading, and nix-daemon's age."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Optional

from .config import Config
from .errors import BinfmtdError
from .host import Host
from .nixdaemon import failed_units, find_nix_daemons, started_before, systemd_running
from .nixtool import NixReading, find_nix, read_nix_install_hint

if TYPE_CHECKING:
    from .apply import World
    from .builder import BuilderLine
    from .reconcile import Plan
    from .report import Report


def gather_report(world: World, planned: Plan, host: Host, config: Config,
                  reading: Optional[NixReading]) -> Report:
    """The plan, with Nix's own reading (asknix.ask_nix) and nix-daemon's state."""
    from .report import Report

    effective: Optional[dict[str, str]] = None
    effective_error = None
    if reading is not None:
        try:
            effective = reading.result()
        except BinfmtdError as error:
            effective_error = str(error)
    nix = reading.nix if reading is not None else find_nix()
    daemons = find_nix_daemons(str(host.nix_conf.parent))
    nix_installed = nix is not None or world.managed.parent.is_dir()
    unit = config.restart.unit
    unit_failure = failed_units(unit) if unit is not None and systemd_running() else None
    changed = _last_change(world)
    stale = tuple(d.pid for d in daemons if changed is not None and started_before(d, changed))
    return Report(
        binfmt_misc=str(host.binfmt_misc),
        mounted=world.binfmt.mounted,
        enabled=world.binfmt.enabled,
        nix_conf=str(world.managed),
        plan=planned,
        effective=effective,
        effective_error=effective_error,
        daemon_pids=tuple(d.pid for d in daemons),
        stale_pids=stale,
        nix_installed=nix_installed,
        unit_failure=unit_failure,
        nix=nix,
        nix_version=reading.version() if reading is not None else None,
        install_hint=None if nix_installed else read_nix_install_hint(),
        builder=_builder(host, planned, effective),
    )


def _builder(host: Host, planned: Plan, effective: Optional[dict[str, str]]
             ) -> Optional[BuilderLine]:
    """This machine's machines-file line with the defaults, where Nix could be asked."""
    if effective is None:
        return None
    from .builder import read_builder_line

    return read_builder_line(host.system, planned.declared_platforms, effective)


def _last_change(world: World) -> Optional[float]:
    times = []
    for path in {world.managed, world.managed.parent / "nix.conf"}:
        with contextlib.suppress(OSError):
            times.append(os.stat(path).st_mtime)
    return max(times, default=None)
