"""Prove the system-test infrastructure itself before binfmtd's tests rely on it.

Each test checks one thing later tests take for granted: the container boots, Nix's units
work under its systemd, and an emulator registered on the HOST runs foreign binaries
INSIDE the container (which is how binfmtd will meet emulators in the real world).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostguard import unregister_host
from machine import Machine, host_registration, install_binfmtd

TEST_ENTRY = "binfmtd-test-system-boot-aarch64"
# Byte 15 of e_ident (EI_PAD, ignored by qemu's and Linux's ELF loaders) is 0x42 in this
# test's program and in its magic. Every Debian qemu mask checks that byte and expects 0,
# so no handler the host may have registered (systemd-binfmt, binfmt-support) runs the
# program: only this test's entry does, whatever else the host emulates.
MARK = 0x42
AARCH64_LINE = (
    rf":{TEST_ENTRY}:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00"
    rf"\x{MARK:02x}\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff"
    r"\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF"
)
HELLO = b"hello from aarch64\n"


def test_boots_to_running_or_degraded(machine: Machine) -> None:
    state = machine.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    failed = machine.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
    assert state in ("running", "degraded"), f"state {state!r}, failed units:\n{failed}"


def test_nix_daemon_socket_is_active(machine: Machine) -> None:
    assert machine.run(["systemctl", "is-active", "nix-daemon.socket"]).stdout.strip() == "active"


def main_pid(machine: Machine, unit: str) -> int:
    return int(machine.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)


def test_restart_nix_daemon_changes_main_pid(machine: Machine) -> None:
    machine.run(["systemctl", "start", "nix-daemon.service"])
    before = main_pid(machine, "nix-daemon.service")
    machine.run(["systemctl", "restart", "nix-daemon.service"])
    after = main_pid(machine, "nix-daemon.service")
    assert before != 0 and after != 0 and after != before, (before, after)


def test_the_deb_installs_an_enabled_service_in_a_booted_debian(
    binfmt_machine: Machine, debian_package: Path
) -> None:
    """With the host's binfmt_misc read-only inside, as binfmtd.service finds it mounted.
    (A container that mounts it read-write itself, as the unit's Wants= would, takes every
    host handler with it at poweroff: systemd's shutdown writes -1 to its status.)"""
    machine = binfmt_machine
    install_binfmtd(machine, debian_package)
    assert machine.run(["systemctl", "is-enabled", "binfmtd.service"]).stdout.strip() == "enabled"
    found = machine.run(["python3", "-c", "import binfmtd; print(binfmtd.__file__)"])
    assert found.stdout.startswith("/usr/lib/python3/dist-packages/binfmtd/")
    machine.run(["test", "-f", "/usr/share/man/man8/binfmtd.8.gz"])
    machine.run(["systemctl", "start", "binfmtd.service"])
    active = machine.run(["systemctl", "is-active", "binfmtd.service"]).stdout.strip()
    assert active == "active"
    machine.run(["dpkg", "-r", "binfmtd"])
    gone = machine.run(["systemctl", "is-active", "binfmtd.service"], check=False)
    assert gone.stdout.strip() in ("inactive", "unknown")


def aarch64_hello_elf() -> bytes:
    """A 171-byte static aarch64 ELF that writes HELLO and exits 0 (no download needed),
    with MARK in its last e_ident byte.

    Hand-assembled: write(1, msg, len) via svc #0 with x8=64, then exit(0) with x8=93.
    """
    base, code_offset = 0x400000, 64 + 56  # ELF header + one program header
    code = [
        0xD2800020,  # mov x0, #1
        0x100000E1,  # adr x1, msg (28 bytes ahead of this instruction)
        0xD2800002 | (len(HELLO) << 5),  # mov x2, #len
        0xD2800808,  # mov x8, #64 (write)
        0xD4000001,  # svc #0
        0xD2800000,  # mov x0, #0
        0xD2800BA8,  # mov x8, #93 (exit)
        0xD4000001,  # svc #0
    ]
    body = struct.pack(f"<{len(code)}I", *code) + HELLO
    size = code_offset + len(body)
    ident = b"\x7fELF\x02\x01\x01" + bytes(8) + bytes([MARK])  # 64-bit, LE, System V
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0xB7, 1, base + code_offset, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x10000)  # LOAD R+X
    return header + program + body


@pytest.fixture
def host_aarch64_registration(rootfs: Path) -> Iterator[str]:
    """AARCH64_LINE registered in the host's binfmt_misc (F flag, written from the tree,
    which has qemu-user-static: the host needs no emulator package of its own)."""
    with host_registration(rootfs, AARCH64_LINE) as name:
        yield name


def test_host_binfmt_registration_takes_effect_inside(
    machine: Machine, host_aarch64_registration: str, tmp_path: Path
) -> None:
    machine.run(["/usr/bin/qemu-aarch64-static", "--version"])
    hello = tmp_path / "hello-aarch64"
    hello.write_bytes(aarch64_hello_elf())
    hello.chmod(0o755)
    machine.copy_in(hello, "/usr/local/bin/hello-aarch64")
    assert machine.run(["/usr/local/bin/hello-aarch64"]).stdout == HELLO.decode()

    # And it is this test's entry that does it: without it the kernel refuses, also on a
    # host that emulates aarch64 itself (no Debian mask lets MARK through).
    unregister_host(host_aarch64_registration)
    # execv directly: env and shells fall back to running the file as a shell script.
    exec_directly = "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"
    refused = machine.run(
        ["python3", "-c", exec_directly, "/usr/local/bin/hello-aarch64"], check=False
    )
    assert refused.returncode != 0 and "Exec format error" in refused.stderr, refused
