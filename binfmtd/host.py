"""The edges of one reconcile: where things are, reading them, applying a plan."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .binfmt import BinfmtState, Handler, read_binfmt_state
from .conffile import managed_file, read_conf_text, write_conf_text
from .config import Config
from .errors import BinfmtdError
from .interpreters import Interpreter, read_interpreter
from .nixdaemon import restart_nix_daemon
from .nixtool import INSTALL_NIX, find_nix, validate_candidate
from .platforms import host_system
from .reconcile import Plan, plan

DEFAULT_CONFIG = Path("/etc/binfmtd/config.toml")
DEFAULT_BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
DEFAULT_NIX_CONF = Path("/etc/nix/nix.conf")
DEFAULT_BINFMT_D = Path("/etc/binfmt.d")


@dataclass(frozen=True)
class Host:
    """Every path binfmtd reads or writes; only cli builds one, tests point it at tmp."""

    binfmt_misc: Path = DEFAULT_BINFMT_MISC
    nix_conf: Path = DEFAULT_NIX_CONF
    config: Path = DEFAULT_CONFIG
    config_required: bool = False  # the user named the config file: it must exist
    binfmt_d: Path = DEFAULT_BINFMT_D  # where `register` leaves its lines for systemd-binfmt
    system: str = field(default_factory=lambda: host_system(platform.machine()))


@dataclass(frozen=True)
class World:
    """Everything a plan is made from, read at one moment."""

    binfmt: BinfmtState
    interpreters: dict[str, Interpreter]
    main_text: Optional[str]  # nix.conf; None when it does not exist
    managed: Path  # the file that holds the block
    managed_text: Optional[str]


def read_world(host: Host, config: Config) -> World:
    """Read binfmt_misc, the emulators it names and nix.conf."""
    binfmt = read_binfmt_state(host.binfmt_misc)
    paths = {e.interpreter for e in binfmt.entries if isinstance(e, Handler)}
    interpreters = {path: read_interpreter(path) for path in sorted(paths)}
    main_text = read_conf_text(host.nix_conf)
    managed = managed_file(host.nix_conf, main_text, config.nix_conf_target)
    managed_text = main_text if managed == host.nix_conf else read_conf_text(managed)
    return World(binfmt, interpreters, main_text, managed, managed_text)


def plan_for(world: World, config: Config, host: Host) -> Plan:
    return plan(world.binfmt, world.interpreters, world.managed_text or "", config,
                host.system, str(world.managed))


@dataclass(frozen=True)
class Outcome:
    """What applying a plan did."""

    written: bool
    restart: Optional[str]  # what the restart step said; None when none was due


def apply_plan(world: World, planned: Plan, config: Config, host: Host, *,
               restart: bool) -> Outcome:
    """Validate the new file with Nix, write it, then restart nix-daemon if it changed."""
    if planned.text is None:
        return Outcome(written=False, restart=None)
    if not world.managed.parent.is_dir():
        raise BinfmtdError(f"{world.managed.parent} does not exist: is Nix installed? "
                           f"({INSTALL_NIX})")
    nix = find_nix()
    if nix is not None:
        _validate(nix, world, planned.text, host)
    written = write_conf_text(world.managed, planned.text)
    said = restart_nix_daemon(config.restart) if written and restart else None
    return Outcome(written=written, restart=said)


def _validate(nix: str, world: World, candidate: str, host: Host) -> None:
    main_text = world.main_text or ""
    try:
        validate_candidate(nix, host.nix_conf, world.managed, candidate, main_text)
    except BinfmtdError as rejected:
        current = world.managed_text or ""
        try:
            validate_candidate(nix, host.nix_conf, world.managed, current, main_text)
        except BinfmtdError:
            raise BinfmtdError(
                f"{world.managed}: {rejected} (it did so before binfmtd's change too: "
                "fix the file first)"
            ) from None
        raise BinfmtdError(f"{world.managed}: not written, {rejected}") from None
