"""The pure middle: from what binfmt_misc holds and what nix.conf says, a plan.

`plan()` is the one place that decides what Nix is told. `status` shows its result,
`sync --check` compares it, `sync` and the daemon apply it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, Optional

from .binfmt import BinfmtState, Interpreter
from .config import Config
from .judge import Verdict, judge_entry
from .nixconf import (
    Block,
    BrokenBlock,
    find_block,
    parse_settings,
    render_block,
    replace_block,
    settings_after_block,
)
from .platforms import NIX_DEFAULT_EXTRA, also_native, native_reason


class Problem(NamedTuple):
    """Something a user should fix, named by what it concerns."""

    subject: str  # a handler's name, or the nix.conf path
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


class Blocked(NamedTuple):
    """Why nix.conf cannot be edited at all."""

    message: str  # the file, and what to do
    cause: str  # what stays the same while details change (a refusal lists values that
    # follow every registration): the daemon logs a failure again only when it changes


class Plan(NamedTuple):
    """What nix.conf should hold: a new text (then nix-daemon must be restarted), or none."""

    verdicts: tuple[Verdict, ...]
    platforms: tuple[str, ...]  # what the block should declare
    sandbox_paths: tuple[str, ...]
    declared_platforms: tuple[str, ...]  # what the block declares now
    declared_sandbox_paths: tuple[str, ...]
    text: Optional[str]  # the new file; None: leave nix.conf alone
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()
    blocked: Optional[Blocked] = None

    @property
    def in_sync(self) -> bool:
        return self.text is None and self.blocked is None


class Edit(NamedTuple):
    """The managed file's block as found, and the file with the new block in its place."""

    found: Optional[Block]
    text: Optional[str]  # None: the file stays as it is
    blocked: Optional[Blocked] = None
    problems: tuple[Problem, ...] = ()


def plan(
    binfmt: BinfmtState,
    interpreters: Mapping[str, Interpreter],
    conf_text: str,
    config: Config,
    host_system: str,
    conf_name: str = "nix.conf",
    foreign: Optional[str] = None,
    also: Optional[Sequence[str]] = None,
    configured: Mapping[str, Interpreter] = MappingProxyType({}),
) -> Plan:
    """Decide the managed block for this world; pure, so every caller agrees.

    `foreign` says why the file is not binfmtd's to write (it belongs to the Nix store,
    or to another manager): a change it would need is then refused, with the values to
    declare where the file comes from. `also`: what the host runs natively besides its
    own system (also_native's by default); Nix is told of those it does not list itself.
    `configured`: the paths of config.toml's sandbox-paths as found on disk.
    """
    also = also_native(host_system) if also is None else tuple(also)
    verdicts = tuple(judge_entry(entry, binfmt.enabled, interpreters, config, host_system,
                                 also) for entry in binfmt.entries)
    platforms = tuple(sorted({*(p for v in verdicts for p in v.platforms),
                              *natively_declared(host_system, also, config)}))
    extra_paths, path_problems = configured_paths(platforms, config, configured)
    sandbox_paths = tuple(sorted({*(p for v in verdicts for p in v.sandbox_paths),
                                  *extra_paths}))
    edit = edit_block(conf_text, conf_name, render_block(platforms, sandbox_paths))
    if not binfmt.mounted:  # the world is unknown: leave the file as it is
        edit = edit._replace(text=None)
    if edit.text is not None and foreign is not None:
        refused = refusal(foreign, platforms, sandbox_paths)
        edit = Edit(edit.found, None, Blocked(f"{conf_name} {refused}", f"{conf_name} {foreign}"),
                    (*edit.problems, Problem(conf_name, refused)))
    return Plan(
        verdicts=verdicts,
        platforms=platforms,
        sandbox_paths=sandbox_paths,
        declared_platforms=edit.found.platforms if edit.found else (),
        declared_sandbox_paths=edit.found.sandbox_paths if edit.found else (),
        text=edit.text,
        problems=(*(Problem(v.name, text) for v in verdicts for text in v.problems),
                  *world_problems(binfmt, platforms, config, host_system, also),
                  *path_problems, *edit.problems),
        notes=tuple(_user_platform_notes(conf_text, edit.found)),
        blocked=edit.blocked,
    )


def world_problems(binfmt: BinfmtState, platforms: tuple[str, ...], config: Config,
                   host_system: str, also: Sequence[str]) -> list[Problem]:
    """What is wrong beyond single handlers: emulated-systems not emulated, or no
    binfmt_misc at all."""
    if not binfmt.mounted:
        return [Problem("binfmt_misc", "is not mounted: nothing can be emulated; mount it "
                        "(mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc) or start "
                        "systemd-binfmt")]
    return [Problem(system, "is in emulated-systems but no working handler emulates it: run "
                    "binfmtd register")
            for system in emulated_here(config, host_system, also) if system not in platforms]


def edit_block(conf_text: str, conf_name: str, block_text: Optional[str]) -> Edit:
    """The file with `block_text` as its block (None: without one), or why it cannot be
    edited; settings after the block that override it are problems."""
    try:
        found = find_block(conf_text)
    except BrokenBlock as error:
        return Edit(None, None, Blocked(f"{conf_name} {error}", f"{conf_name} {error}"),
                    (Problem(conf_name, str(error)),))
    new_text = replace_block(conf_text, found, block_text)
    overriding = tuple(
        Problem(conf_name, f"line {s.line} sets {s.key} after the binfmtd block and "
                "overrides it; sync moves the block last")
        for s in settings_after_block(conf_text, found))
    return Edit(found, None if new_text == conf_text else new_text, None, overriding)


def configured_paths(platforms: Sequence[str], config: Config,
                     configured: Mapping[str, Interpreter]) -> tuple[list[str], list[Problem]]:
    """sandbox-paths' paths for the systems that are declared, each with the hops of its
    links, checked as an interpreter is: there, and root's alone; else a problem."""
    paths: list[str] = []
    problems = []
    for system, named in config.sandbox_paths:
        if system not in platforms:
            continue
        for path in named:
            found = configured.get(path, Interpreter(path, exists=False))
            if not found.exists:
                problems.append(Problem("sandbox-paths", f"{path} (for {system}) does not "
                                        "exist; not declared"))
            elif found.untrusted:
                why = found.untrusted[0][1]
                problems.append(Problem("sandbox-paths", f"{path} (for {system}) is not root's "
                                        f"alone: {why}; not declared"))
            else:
                paths += [path, *found.link_targets]
    return paths, problems


def emulated_here(config: Config, host_system: str,
                  also: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """emulated-systems but the ones this host runs natively (a list shared by a fleet of
    x86_64 and aarch64 builders names each one's own system)."""
    return tuple(s for s in config.emulated_systems
                 if native_reason(s, host_system, also) is None)


def natively_declared(host_system: str, also: Sequence[str], config: Config) -> list[str]:
    """What the host runs natively and Nix does not list itself: an aarch64 host whose CPU
    runs 32-bit ARM builds armv7l-linux with no emulator, once Nix is told."""
    return [s for s in also if s not in NIX_DEFAULT_EXTRA.get(host_system, ())
            and s not in config.ignore_platforms
            and (s != "armv6l-linux" or config.declare_armv6l)]


def refusal(foreign: str, platforms: Sequence[str], sandbox_paths: Sequence[str]) -> str:
    """Why the file is someone else's, and the values to declare there instead."""
    values = (f"extra-platforms = {' '.join(platforms) or '(none)'}; extra-sandbox-paths = "
              f"{' '.join(p + '?' for p in sandbox_paths) or '(none)'}")
    return (f"{foreign}: binfmtd does not write there; declare these in what manages it "
            "(home-manager's or system-manager's nix.settings; on NixOS, "
            f"boot.binfmt.emulatedSystems): {values}")


def plan_removal(conf_text: str, conf_name: str = "nix.conf",
                 foreign: Optional[str] = None) -> Plan:
    """`binfmtd remove` as a plan: the file without the block, byte for byte as before."""
    edit = edit_block(conf_text, conf_name, None)
    if edit.text is not None and foreign is not None:
        why = f"{foreign}: binfmtd does not write there; remove its block in what manages it"
        edit = Edit(edit.found, None, Blocked(f"{conf_name} {why}", f"{conf_name} {why}"),
                    (Problem(conf_name, why),))
    return Plan(
        verdicts=(),
        platforms=(),
        sandbox_paths=(),
        declared_platforms=edit.found.platforms if edit.found else (),
        declared_sandbox_paths=edit.found.sandbox_paths if edit.found else (),
        text=edit.text,
        problems=tuple(p for p in edit.problems if edit.blocked is not None),
        blocked=edit.blocked,
    )


def _user_platform_notes(conf_text: str, block: Optional[Block]) -> list[str]:
    """Point out a user's own `extra-platforms =` line: it drops Nix's default list."""
    before = conf_text[:block.start] if block else conf_text
    return [
        f"line {s.line}: `extra-platforms = {s.value}` replaces Nix's default extra "
        "platforms; `extra-extra-platforms` would add to them"
        for s in parse_settings(before) if s.key == "extra-platforms"
    ]
