"""Look at an emulator on disk: does it exist, is it a symlink, what does it load?

The Nix sandbox sees only the store and the paths it is told about. A static
emulator needs its own path (unless the kernel opened it at registration, flag F);
a dynamic one also needs its loader and every library the loader maps.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

from .binfmt import Interpreter
from .elf import NotAnElfFile, program_interpreter
from .errors import BinfmtdError
from .proc import run_program


def read_interpreter(path: str) -> Interpreter:
    """Inspect an interpreter file; never raises for a missing or odd file."""
    if not os.path.isabs(path) or not os.path.exists(path):
        return Interpreter(path, exists=False)
    targets = link_chain(path)
    try:
        with open(path, "rb") as file:
            loader = program_interpreter(file.read(1 << 16))
    except (OSError, NotAnElfFile) as error:
        return Interpreter(path, True, targets, error=_reason(error))
    if loader is None:
        return Interpreter(path, True, targets, untrusted=untrusted_paths((path, *targets)))
    try:
        libraries = list_libraries(loader, path)
    except BinfmtdError as error:
        return Interpreter(path, True, targets, loader, error=str(error))
    with_links = tuple(dict.fromkeys(
        hop for library in libraries for hop in (library, *link_chain(library))))
    return Interpreter(path, True, targets, loader, with_links,
                       untrusted=untrusted_paths((path, *targets, *with_links)))


def read_sandbox_path(path: str) -> Interpreter:
    """A path config.toml's sandbox-paths names (a file or a folder), looked at as an
    interpreter is: does it exist, through which links, and could others change it."""
    if not os.path.lexists(path):
        return Interpreter(path, exists=False)
    targets = link_chain(path)
    return Interpreter(path, os.path.exists(path), targets,
                       untrusted=untrusted_paths((path, *targets)))


def untrusted_paths(paths: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(path, why) for each path a user other than root could change.

    A path in extra-sandbox-paths is run by every sandboxed build for its system, for every
    user of nix-daemon: whoever can replace it controls those builds' output. Like sshd's
    StrictModes, the file and every folder above it must belong to root and be writable by
    no one else; a sticky folder (/tmp) may be, since its other users cannot replace what
    root owns in it.
    """
    found = []
    for path in paths:
        why = _untrusted_reason(path)
        if why is not None:
            found.append((path, why))
    return tuple(found)


def _untrusted_reason(path: str) -> Optional[str]:
    """Why someone other than root could change `path`, as spelled or where it leads."""
    for spelled in dict.fromkeys((path, os.path.realpath(path))):
        parts = spelled.split("/")
        for depth in range(len(parts), 0, -1):
            why = _component_reason("/".join(parts[:depth]) or "/")
            if why is not None:
                return why
    return None


def _component_reason(path: str) -> Optional[str]:
    """Why this one file, link or folder lets someone other than root change what is below."""
    try:
        found = os.lstat(path)
    except OSError:
        return None  # gone meanwhile: the next read sees it missing
    if found.st_uid != 0:
        return f"{path} belongs to {_user(found.st_uid)}, not root"
    sticky_folder = stat.S_ISDIR(found.st_mode) and found.st_mode & stat.S_ISVTX
    if stat.S_ISLNK(found.st_mode) or sticky_folder:
        return None
    if found.st_mode & stat.S_IWOTH:
        return f"{path} is writable by every user (mode {found.st_mode & 0o7777:04o})"
    if found.st_mode & stat.S_IWGRP and found.st_gid != 0:
        return (f"{path} is writable by group {_group(found.st_gid)} (mode "
                f"{found.st_mode & 0o7777:04o})")
    return None


def _user(uid: int) -> str:
    import pwd  # only a finding pays for it

    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return f"cannot be read: {error.strerror}"
    return str(error)


def link_chain(path: str) -> tuple[str, ...]:
    """Every path a symlink passes through on its way to a file, the file last."""
    hops: list[str] = []
    current = path
    while os.path.islink(current) and len(hops) < 40:
        target = os.readlink(current)
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
        hops.append(current)
    return tuple(hops)


def list_libraries(loader: str, path: str) -> tuple[str, ...]:
    """The files the dynamic loader maps for `path`, the loader included.

    Asks the loader itself (`ld.so --list`, what ldd does without its shell script):
    it alone knows its search path, ld.so.cache and hwcaps directories.
    """
    if not os.path.isabs(loader) or not os.path.exists(loader):
        raise BinfmtdError(f"its loader {loader} is missing")
    listed = run_program([loader, "--list", path], timeout=10).stdout
    return tuple(dict.fromkeys(parse_library_list(listed, loader)))


def parse_library_list(text: str, loader: str) -> list[str]:
    """Absolute paths from `ld.so --list` output; the vDSO has none and is skipped."""
    paths = [loader]
    for line in text.splitlines():
        line = line.strip()
        if "=>" in line:
            line = line.split("=>", 1)[1].strip()
        candidate = line.split(" (", 1)[0].strip()
        if candidate.startswith("/"):
            paths.append(candidate)
        elif candidate.endswith("not found"):
            raise BinfmtdError(f"a library is missing: {line}")
    return paths
