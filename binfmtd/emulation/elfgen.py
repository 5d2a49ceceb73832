"""Build the smallest static ELF program of a Nix system: it calls exit(42).

`binfmtd doctor` runs one per declared platform to prove that emulation works, first
directly and then the way the Nix sandbox would run it. The programs are made here
from a few words of machine code, so no foreign binaries ship with binfmtd.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..platforms import (
    C32,
    C64,
    EM_68K,
    EM_386,
    EM_AARCH64,
    EM_ARM,
    EM_LOONGARCH,
    EM_MIPS,
    EM_PPC,
    EM_PPC64,
    EM_RISCV,
    EM_S390,
    EM_X86_64,
    LSB,
    MSB,
    with_also_runs,
)

EXIT_CODE = 42
LOAD_ADDRESS = 0x400000
ET_EXEC, PT_LOAD, PF_R_X = 2, 1, 5


class Machine(NamedTuple):
    """How to write exit(42) for one system."""

    elf_class: int
    data: int
    machine: int
    code: bytes
    flags: int = 0


def _words(order: str, *words: int) -> bytes:
    return struct.pack(order + "I" * len(words), *words)


# Each program: put 42 in the first argument register, the exit syscall number where the
# kernel ABI wants it, and trap into the kernel.
MACHINES: dict[str, Machine] = with_also_runs({
    "x86_64-linux": Machine(C64, LSB, EM_X86_64,
                            bytes.fromhex("bf2a000000" "b83c000000" "0f05")),
    "i686-linux": Machine(C32, LSB, EM_386, bytes.fromhex("bb2a000000" "b801000000" "cd80")),
    "aarch64-linux": Machine(C64, LSB, EM_AARCH64,
                             _words("<", 0xD2800540, 0xD2800BA8, 0xD4000001)),
    # ARM EABI version 5 (e_flags): mov r0,#42; mov r7,#1; svc #0
    "armv7l-linux": Machine(C32, LSB, EM_ARM, _words("<", 0xE3A0002A, 0xE3A07001, 0xEF000000),
                            flags=0x05000000),
    "riscv64-linux": Machine(C64, LSB, EM_RISCV, _words("<", 0x02A00513, 0x05D00893, 0x00000073)),
    "riscv32-linux": Machine(C32, LSB, EM_RISCV, _words("<", 0x02A00513, 0x05D00893, 0x00000073)),
    # e_flags 2: the ELFv2 ABI, whose entry point is code rather than a function descriptor
    "powerpc64le-linux": Machine(C64, LSB, EM_PPC64,
                                 _words("<", 0x3860002A, 0x38000001, 0x44000002), flags=2),
    "powerpc64-linux": Machine(C64, MSB, EM_PPC64,
                               _words(">", 0x3860002A, 0x38000001, 0x44000002), flags=2),
    "powerpc-linux": Machine(C32, MSB, EM_PPC, _words(">", 0x3860002A, 0x38000001, 0x44000002)),
    # lghi %r2,42; svc 1
    "s390x-linux": Machine(C64, MSB, EM_S390, bytes.fromhex("a729002a" "0a01")),
    # o32: li $a0,42; li $v0,4001; syscall
    "mips-linux": Machine(C32, MSB, EM_MIPS, _words(">", 0x2404002A, 0x24020FA1, 0x0000000C)),
    "mipsel-linux": Machine(C32, LSB, EM_MIPS, _words("<", 0x2404002A, 0x24020FA1, 0x0000000C)),
    # n64: exit is syscall 5058
    "mips64-linux": Machine(C64, MSB, EM_MIPS, _words(">", 0x2404002A, 0x240213C2, 0x0000000C)),
    "mips64el-linux": Machine(C64, LSB, EM_MIPS,
                              _words("<", 0x2404002A, 0x240213C2, 0x0000000C)),
    # addi.w $a0,$zero,42; addi.w $a7,$zero,93; syscall 0
    "loongarch64-linux": Machine(C64, LSB, EM_LOONGARCH,
                                 _words("<", 0x0280A804, 0x0281740B, 0x002B0000)),
    # moveq #1,%d0; moveq #42,%d1; trap #0
    "m68k-linux": Machine(C32, MSB, EM_68K, bytes.fromhex("7001" "722a" "4e40")),
})


def exit_program(system: str) -> bytes:
    """A static ELF executable for `system` that exits with EXIT_CODE; KeyError if unknown."""
    machine = MACHINES[system]
    is64 = machine.elf_class == C64
    order = "<" if machine.data == LSB else ">"
    header_size, phdr_size = (64, 56) if is64 else (52, 32)
    entry = LOAD_ADDRESS + header_size + phdr_size
    size = header_size + phdr_size + len(machine.code)
    ident = b"\x7fELF" + bytes([machine.elf_class, machine.data, 1]) + bytes(9)
    if is64:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", ET_EXEC, machine.machine, 1, entry,
                                     header_size, 0, machine.flags, header_size, phdr_size, 1,
                                     0, 0, 0)
        phdr = struct.pack(order + "IIQQQQQQ", PT_LOAD, PF_R_X, 0, LOAD_ADDRESS, LOAD_ADDRESS,
                           size, size, 0x1000)
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", ET_EXEC, machine.machine, 1, entry,
                                     header_size, 0, machine.flags, header_size, phdr_size, 1,
                                     0, 0, 0)
        phdr = struct.pack(order + "IIIIIIII", PT_LOAD, 0, LOAD_ADDRESS, LOAD_ADDRESS, size,
                           size, PF_R_X, 0x1000)
    return header + phdr + machine.code
