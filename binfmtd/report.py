"""How commands show what they saw and did: a page for people, one JSON object for scripts,
and the one-line summaries of sync, register and remove."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from .errors import JSON_VERSION
from .judge import Verdict
from .reconcile import Plan

if TYPE_CHECKING:
    from .apply import Outcome, World
    from .builder import BuilderLine

EFFECTIVE_KEYS = ("system", "extra-platforms", "sandbox-paths")


class Report(NamedTuple):
    """A plan with what was seen around it."""

    binfmt_misc: str
    mounted: bool
    enabled: bool
    nix_conf: str
    plan: Plan
    effective: Optional[dict[str, str]]  # None: Nix not installed or not asked
    effective_error: Optional[str]
    daemon_pids: tuple[int, ...]  # the nix-daemons that read this nix.conf
    stale_pids: tuple[int, ...]  # those of them that started before it last changed
    nix_installed: bool = True
    unit_failure: Optional[str] = None  # nix-daemon's systemd units have failed
    nix: Optional[str] = None  # the `nix` program asked, wherever its installer put it
    nix_version: Optional[str] = None
    install_hint: Optional[str] = None  # how to install Nix here, when it is not
    builder: Optional[BuilderLine] = None  # this machine's line for Nix clients

    @property
    def healthy(self) -> bool:
        return (self.nix_installed and self.plan.in_sync and not self.plan.problems
                and not self.stale_pids and self.unit_failure is None
                and self.effective_error is None)


def _interpreter_kind(verdict: Verdict) -> Optional[str]:
    interpreter = verdict.interpreter
    if interpreter is None:
        return None
    if not interpreter.exists:
        return "missing"
    if interpreter.error:
        return "unreadable"
    return "static" if interpreter.is_static else "dynamic"


def to_json(report: Report, **extra: Any) -> dict[str, Any]:
    """The object the command-line contract promises, plus details."""
    plan = report.plan
    return {
        "version": JSON_VERSION,
        "platforms": list(plan.declared_platforms),
        "sandbox_paths": list(plan.declared_sandbox_paths),
        "wanted_platforms": list(plan.platforms),
        "wanted_sandbox_paths": list(plan.sandbox_paths),
        "handlers": [_handler_json(v) for v in plan.verdicts],
        "binfmt_misc": {"path": report.binfmt_misc, "mounted": report.mounted,
                        "enabled": report.enabled},
        "nix_conf": report.nix_conf,
        "in_sync": plan.in_sync,
        "problems": [str(p) for p in plan.problems],
        "notes": list(plan.notes),
        "effective": report.effective,
        "effective_error": report.effective_error,
        "nix_installed": report.nix_installed,
        "nix": ({"path": report.nix, "version": report.nix_version}
                if report.nix is not None else None),
        "builder": report.builder.to_json() if report.builder is not None else None,
        "nix_daemon": {"pids": list(report.daemon_pids),
                       "restart_needed": bool(report.stale_pids),
                       "failed": report.unit_failure},
        **extra,
    }


def _handler_json(verdict: Verdict) -> dict[str, Any]:
    handler = verdict.handler
    return {
        "name": verdict.name,
        "platform": verdict.platforms[0] if verdict.platforms else None,
        "platforms": list(verdict.platforms),
        "interpreter": handler.interpreter if handler else None,
        "flags": handler.flags_text if handler else None,
        "enabled": handler.enabled if handler else None,
        "interpreter_kind": _interpreter_kind(verdict),
        "sandbox_paths": list(verdict.sandbox_paths),
        "note": verdict.note,
        "problems": list(verdict.problems),
    }


def to_text(report: Report, verbose: bool = False) -> str:
    """The status page: every handler, what nix.conf says, what Nix and its daemon see.

    Handlers for machines Nix has no system for (Debian registers a dozen) say nothing a
    user can act on, so they share one line unless `verbose` asks for each one.
    """
    plan = report.plan
    state = "not mounted" if not report.mounted else (
        "enabled" if report.enabled else "disabled")
    lines = [f"binfmt_misc  {report.binfmt_misc} ({state}, {len(plan.verdicts)} handlers)"]
    folded = [v.name for v in plan.verdicts if v.no_nix_system and not verbose]
    shown = [v for v in plan.verdicts if not v.no_nix_system or verbose]
    width = max([len(v.name) for v in shown] + [8])
    for verdict in shown:
        lines.extend(_handler_lines(verdict, width))
    if folded:
        lines.append(f"  no Nix system: {' '.join(folded)}")
    lines.append(f"nix.conf     {report.nix_conf}")
    lines.append(f"  declares   {_words(plan.declared_platforms)}")
    if plan.platforms != plan.declared_platforms:
        lines.append(f"  should     {_words(plan.platforms)}")
    lines.append(f"  sandbox    {_words(plan.declared_sandbox_paths)}")
    if plan.sandbox_paths != plan.declared_sandbox_paths:
        lines.append(f"  should     {_words(plan.sandbox_paths)}")
    lines.extend(_effective_lines(report))
    lines.extend(_daemon_lines(report))
    lines.extend(f"note: {note}" for note in plan.notes)
    lines.extend(f"problem: {problem}" for problem in plan.problems)
    lines.append(_verdict_line(report))
    return "\n".join(lines)


def _handler_lines(verdict: Verdict, width: int) -> list[str]:
    handler = verdict.handler
    if handler is None:
        return [f"  {verdict.name:<{width}}  -"] + [f"      ! {p}" for p in verdict.problems]
    systems = " ".join(verdict.platforms) or "-"
    kind = _interpreter_kind(verdict) or ""
    enabled = "" if handler.enabled else " (disabled)"
    lines = [f"  {verdict.name:<{width}}  {systems:<26} {handler.flags_text or '-':<4} "
             f"{kind:<8} {handler.interpreter}{enabled}"]
    if verdict.note:
        lines.append(f"      {verdict.note}")
    lines.extend(f"      ! {p}" for p in verdict.problems)
    return lines


def _effective_lines(report: Report) -> list[str]:
    asked = ([f"  Nix asked  {report.nix} ({report.nix_version or 'version unknown'})"]
             if report.nix is not None else [])
    return asked + _reading_lines(report)


def _reading_lines(report: Report) -> list[str]:
    if report.effective_error:
        return [f"  Nix says   {report.effective_error}"]
    if report.effective is None:
        return ["  Nix says   (Nix is not installed: nothing to ask)"]
    return [f"  Nix: {key} = {report.effective.get(key, '')}" for key in EFFECTIVE_KEYS]


def _daemon_lines(report: Report) -> list[str]:
    if report.unit_failure:
        return [f"nix-daemon   {report.unit_failure}"]
    if not report.daemon_pids:
        return ["nix-daemon   not running (a socket-activated daemon starts with the new file)"]
    return [
        f"nix-daemon   pid {pid}: " + (
            "started BEFORE the last change to nix.conf: restart needed"
            if pid in report.stale_pids else "started after the last change to nix.conf")
        for pid in report.daemon_pids
    ]


def _verdict_line(report: Report) -> str:
    plan = report.plan
    if not report.nix_installed:
        return f"Nix is not installed: {report.install_hint}, then run binfmtd sync"
    if plan.blocked:
        return "cannot edit nix.conf: see the problem above"
    if not plan.in_sync:
        return "OUT OF SYNC: run `binfmtd sync`"
    if report.effective_error:
        return "in sync, but Nix cannot read nix.conf as it stands (see `Nix says` above)"
    if report.unit_failure:
        return "in sync, but nix-daemon has failed (see above)"
    if report.stale_pids:
        return "in sync, but nix-daemon has not read it yet: restart nix-daemon"
    if plan.problems:
        return "in sync, with problems (see above)"
    return "in sync"


def _words(values: tuple[str, ...]) -> str:
    return " ".join(values) if values else "(nothing)"


# --- what sync, register, unregister and remove did ----------------------------------------


def sync_summary(outcome: Outcome) -> str:
    """One line: the file, and whether it changed and nix-daemon was restarted for it."""
    managed = outcome.world.managed
    declared = " ".join(outcome.plan.platforms) or "nothing"
    if not outcome.written:
        return f"{managed} already in sync (declares {declared})"
    said = f"; nix-daemon {outcome.restart}" if outcome.restart else ""
    return f"{managed} updated: declares {declared}{said}"


def removal_summary(outcome: Outcome) -> str:
    """One line for `binfmtd remove`."""
    managed = outcome.world.managed
    if outcome.world.managed_text is None:
        return f"{managed} does not exist: nothing to remove"
    if not outcome.written:
        return f"{managed} has no binfmtd block: nothing to remove"
    said = f"; nix-daemon {outcome.restart}" if outcome.restart else ""
    return f"{managed}: binfmtd block removed{said}"


def unified_diff(world: World, new_text: str) -> str:
    """`sync --diff`: the change to the managed file."""
    import difflib  # only --diff pays for it

    name = str(world.managed)
    return "".join(difflib.unified_diff(
        (world.managed_text or "").splitlines(keepends=True),
        new_text.splitlines(keepends=True), fromfile=name, tofile=f"{name} (binfmtd)"))


def print_json(value: object) -> None:
    """--json: one object, indented (json is imported only by the commands that print it)."""
    import json

    print(json.dumps(value, indent=2))


def warn(problems: tuple[object, ...]) -> None:
    """Problems that do not stop a command: one line each on stderr."""
    for problem in problems:
        print(f"binfmtd: warning: {problem}", file=sys.stderr)
