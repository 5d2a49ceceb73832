"""What one binfmt_misc entry makes binfmtd declare, and why: pure, the kernel's entry and
the interpreter as found in, a verdict out. reconcile.plan() puts the verdicts together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional

from .binfmt import BinfmtState, Handler, Interpreter, MalformedEntry
from .config import Config
from .nixconf import unsafe_path_reason
from .platforms import (
    NIX_DEFAULT_EXTRA,
    ElfIdentity,
    also_native,
    decode_magic,
    served_systems,
)


class Verdict(NamedTuple):
    """What one binfmt_misc entry makes binfmtd declare, and why."""

    name: str
    handler: Optional[Handler]  # None for a malformed entry
    systems: tuple[str, ...] = ()  # every Nix system its machine serves, declared or not
    platforms: tuple[str, ...] = ()  # what it makes binfmtd declare
    sandbox_paths: tuple[str, ...] = ()
    note: Optional[str] = None  # why it declares nothing, when that is normal
    problems: tuple[str, ...] = ()
    interpreter: Optional[Interpreter] = None
    no_nix_system: bool = False  # a machine Nix has no system for: status folds these
    captures_host: bool = False  # it matches this host's own programs: every exec is its


# A handler that would declare systems, once its interpreter is looked at.
Declarable = tuple[Handler, tuple[str, ...], tuple[str, ...]]  # handler, served, wanted


def judge_entry(
    entry: Handler | MalformedEntry,
    binfmt_enabled: bool,
    interpreters: Mapping[str, Interpreter],
    config: Config,
    host_system: str,
    also: Optional[Sequence[str]] = None,
) -> Verdict:
    """What one entry contributes: platforms and sandbox paths, or why nothing. `also`:
    the systems the host runs natively besides its own (also_native's by default)."""
    judged = _judge_machine(entry, binfmt_enabled, config, host_system, also)
    if isinstance(judged, Verdict):
        return judged
    handler, served, wanted = judged
    interpreter = interpreters.get(handler.interpreter, Interpreter(handler.interpreter, False))
    return _with_interpreter(handler, served, wanted, interpreter)


def interpreters_needed(binfmt: BinfmtState, config: Config, host_system: str,
                        also: Optional[Sequence[str]] = None) -> list[str]:
    """The interpreters a plan looks at: those of handlers that would declare a system.

    Looking at the others (Debian registers a .pyc handler run by a dynamic python3) would
    cost every reading an ld.so run each, for nothing.
    """
    judged = (_judge_machine(e, binfmt.enabled, config, host_system, also)
              for e in binfmt.entries)
    return sorted({j[0].interpreter for j in judged if not isinstance(j, Verdict)})


def _judge_machine(
    entry: Handler | MalformedEntry, binfmt_enabled: bool, config: Config, host_system: str,
    also: Optional[Sequence[str]],
) -> Verdict | Declarable:
    """The verdict on what the entry matches, or what it would declare."""
    if isinstance(entry, MalformedEntry):
        return Verdict(entry.name, None, problems=(f"malformed entry: {entry.reason}",))
    handler = entry
    if not handler.enabled:
        return Verdict(handler.name, handler, note="disabled")
    if not binfmt_enabled:
        return Verdict(handler.name, handler, note="binfmt_misc as a whole is disabled")
    if handler.magic is None:
        return Verdict(handler.name, handler,
                       note=f"matches by file extension .{handler.extension}, not by machine")
    identity = decode_magic(handler.magic, handler.mask, handler.offset)
    if not isinstance(identity, ElfIdentity):
        return Verdict(handler.name, handler, note=identity.reason)
    served = served_systems(identity)
    if not served:
        return Verdict(handler.name, handler, note=f"Nix has no system for "
                       f"{identity.describe()} binaries", no_nix_system=True)
    if served[0] == host_system:
        return Verdict(handler.name, handler, systems=served, captures_host=True,
                       problems=(capture_problem(handler),))
    wanted, note = _wanted(served, config, host_system,
                           also_native(host_system) if also is None else also)
    if not wanted:
        return Verdict(handler.name, handler, systems=served, note=note)
    return handler, served, wanted


def capture_problem(handler: Handler) -> str:
    """What a handler for the host's own machine does, and how to take it away."""
    return ("matches this host's own programs: binfmt_misc is tried before the kernel's own "
            f"loader, so every program on the machine goes through {handler.interpreter} "
            "(or fails with 'Too many levels of symbolic links'); remove it with "
            f"`echo -1 > /proc/sys/fs/binfmt_misc/{handler.name}` and the binfmt.d line "
            "that registers it at boot")


def _wanted(
    served: tuple[str, ...], config: Config, host_system: str, also: Sequence[str]
) -> tuple[tuple[str, ...], Optional[str]]:
    """The served systems to declare, else why none."""
    system = served[0]
    if system in also and not (system == "i686-linux" and config.declare_i686):
        nix_lists_it = system in NIX_DEFAULT_EXTRA.get(host_system, ())
        why = "Nix lists it itself; see declare-i686" if nix_lists_it else "declared as such"
        return (), f"this {host_system} host runs {system} natively ({why})"
    wanted = tuple(s for s in served if s not in config.ignore_platforms
                   and (s != "armv6l-linux" or config.declare_armv6l))
    return wanted, None if wanted else f"{system} is in ignore-platforms"


def _with_interpreter(
    handler: Handler, served: tuple[str, ...], systems: tuple[str, ...],
    interpreter: Interpreter,
) -> Verdict:
    """Declare the systems only if a sandboxed build could really use the interpreter."""
    name, opened = handler.name, "F" in handler.flags

    def broken(problem: str) -> Verdict:
        return Verdict(name, handler, systems=served, problems=(problem,),
                       interpreter=interpreter)

    unsafe = unsafe_path_reason(handler.interpreter)
    if unsafe:
        return broken(f"interpreter path {handler.interpreter!r} {unsafe}; not declared")
    if not interpreter.exists:
        if opened:
            return Verdict(name, handler, systems=served, platforms=systems,
                           interpreter=interpreter,
                           note="interpreter is not on this file system; the kernel holds "
                                "it open (flag F)")
        return broken(f"interpreter {handler.interpreter} is missing and the F flag is not "
                      "set, so the kernel cannot run it; reinstall the emulator")
    if interpreter.error:
        return broken(f"interpreter {handler.interpreter} {interpreter.error}; not declared")
    own_paths = () if opened else (handler.interpreter, *interpreter.link_targets)
    paths = (*own_paths, *interpreter.libraries)
    for path in paths:
        unsafe = unsafe_path_reason(path)
        if unsafe:
            return broken(f"sandbox path {path!r} {unsafe}; not declared")
    untrusted = dict(interpreter.untrusted)
    for path in paths:
        if path in untrusted:
            return broken(f"sandbox path {path} is not root's alone: {untrusted[path]}, and "
                          f"whoever can change it controls every {served[0]} build; not "
                          "declared (make it root's: chown root, chmod go-w)")
    return Verdict(name, handler, systems=served, platforms=systems,
                   sandbox_paths=tuple(paths), interpreter=interpreter,
                   note=dispatcher_note(handler.interpreter, *interpreter.link_targets))


# Registered interpreters that only pick another program to run (Fedora Asahi's picks FEX,
# box64 or qemu, or muvm where pages are not 4K): binfmtd cannot see what that is.
DISPATCHERS = {"binfmt-dispatcher": "Fedora Asahi's binfmt-dispatcher, which runs FEX, box64 "
                                    "or qemu as its configuration says"}


def dispatcher_note(*paths: str) -> Optional[str]:
    """What to do where the interpreter is a known dispatcher, else None."""
    for path in paths:
        known = DISPATCHERS.get(path.rsplit("/", 1)[-1])
        if known:
            return (f"the interpreter is {known}: a sandboxed build needs what it runs too; "
                    "name those paths in config.toml's sandbox-paths, and binfmtd doctor "
                    "proves whether a build runs")
    return None
