"""The ELF decoder against the magics real registrars use."""

from __future__ import annotations

import pytest

from binfmtd.platforms import ElfIdentity, NotElf, decode_magic, host_system, nix_system


def elf_magic(elf_class: int, data: int, machine: int, flags: int | None = None) -> bytes:
    order = "little" if data == 1 else "big"
    head = b"\x7fELF" + bytes([elf_class, data, 1]) + bytes(9) + (2).to_bytes(2, order)
    head += machine.to_bytes(2, order)
    if flags is not None:
        head += bytes(16) + flags.to_bytes(4, order)
    return head


@pytest.mark.parametrize(
    ("elf_class", "data", "machine", "system"),
    [
        (2, 1, 183, "aarch64-linux"),
        (1, 1, 40, "armv7l-linux"),
        (1, 1, 3, "i686-linux"),
        (2, 1, 62, "x86_64-linux"),
        (1, 1, 243, "riscv32-linux"),
        (2, 1, 243, "riscv64-linux"),
        (1, 2, 20, "powerpc-linux"),
        (2, 2, 21, "powerpc64-linux"),
        (2, 1, 21, "powerpc64le-linux"),
        (1, 2, 8, "mips-linux"),
        (1, 1, 8, "mipsel-linux"),
        (2, 2, 8, "mips64-linux"),
        (2, 1, 8, "mips64el-linux"),
        (2, 2, 22, "s390x-linux"),
        (2, 1, 258, "loongarch64-linux"),
        (2, 2, 43, "sparc64-linux"),
        (1, 2, 4, "m68k-linux"),
        (1, 2, 189, "microblaze-linux"),
        (1, 1, 189, "microblazeel-linux"),
    ],
)
def test_class_data_and_machine_pick_the_system(
    elf_class: int, data: int, machine: int, system: str
) -> None:
    identity = decode_magic(elf_magic(elf_class, data, machine), None, 0)
    assert isinstance(identity, ElfIdentity)
    assert nix_system(identity) == system


def test_machines_nix_has_no_system_for_decode_but_map_to_nothing() -> None:
    alpha = decode_magic(elf_magic(2, 1, 0x9026), None, 0)
    armeb = decode_magic(elf_magic(1, 2, 40), None, 0)
    assert isinstance(alpha, ElfIdentity) and nix_system(alpha) is None
    assert "Alpha" in alpha.describe()
    assert isinstance(armeb, ElfIdentity) and nix_system(armeb) is None


def test_mips_n32_is_told_from_o32_by_the_abi2_flag() -> None:
    mask = b"\xff" * 36 + b"\x00\x00\x00\x20"
    o32 = decode_magic(elf_magic(1, 2, 8, flags=0), mask, 0)
    n32 = decode_magic(elf_magic(1, 2, 8, flags=0x20), mask, 0)
    assert isinstance(o32, ElfIdentity) and nix_system(o32) == "mips-linux"
    assert isinstance(n32, ElfIdentity) and n32.mips_n32 and nix_system(n32) is None


def test_a_mask_that_clears_ei_data_bits_does_not_change_the_reading() -> None:
    # Rosetta's and qemu-i386's masks put fe over EI_DATA; the magic holds the value.
    magic = bytes.fromhex("7f454c4602010100000000000000000002003e00")
    mask = bytes.fromhex("fffffffffffefe00fffffffffffffffffeffffff")
    identity = decode_magic(magic, mask, 0)
    assert isinstance(identity, ElfIdentity) and nix_system(identity) == "x86_64-linux"


@pytest.mark.parametrize(
    ("magic", "mask", "offset", "why"),
    [
        (bytes.fromhex("a70d0d0a"), None, 0, "not an ELF header"),  # python3.11 .pyc
        (b"BC", None, 0, "not an ELF header"),  # LLVM bitcode
        (b"MZ", None, 0, "not an ELF header"),  # Windows PE
        (b"\x7fELF\x02\x01\x01", None, 0, "ends before e_machine"),
        (elf_magic(2, 1, 183), b"\xff" * 18 + b"\x00\x00", 0, "matches any machine"),
        (elf_magic(2, 1, 183), None, 4, "not an ELF header"),
    ],
)
def test_magics_that_do_not_name_one_machine(
    magic: bytes, mask: bytes | None, offset: int, why: str
) -> None:
    identity = decode_magic(magic, mask, offset)
    assert isinstance(identity, NotElf)
    assert why in identity.reason


@pytest.mark.parametrize(
    ("machine", "system"),
    [("x86_64", "x86_64-linux"), ("aarch64", "aarch64-linux"), ("ppc64le", "powerpc64le-linux"),
     ("riscv64", "riscv64-linux"), ("i686", "i686-linux")],
)
def test_host_system_from_uname(machine: str, system: str) -> None:
    assert host_system(machine) == system
