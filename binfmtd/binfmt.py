"""Read binfmt_misc: parse the kernel's text for each entry into a Handler.

An entry, as fs/binfmt_misc.c prints it:

    enabled
    interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
    flags: POF
    offset 0
    magic 7f454c46...
    mask ffffffff...

or `extension .exe` in place of offset/magic/mask. The kernel prints the interpreter
path raw, so a path with a newline in it adds lines of its own: the parser accepts
exactly this shape and nothing else, and a surprise makes the entry malformed.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional, Union

from .errors import BinfmtdError

# Names in the binfmt_misc folder that are not handlers.
CONTROL_FILES = frozenset({"register", "status"})
KNOWN_FLAGS = frozenset("POCF")


class Handler(NamedTuple):
    """One registered binfmt_misc entry."""

    name: str
    enabled: bool
    interpreter: str
    flags: frozenset[str]
    magic: Optional[bytes]
    mask: Optional[bytes]
    offset: int = 0
    extension: Optional[str] = None

    @property
    def flags_text(self) -> str:
        """The flags in the kernel's order, as /proc prints them."""
        return "".join(f for f in "POCF" if f in self.flags)


class Interpreter(NamedTuple):
    """An interpreter file as found on this host (interpreters.read_interpreter looks)."""

    path: str
    exists: bool
    link_targets: tuple[str, ...] = ()  # each hop of a symlink chain, in order
    loader: Optional[str] = None  # PT_INTERP; None for a static file
    libraries: tuple[str, ...] = ()  # what the loader maps, with their link targets
    error: Optional[str] = None  # why the file could not be understood
    untrusted: tuple[tuple[str, str], ...] = ()  # (path, why): paths others could change

    @property
    def is_static(self) -> bool:
        return self.exists and self.error is None and self.loader is None


class MalformedEntry(NamedTuple):
    """An entry whose text is not what the kernel prints for a handler."""

    name: str
    reason: str


Entry = Union[Handler, MalformedEntry]


class BinfmtState(NamedTuple):
    """Everything read from a binfmt_misc folder at one moment."""

    mounted: bool
    enabled: bool
    entries: tuple[Entry, ...]


def parse_entry(name: str, text: str) -> Entry:
    """Parse the text of /proc/sys/fs/binfmt_misc/NAME."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 4:
        return MalformedEntry(name, f"has {len(lines)} lines, a handler has at least 4")
    if lines[0] not in ("enabled", "disabled"):
        return MalformedEntry(name, f"first line is {lines[0]!r}, not enabled/disabled")
    interpreter = _value(lines[1], "interpreter ")
    flags = _value(lines[2], "flags: ")
    if interpreter is None or flags is None:
        return MalformedEntry(name, "lacks the interpreter or flags line the kernel prints")
    if not set(flags) <= KNOWN_FLAGS:
        return MalformedEntry(name, f"has unknown flags {flags!r}")
    enabled, flag_set = lines[0] == "enabled", frozenset(flags)
    extension = _value(lines[3], "extension .")
    if extension is not None:
        if len(lines) != 4:
            return MalformedEntry(name, "has lines after its extension line")
        return Handler(name, enabled, interpreter, flag_set, None, None, extension=extension)
    matched = _parse_magic_lines(lines[3:])
    if isinstance(matched, str):
        return MalformedEntry(name, matched)
    offset, magic, mask = matched
    return Handler(name, enabled, interpreter, flag_set, magic, mask, offset)


def _parse_magic_lines(lines: list[str]) -> Union[str, tuple[int, bytes, Optional[bytes]]]:
    """(offset, magic, mask) from the lines after `flags:`, or why they are wrong."""
    if len(lines) not in (2, 3):
        return "has unexpected lines after its flags line"
    offset_text = _value(lines[0], "offset ")
    magic = _hex_value(lines[1], "magic ")
    mask = _hex_value(lines[2], "mask ") if len(lines) == 3 else None
    if offset_text is None or not re.fullmatch(r"-?[0-9]+", offset_text):  # ASCII only
        return f"has a bad offset line {lines[0]!r}"
    if magic is None or (len(lines) == 3 and mask is None):
        return "has a magic or mask that is not hexadecimal"
    if mask is not None and len(mask) != len(magic):
        return "has a mask whose length differs from its magic's"
    return int(offset_text), magic, mask


def _value(line: str, prefix: str) -> Optional[str]:
    return line[len(prefix):] if line.startswith(prefix) else None


def _hex_value(line: str, prefix: str) -> Optional[bytes]:
    text = _value(line, prefix)
    if not text:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def read_binfmt_state(folder: Path) -> BinfmtState:
    """Read every entry of a binfmt_misc folder (the real one or a copy in a test)."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:  # a kernel without binfmt_misc, not loaded yet
        return BinfmtState(mounted=False, enabled=False, entries=())
    except NotADirectoryError:
        raise BinfmtdError(f"{folder} is not a folder: binfmt_misc is the folder "
                           "/proc/sys/fs/binfmt_misc") from None
    except OSError as error:
        raise BinfmtdError(f"cannot read {folder}: {error.strerror}") from error
    if "register" not in names:
        return BinfmtState(mounted=False, enabled=False, entries=())
    status = _read_text(folder / "status")
    entries = []
    for name in names:
        if name in CONTROL_FILES:
            continue
        entry = _read_entry(folder, name)
        if entry is not None:
            entries.append(entry)
    return BinfmtState(mounted=True, enabled=status.strip() == "enabled", entries=tuple(entries))


def _read_entry(folder: Path, name: str) -> Optional[Entry]:
    try:
        text = _read_text(folder / name)
    except OSError as error:
        if error.errno == errno.ENOENT:  # removed between listdir and open
            return None
        return MalformedEntry(name, f"cannot be read: {error.strerror}")
    return parse_entry(name, text)


def _read_text(path: Path) -> str:
    # surrogateescape: a non-UTF-8 path stays distinguishable instead of crashing the read
    with open(path, "rb") as file:
        return file.read(1 << 16).decode("utf-8", "surrogateescape")
