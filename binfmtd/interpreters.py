"""Look at an emulator on disk: does it exist, is it a symlink, what does it load?

The Nix sandbox sees only the store and the paths it is told about. A static
emulator needs its own path (unless the kernel opened it at registration, flag F);
a dynamic one also needs its loader and every library the loader maps.
"""

from __future__ import annotations

import os

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
        return Interpreter(path, True, targets)
    try:
        libraries = list_libraries(loader, path)
    except BinfmtdError as error:
        return Interpreter(path, True, targets, loader, error=str(error))
    with_links = [hop for library in libraries for hop in (library, *link_chain(library))]
    return Interpreter(path, True, targets, loader, tuple(dict.fromkeys(with_links)))


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
