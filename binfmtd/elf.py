"""Just enough of the ELF format to tell a static interpreter from a dynamic one.

A dynamically linked emulator needs its program interpreter (ld.so) and libraries
inside the Nix sandbox; a static one needs nothing but itself. The answer is the
PT_INTERP program header, read here from the file's first bytes.
"""

from __future__ import annotations

import struct
from typing import Optional

PT_INTERP = 3


class NotAnElfFile(ValueError):
    """The bytes are not a well-formed ELF header."""


def program_interpreter(head: bytes) -> Optional[str]:
    """The PT_INTERP path of an ELF file given its first bytes, None for a static file."""
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        raise NotAnElfFile("not an ELF file")
    is64 = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    if is64:
        phoff, phentsize, phnum = struct.unpack_from(order + "32xQ14xHH", head)
    else:
        phoff, phentsize, phnum = struct.unpack_from(order + "28xI10xHH", head)
    entry = struct.Struct(order + ("IIQQ" if is64 else "IIII"))
    for index in range(phnum):
        start = phoff + index * phentsize
        if start + entry.size > len(head):
            raise NotAnElfFile("program headers lie beyond the bytes read")
        if is64:
            p_type, _flags, p_offset, _vaddr = entry.unpack_from(head, start)
        else:
            p_type, p_offset, _vaddr, _paddr = entry.unpack_from(head, start)
        if p_type == PT_INTERP:
            return _interp_string(head, start, p_offset, is64, order)
    return None


def _interp_string(head: bytes, start: int, p_offset: int, is64: bool, order: str) -> str:
    size_format = order + ("32xQ" if is64 else "16xI")
    (p_filesz,) = struct.unpack_from(size_format, head, start)
    raw = head[p_offset:p_offset + p_filesz]
    if len(raw) != p_filesz or not raw:
        raise NotAnElfFile("PT_INTERP lies beyond the bytes read")
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
