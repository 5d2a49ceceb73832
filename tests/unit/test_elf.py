"""Static or dynamic: read from real files on this machine and from crafted headers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from binfmtd.elf import NotAnElfFile, program_interpreter
from binfmtd.interpreters import link_chain, parse_library_list, read_interpreter
from tests.support.parts import require


def elf64_with_interp(interp: bytes | None, order: str = "<") -> bytes:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02" + (b"\x01" if order == "<" else b"\x02")
    phnum = 1 if interp is not None else 0
    struct.pack_into(order + "Q", header, 32, 64)
    struct.pack_into(order + "HH", header, 54, 56, phnum)
    if interp is None:
        return bytes(header)
    phdr = struct.pack(order + "IIQQQQQQ", 3, 4, 120, 0, 0, len(interp), len(interp), 1)
    return bytes(header) + phdr + interp


def elf32_with_interp(interp: bytes) -> bytes:
    header = bytearray(52)
    header[:6] = b"\x7fELF\x01\x01"
    struct.pack_into("<I", header, 28, 52)
    struct.pack_into("<HH", header, 42, 32, 1)
    phdr = struct.pack("<IIIIIIII", 3, 84, 0, 0, len(interp), len(interp), 4, 1)
    return bytes(header) + phdr + interp


def test_crafted_headers() -> None:
    assert program_interpreter(elf64_with_interp(None)) is None
    assert program_interpreter(elf64_with_interp(b"/lib/ld.so\0")) == "/lib/ld.so"
    assert program_interpreter(elf64_with_interp(b"/lib/ld.so\0", ">")) == "/lib/ld.so"
    assert program_interpreter(elf32_with_interp(b"/lib/ld-linux.so.3\0")) == "/lib/ld-linux.so.3"


@pytest.mark.parametrize(
    "head", [b"", b"\x7fELF\x02\x01" + bytes(20), b"#!/bin/sh\n" * 10, b"\x7fELF\x03" + bytes(60)]
)
def test_what_is_not_elf(head: bytes) -> None:
    with pytest.raises(NotAnElfFile):
        program_interpreter(head)


def test_truncated_program_headers_are_not_read_past_the_end() -> None:
    with pytest.raises(NotAnElfFile):
        program_interpreter(elf64_with_interp(b"/lib/ld.so\0")[:100])


def test_real_static_and_dynamic_programs_on_this_machine() -> None:
    static = Path("/usr/bin/qemu-aarch64-static")  # the Makefile's TEST_DEBS install it
    require(static.exists(), "qemu-user-static is not installed (apt-get install qemu-user-static)")
    assert read_interpreter(str(static)).is_static
    dynamic = read_interpreter("/bin/sh")
    assert dynamic.loader is not None and not dynamic.is_static
    assert dynamic.loader in dynamic.libraries
    assert any("libc.so" in lib for lib in dynamic.libraries)


def test_a_missing_or_relative_interpreter_does_not_exist() -> None:
    assert not read_interpreter("/nonexistent/qemu").exists
    assert not read_interpreter("usr/bin/qemu").exists


def test_link_chain_lists_every_hop(tmp_path: Path) -> None:
    (tmp_path / "qemu").write_text("")
    (tmp_path / "one").symlink_to("qemu")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    assert link_chain(str(tmp_path / "two")) == (str(tmp_path / "one"), str(tmp_path / "qemu"))


def test_loader_list_output() -> None:
    listed = (
        "\tlinux-vdso.so.1 (0x00007ffd5d5f2000)\n"
        "\tlibglib-2.0.so.0 => /lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x00007f)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f0c)\n"
    )
    assert parse_library_list(listed, "/lib64/ld-linux-x86-64.so.2") == [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libglib-2.0.so.0",
        "/lib64/ld-linux-x86-64.so.2",
    ]
