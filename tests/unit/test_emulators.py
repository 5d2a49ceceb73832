"""One table of magics: it decodes back to its system, matches what Debian ships, and
accepts the very programs `doctor` runs."""

from __future__ import annotations

import pytest

from binfmtd.binfmt import Handler, parse_entry
from binfmtd.emulation.elfgen import MACHINES, exit_program
from binfmtd.emulators import (
    EMULATIONS,
    Candidate,
    emulator_install_hint,
    escape,
    render_binfmt_line,
)
from binfmtd.platforms import ElfIdentity, decode_magic, nix_system
from tests.support.parts import DATA

DEBIAN = DATA / "binfmt_misc" / "debian"


@pytest.mark.parametrize("system", sorted(EMULATIONS))
def test_every_magic_decodes_back_to_its_system(system: str) -> None:
    emulation = EMULATIONS[system]
    identity = decode_magic(bytes.fromhex(emulation.magic), bytes.fromhex(emulation.mask), 0)
    assert isinstance(identity, ElfIdentity)
    expected = "armv7l-linux" if system == "armv6l-linux" else system
    assert nix_system(identity) == expected


@pytest.mark.parametrize(
    "system", sorted(s for s in EMULATIONS if s not in ("i686-linux", "x86_64-linux")))
def test_the_table_is_what_debian_ships(system: str) -> None:
    emulation = EMULATIONS[system]
    entry = parse_entry("x", (DEBIAN / f"qemu-{emulation.qemu_arch}").read_text())
    assert isinstance(entry, Handler)
    assert (entry.magic, entry.mask) == (bytes.fromhex(emulation.magic),
                                         bytes.fromhex(emulation.mask))


@pytest.mark.parametrize("system", sorted(set(MACHINES) & set(EMULATIONS)))
def test_the_doctors_program_matches_the_registration(system: str) -> None:
    program = exit_program(system)
    magic = bytes.fromhex(EMULATIONS[system].magic)
    mask = bytes.fromhex(EMULATIONS[system].mask)
    assert all(p & m == g & m for p, m, g in zip(program, mask, magic)), system


@pytest.mark.parametrize("system", sorted(MACHINES))
def test_each_program_is_an_elf_of_its_system(system: str) -> None:
    identity = decode_magic(exit_program(system)[:40], None, 0)
    assert isinstance(identity, ElfIdentity)
    expected = "armv7l-linux" if system == "armv6l-linux" else system
    assert nix_system(identity) == expected


def test_a_registration_line_as_binfmt_d_writes_it() -> None:
    line = render_binfmt_line("binfmtd-aarch64-linux", "aarch64-linux",
                              Candidate("/usr/bin/qemu-aarch64-static", "F"))
    debian = (DATA / "binfmt_misc" / "debian" / "qemu-aarch64").read_text()
    assert line.startswith(r":binfmtd-aarch64-linux:M::\x7f\x45\x4c\x46\x02\x01\x01\x00")
    assert line.endswith(":/usr/bin/qemu-aarch64-static:F")
    assert escape("7f45") == r"\x7f\x45"
    assert "magic 7f454c460201010000000000000000000200b700" in debian


def test_the_install_hint_names_both_families_packages() -> None:
    hint = emulator_install_hint("riscv64-linux")
    assert hint is not None
    assert "qemu-user-static on Debian/Ubuntu" in hint
    assert "qemu-user-static-riscv on Fedora" in hint
    assert emulator_install_hint("vax-linux") is None
