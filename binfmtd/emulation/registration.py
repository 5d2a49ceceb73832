"""`binfmtd register` / `unregister`: binfmtd's own binfmt_misc entries and binfmt.d files.

Talks to binfmt_misc the way systemd-binfmt does: the old entry is removed first, then
one write(2) per registration. The binfmt.d file makes systemd-binfmt register the
same line again at every boot.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

from ..apply import Outcome, apply_plan, read_and_plan
from ..binfmt import Handler
from ..config import Config
from ..emulators import (
    EMULATIONS,
    Candidate,
    candidates,
    emulator_install_hint,
    render_binfmt_d,
    render_binfmt_line,
)
from ..errors import BinfmtdError
from ..files import replace_file
from ..host import Host
from ..interpreters import read_interpreter
from ..platforms import known_systems, native_reason, unknown_system
from ..reconcile import Plan


class RegistrationResult(NamedTuple):
    """What register or unregister did for one system; `ok` False: the user must act."""

    system: str
    ok: bool
    message: str
    changed: bool = False  # binfmt_misc holds something else now


class Emulated(NamedTuple):
    """What `emulate` did: each system's registration, then the reconcile after them."""

    results: tuple[RegistrationResult, ...]
    outcome: Outcome


def emulate(systems: Sequence[str], host: Host, config: Config, *,
            restart: bool) -> Emulated:
    """Register what `systems` lack, then bring nix.conf in line, as sync and register do:
    binfmt_misc is read once, and once more only if a registration changed it."""
    looked = read_and_plan(host, config)
    results = tuple(register_system(system, looked.plan, host, config) for system in systems)
    if any(result.changed for result in results):
        looked = read_and_plan(host, config)
    return Emulated(results, apply_plan(looked, host, config, write=True, restart=restart))


def find_emulator(system: str) -> Optional[Candidate]:
    """The first installed static emulator for `system` (a dynamic one would need its
    libraries in every build sandbox, so it is not chosen)."""
    for candidate in candidates(system):
        if read_interpreter(candidate.path).is_static:
            return candidate
    return None


def handlers_for(system: str, planned: Plan) -> list[Handler]:
    """Every enabled handler that serves `system`, working or not."""
    return [v.handler for v in planned.verdicts
            if v.handler is not None and v.handler.enabled and system in v.systems]


def check_registrable(system: str, host: Host) -> None:
    """BinfmtdError, in one line, unless binfmtd may register `system` on this host."""
    unknown = unknown_system(system, known_systems())
    if unknown is not None:
        raise BinfmtdError(unknown)
    if system not in EMULATIONS:
        known = " ".join(sorted(EMULATIONS))
        raise BinfmtdError(f"{system}: binfmtd cannot register it (it knows: {known})")
    native = native_reason(system, host.system, host.also_native)
    if native is not None:
        raise BinfmtdError(f"{native}: not registered")


def register_system(system: str, planned: Plan, host: Host, config: Config) -> RegistrationResult:
    """Register `system` unless something already emulates it, or the host runs it."""
    native = native_reason(system, host.system, host.also_native)
    if native is not None:  # emulated-systems lists it for the fleet's other machines
        return RegistrationResult(system, True, f"{native}: nothing to register")
    check_registrable(system, host)
    working = [v.name for v in planned.verdicts if system in v.platforms]
    if working:
        return RegistrationResult(system, True, f"already emulated by {', '.join(working)}")
    prefix = config.registration_prefix
    foreign = [h.name for h in handlers_for(system, planned) if not h.name.startswith(prefix)]
    if foreign and not config.replace_handlers:
        return RegistrationResult(
            system, False, f"{', '.join(foreign)} handles it but does not work (see binfmtd "
            "status); set replace-handlers = true to register binfmtd's own in front of it")
    candidate = find_emulator(system)
    if candidate is None:
        return RegistrationResult(system, False, "no static emulator installed: "
                                  f"{emulator_install_hint(system)}")
    name = prefix + system
    replace_file(host.binfmt_d / f"{name}.conf", render_binfmt_d(name, system, candidate))
    register_line(host.binfmt_misc, name, render_binfmt_line(name, system, candidate))
    return RegistrationResult(system, True, f"registered {name}: {candidate.path} (flags "
                              f"{candidate.flags}), and {host.binfmt_d}/{name}.conf for every "
                              "boot", changed=True)


def unregister_system(system: str, host: Host, config: Config) -> RegistrationResult:
    """Remove what `register` made for `system`, and nothing else."""
    unknown = unknown_system(system, known_systems())
    if unknown is not None:
        raise BinfmtdError(unknown)
    if system not in EMULATIONS:
        raise BinfmtdError(f"{system}: binfmtd never registers it")
    name = config.registration_prefix + system
    removed = remove_entry(host.binfmt_misc, name)
    config_file = host.binfmt_d / f"{name}.conf"
    try:
        config_file.unlink()
        removed = True
    except FileNotFoundError:
        pass
    except OSError as error:
        raise BinfmtdError(f"cannot remove {config_file}: {error.strerror}") from error
    if not removed:
        return RegistrationResult(system, True, f"nothing to remove: binfmtd registered no {name}")
    return RegistrationResult(system, True, f"removed {name}", changed=True)


def _check_name(name: str) -> None:
    """Refuse what would hit a control file, leave the folder or break the line format."""
    if name in ("register", "status") or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise BinfmtdError(f"{name!r} cannot name a binfmt_misc entry")


def register_line(binfmt_misc: Path, name: str, line: str) -> None:
    """One registration: remove the old entry of that name, then one write of the line."""
    _check_name(name)
    remove_entry(binfmt_misc, name)
    try:
        fd = os.open(binfmt_misc / "register", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise BinfmtdError(f"cannot register {name} in {binfmt_misc}: {error.strerror}") from error


def remove_entry(binfmt_misc: Path, name: str) -> bool:
    """Write -1 to an entry; False when there is none, or it went meanwhile (another
    remover, systemd-binfmt flushing): the entry is gone either way, which was the point."""
    _check_name(name)
    entry = binfmt_misc / name
    try:
        # O_WRONLY alone: binfmt_misc refuses to create a file (EACCES), so a gone entry
        # must read as ENOENT, not as a failure to create it.
        fd = os.open(entry, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise BinfmtdError(f"cannot remove {entry}: {error.strerror}") from error
    try:
        os.write(fd, b"-1")
    except OSError as error:
        if not os.path.lexists(entry):
            return False  # removed between our open and our write
        raise BinfmtdError(f"cannot remove {entry}: {error.strerror}") from error
    finally:
        os.close(fd)
    return True
