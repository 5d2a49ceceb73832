"""The one read -> plan -> apply path: read the world, plan, write nix.conf, restart.

Every command that changes nix.conf and the daemon come through reconcile_once().
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Optional

from .asknix import validate_candidate
from .binfmt import BinfmtState, Interpreter, read_binfmt_state
from .conffile import foreign_owner, managed_file, read_conf_text
from .config import Config
from .errors import BinfmtdError
from .files import replace_file
from .host import Host
from .interpreters import read_interpreter, read_sandbox_path
from .judge import interpreters_needed
from .nixdaemon import restart_nix_daemon
from .nixtool import find_nix, read_nix_install_hint
from .reconcile import Plan, plan, plan_removal


class World(NamedTuple):
    """Everything a plan is made from, read at one moment."""

    binfmt: BinfmtState
    interpreters: dict[str, Interpreter]
    main_text: Optional[str]  # nix.conf; None when it does not exist
    managed: Path  # the file that holds the block
    managed_text: Optional[str]
    sandbox_paths: Mapping[str, Interpreter]  # config.toml's sandbox-paths, looked at
    managed_foreign: Optional[str] = None  # why that file is not binfmtd's to write


def read_world(host: Host, config: Config) -> World:
    """Read binfmt_misc, the emulators a plan will look at, and nix.conf."""
    binfmt = read_binfmt_state(host.binfmt_misc)
    interpreters = {path: read_interpreter(path)
                    for path in interpreters_needed(binfmt, config, host.system,
                                                    host.also_native)}
    main_text = read_conf_text(host.nix_conf)
    managed = managed_file(host.nix_conf, main_text, config.nix_conf_target)
    managed_text = main_text if managed == host.nix_conf else read_conf_text(managed)
    configured = {path: read_sandbox_path(path)
                  for _system, paths in config.sandbox_paths for path in paths}
    return World(binfmt, interpreters, main_text, managed, managed_text, configured,
                 foreign_owner(managed))


def plan_for(world: World, config: Config, host: Host, *, remove: bool = False) -> Plan:
    """The plan for this world; with `remove`, the plan that takes the block out."""
    conf_text, conf_name = world.managed_text or "", str(world.managed)
    if remove:
        return plan_removal(conf_text, conf_name, world.managed_foreign)
    return plan(world.binfmt, world.interpreters, conf_text, config, host.system, conf_name,
                world.managed_foreign, host.also_native, world.sandbox_paths)


class Outcome(NamedTuple):
    """One reconcile: what was read, the plan, and what applying it did."""

    world: World
    plan: Plan
    written: bool = False
    restart: Optional[str] = None  # what the restart step said; None when none was due

    @property
    def declared_platforms(self) -> tuple[str, ...]:
        """What the block declares now."""
        return self.plan.platforms if self.written else self.plan.declared_platforms

    def now(self, config: Config, host: Host) -> Outcome:
        """The world and plan as they stand after this outcome's write: the same reading,
        the managed file holding what was written (status after sync reads nothing again)."""
        if not self.written:
            return self
        world = self.world._replace(managed_text=self.plan.text)
        if world.managed == host.nix_conf:
            world = world._replace(main_text=self.plan.text)
        return Outcome(world, plan_for(world, config, host))


def read_and_plan(host: Host, config: Config, *, remove: bool = False) -> Outcome:
    """The first half of reconcile_once(): status and doctor show a plan, even a blocked one."""
    world = read_world(host, config)
    return Outcome(world, plan_for(world, config, host, remove=remove))


def reconcile_once(host: Host, config: Config, *, write: bool, restart: bool,
                   remove: bool = False) -> Outcome:
    """The one read -> plan -> apply path, for every command and the daemon.

    Without `write` it stops after the plan (`sync --check`). A plan that cannot be
    applied (a broken block) is an error here, whoever asks.
    """
    return apply_plan(read_and_plan(host, config, remove=remove), host, config,
                      write=write, restart=restart)


def apply_plan(looked: Outcome, host: Host, config: Config, *, write: bool,
               restart: bool) -> Outcome:
    """The second half: write what the plan says, validated by Nix, and restart."""
    world, planned = looked.world, looked.plan
    if planned.blocked is not None:
        raise BinfmtdError(planned.blocked.message, cause=planned.blocked.cause)
    if not write or planned.text is None:
        return looked
    if not world.managed.parent.is_dir():
        raise BinfmtdError(f"{world.managed.parent} does not exist: is Nix installed? "
                           f"({read_nix_install_hint()})")
    nix = find_nix()
    if nix is not None:
        _validate(nix, world, planned.text, host)
    written = replace_file(world.managed, planned.text)
    said = restart_nix_daemon(config.restart) if written and restart else None
    return Outcome(world, planned, written=written, restart=said)


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
