"""Gather what status shows beyond the plan: Nix's own reading, and nix-daemon's age."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Optional

from .conffile import managed_file, read_conf_text
from .config import Config
from .errors import BinfmtdError
from .host import Host
from .nixdaemon import failed_units, find_nix_daemons, started_before, systemd_running
from .nixtool import NixReading, find_nix, read_in_place, read_nix_install_hint, start_reading

if TYPE_CHECKING:  # cli starts ask_nix() before the command's own module is imported
    from .apply import World
    from .builder import BuilderLine
    from .reconcile import Plan
    from .report import Report


def ask_nix(host: Host, config: Config) -> Optional[NixReading]:
    """Nix's own reading of nix.conf as it is now, with Nix's version, under way; None
    where Nix is not installed. Started as soon as the paths are known, so that Nix's two
    runs overlap binfmtd's own reading of binfmt_misc."""
    if host.nix_conf.name == "nix.conf":
        reading = read_in_place(str(host.nix_conf))
    else:
        reading = _read_staged(host, config)
    if reading is not None:
        reading.ask_version()
    return reading


def _read_staged(host: Host, config: Config) -> Optional[NixReading]:
    """A nix.conf by another name: Nix reads a copy named nix.conf in a temp folder."""
    nix = find_nix()
    if nix is None:
        return None
    main_text = read_conf_text(host.nix_conf)
    managed = managed_file(host.nix_conf, main_text, config.nix_conf_target)
    text = main_text if managed == host.nix_conf else read_conf_text(managed)
    return start_reading(nix, host.nix_conf, managed, text or "", main_text or "")


def gather_report(world: World, planned: Plan, host: Host, config: Config,
                  reading: Optional[NixReading]) -> Report:
    """The plan, with Nix's own reading (from ask_nix) and nix-daemon's state."""
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
