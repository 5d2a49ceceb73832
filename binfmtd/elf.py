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
    if len(head) < 6 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        raise NotAnElfFile("not an ELF file")
    is64 = head[4] == 2
    if len(head) < (64 if is64 else 52):
        raise NotAnElfFile("its ELF header is cut short")
    order = "<" if head[5] == 1 else ">"
    if is64:
        phoff, phentsize, phnum = struct.unpack_from(order + "32xQ14xHH", head)
    else:
        phoff, phentsize, phnum = struct.unpack_from(order + "28xI10xHH", head)
    # Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz, ...; Elf32_Phdr: type, offset, ...
    entry = struct.Struct(order + ("IIQQQQ" if is64 else "IIIII"))
    for index in range(phnum):
        start = phoff + index * phentsize
        if start + entry.size > len(head):
            raise NotAnElfFile("program headers lie beyond the bytes read")
        fields = entry.unpack_from(head, start)
        p_type = fields[0]
        p_offset, p_filesz = (fields[2], fields[5]) if is64 else (fields[1], fields[4])
        if p_type == PT_INTERP:
            return _interp_string(head, p_offset, p_filesz)
    return None


def _interp_string(head: bytes, p_offset: int, p_filesz: int) -> str:
    raw = head[p_offset:p_offset + p_filesz]
    if len(raw) != p_filesz or not raw:
        raise NotAnElfFile("PT_INTERP lies beyond the bytes read")
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
