"""`binfmtd doctor`: prove, per platform, that a Nix build for it would really run.

For each platform binfmtd declares (or is told to emulate): a handler serves it; a tiny
program of that architecture runs; it also runs where only the sandbox paths are
visible, as in a Nix build; Nix reads the platform from nix.conf; and the running
nix-daemon started after nix.conf last changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from ..errors import JSON_VERSION, BinfmtdError
from ..files import remove_folder, temp_folder
from ..proc import run_program
from ..reconcile import Plan
from .elfgen import EXIT_CODE, MACHINES, exit_program
from .sandboxrun import run_sandboxed


class Check(NamedTuple):
    name: str
    ok: Optional[bool]  # None: could not be checked here
    detail: str


class Evidence(NamedTuple):
    """What doctor checks against: the plan, Nix's own reading, and the nix-daemons."""

    plan: Plan
    effective: Optional[Mapping[str, str]]  # None: Nix not installed, or it refused
    daemon_pids: tuple[int, ...]
    stale_pids: tuple[int, ...]  # started before nix.conf last changed


class Diagnosis(NamedTuple):
    system: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok is not False for check in self.checks)


def diagnose(seen: Evidence, systems: tuple[str, ...], *, as_root: bool) -> list[Diagnosis]:
    """Each system's checks; first, any handler that takes the host's own programs."""
    visible = sandbox_paths(seen)
    captured = [Diagnosis(v.systems[0], (Check("host", False, f"{v.name} {v.problems[0]}"),))
                for v in seen.plan.verdicts if v.captures_host]
    return captured + [Diagnosis(system, tuple(_checks(seen, system, visible, as_root)))
                       for system in systems]


def sandbox_paths(seen: Evidence) -> list[str]:
    """What a build sandbox sees besides the store: Nix's own reading when it can be had."""
    if seen.effective is None:
        return list(seen.plan.declared_sandbox_paths)
    paths = []
    for word in seen.effective.get("sandbox-paths", "").split():
        source = word.rstrip("?").split("=", 1)[-1]
        paths.append(source)
    return paths


def _checks(seen: Evidence, system: str, visible: list[str], as_root: bool) -> list[Check]:
    serving = [v for v in seen.plan.verdicts if system in v.platforms]
    if not serving:
        broken = [v for v in seen.plan.verdicts if system in v.systems and v.problems]
        if broken:
            return [Check("handler", False, f"{v.name}: {v.problems[0]}") for v in broken]
        return [Check("handler", False, "no working handler: see binfmtd status, or run "
                                         f"binfmtd register {system}")]
    handler = serving[0].handler
    assert handler is not None
    checks = [Check("handler", True, f"{handler.name} ({handler.interpreter}, flags "
                                     f"{handler.flags_text or '-'})")]
    if system not in MACHINES:
        checks.append(Check("runs", None, f"binfmtd has no test program for {system}"))
    else:
        program = exit_program(system)
        checks.append(_run_directly(system, program))
        checks.append(_run_sandboxed(program, visible, as_root))
    checks.append(_declared(seen, system))
    checks.append(_daemon(seen))
    return checks


def _run_directly(system: str, program: bytes) -> Check:
    folder = temp_folder("doctor")
    try:
        path = os.path.join(folder, "program")
        with open(path, "wb") as out:
            out.write(program)
        os.chmod(path, 0o700)
        try:
            status = run_program([path], check=False, timeout=30).returncode
        except BinfmtdError as error:
            return Check("runs", False, str(error).replace(path, f"a {system} program"))
    finally:
        remove_folder(folder)
    if status != EXIT_CODE:
        return Check("runs", False, f"a {system} program exited {status}, not {EXIT_CODE}")
    return Check("runs", True, f"a {len(program)}-byte {system} program ran and exited "
                               f"{EXIT_CODE}")


def _run_sandboxed(program: bytes, visible: list[str], as_root: bool) -> Check:
    if not as_root:
        return Check("sandbox", None, "needs root (a private mount namespace)")
    outcome = run_sandboxed(program, visible)
    seen = f"{len(visible)} sandbox path{'s' if len(visible) != 1 else ''}"
    if outcome.error is not None:
        return Check("sandbox", False, f"cannot start where only {seen} are visible: "
                                       f"{outcome.error}")
    if outcome.status != EXIT_CODE:
        return Check("sandbox", False, f"exited {outcome.status} where only {seen} are visible")
    return Check("sandbox", True, f"runs where only {seen} are visible, as in a Nix build")


def _declared(seen: Evidence, system: str) -> Check:
    if seen.effective is not None:
        if system in seen.effective.get("extra-platforms", "").split():
            return Check("nix.conf", True, "Nix reads it in extra-platforms")
        return Check("nix.conf", False, "Nix does not list it in extra-platforms: "
                                        "run binfmtd sync")
    if system in seen.plan.declared_platforms:
        return Check("nix.conf", True, "declared (Nix is not installed to confirm)")
    return Check("nix.conf", False, "not declared: run binfmtd sync")


def _daemon(seen: Evidence) -> Check:
    if seen.stale_pids:
        pids = ", ".join(str(pid) for pid in seen.stale_pids)
        return Check("nix-daemon", False, f"pid {pids} started before nix.conf last changed: "
                                          "restart nix-daemon")
    if not seen.daemon_pids:
        return Check("nix-daemon", True, "not running; it reads nix.conf when it starts")
    return Check("nix-daemon", True, "started after nix.conf last changed")


def to_text(diagnoses: list[Diagnosis]) -> str:
    if not diagnoses:
        return "nothing is emulated: nothing to check (see binfmtd status)"
    lines = []
    marks = {True: "[ok]  ", False: "[FAIL]", None: "[skip]"}
    for diagnosis in diagnoses:
        lines.append(diagnosis.system)
        lines.extend(f"  {marks[c.ok]} {c.name:<10} {c.detail}" for c in diagnosis.checks)
    good = all(d.ok for d in diagnoses)
    lines.append("all good" if good else "PROBLEMS: see [FAIL] above")
    return "\n".join(lines)


def to_json(diagnoses: list[Diagnosis]) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "ok": all(d.ok for d in diagnoses),
        "platforms": [
            {"system": d.system, "ok": d.ok,
             "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in d.checks]}
            for d in diagnoses
        ],
    }
