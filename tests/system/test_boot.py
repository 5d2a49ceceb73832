"""Prove the system-test infrastructure itself before binfmtd's tests rely on it.

Each test checks one thing later tests take for granted: the container boots, Nix's units
work under its systemd, its binfmt_misc is its own (a registration made inside runs foreign
binaries inside, the host's handlers do not), and the .deb installs an enabled service.
And what boot does with binfmt_misc in such a container: nothing by itself (systemd's
automount is conditioned on a writable /proc/sys), everything once the mount unit is wanted.
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.support.containers import Machine
from tests.support.kernel import BINFMT_MISC, LOONGARCH64_MAGIC, LOONGARCH64_MASK, binfmt_line
from tests.system.machine import (
    booted,
    handler,
    install_binfmtd,
    managed_platforms,
    sandbox_paths,
    wait_for,
)

HELLO = b"hello from aarch64\n"
HELLO_PATH = "/usr/local/bin/hello-aarch64"
# execv directly: env and shells fall back to running the file as a shell script.
EXEC_DIRECTLY = "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"
# A line of the test's own in /etc/binfmt.d, without F and naming the tree's qemu itself,
# so that neither its name nor its sandbox path can come from Debian's /usr/lib/binfmt.d.
BOOT_ENTRY = "binfmtd-boot-loongarch64"
BOOT_INTERPRETER = "/usr/bin/qemu-loongarch64-static"
BOOT_LINE = binfmt_line(BOOT_ENTRY, BOOT_INTERPRETER, "OP", LOONGARCH64_MAGIC, LOONGARCH64_MASK)
# What `systemctl enable proc-sys-fs-binfmt_misc.mount` would do (its WantedBy=).
WANT_MOUNT = "[Unit]\nWants=proc-sys-fs-binfmt_misc.mount\n"


def test_boots_to_running_or_degraded(machine: Machine) -> None:
    state = machine.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    failed = machine.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
    assert state in ("running", "degraded"), f"state {state!r}, failed units:\n{failed}"


def condition_result(machine: Machine, unit: str) -> str:
    return machine.run(["systemctl", "show", "-p", "ConditionResult", "--value", unit]).stdout


def is_mounted(machine: Machine) -> bool:
    return machine.run(["mountpoint", "-q", BINFMT_MISC], check=False).returncode == 0


def test_systemd_does_not_mount_binfmt_misc_at_boot_by_itself(machine: Machine) -> None:
    """Measured (systemd 252 in its own user namespace): the automount is skipped,
    "ConditionPathIsReadWrite=/proc/sys was not met" (nspawn mounts /proc/sys read-only),
    so systemd-binfmt is skipped too: "ConditionPathIsMountPoint=/proc/sys/fs/binfmt_misc".
    The mount unit itself has no such condition: started, it mounts the container's own,
    and systemd-binfmt then registers the tree's lines (the control for the skip)."""
    automount = machine.run(["systemctl", "status", "proc-sys-fs-binfmt_misc.automount"],
                            check=False).stdout
    assert "ConditionPathIsReadWrite=/proc/sys was not met" in automount, automount
    assert condition_result(machine, "systemd-binfmt.service").strip() == "no"
    assert not is_mounted(machine)

    machine.run(["systemctl", "start", "proc-sys-fs-binfmt_misc.mount"])
    machine.run(["systemctl", "restart", "systemd-binfmt.service"])
    assert condition_result(machine, "systemd-binfmt.service").strip() == "yes"
    assert is_mounted(machine) and "qemu-aarch64" in machine.binfmt_entries()


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
    machine: Machine, debian_package: Path
) -> None:
    """binfmt_misc unmounted, as a container boots: the unit's Wants= mounts its own."""
    install_binfmtd(machine, debian_package)
    assert machine.run(["systemctl", "is-enabled", "binfmtd.service"]).stdout.strip() == "enabled"
    found = machine.run(["python3", "-c", "import binfmtd; print(binfmtd.__file__)"])
    assert found.stdout.startswith("/usr/lib/python3/dist-packages/binfmtd/")
    machine.run(["test", "-f", "/usr/share/man/man8/binfmtd.8.gz"])
    machine.run(["systemctl", "start", "binfmtd.service"])
    active = machine.run(["systemctl", "is-active", "binfmtd.service"]).stdout.strip()
    assert active == "active"
    assert is_mounted(machine) and machine.binfmt_entries() == []  # by its Wants=, its own
    machine.run(["dpkg", "-r", "binfmtd"])
    gone = machine.run(["systemctl", "is-active", "binfmtd.service"], check=False)
    assert gone.stdout.strip() in ("inactive", "unknown")


def aarch64_hello_elf() -> bytes:
    """A 171-byte static aarch64 ELF that writes HELLO and exits 0 (no download needed).

    Hand-assembled: write(1, msg, len) via svc #0 with x8=64, then exit(0) with x8=93.
    A plain ELF, so that any aarch64 handler would run it: one of the host's included.
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
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)  # 64-bit, little-endian, System V
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0xB7, 1, base + code_offset, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x10000)  # LOAD R+X
    return header + program + body


def run_hello(machine: Machine) -> tuple[int, str]:
    result = machine.run(["python3", "-c", EXEC_DIRECTLY, HELLO_PATH], check=False)
    return result.returncode, result.stdout or result.stderr


def test_a_registration_inside_takes_effect_inside_and_the_hosts_do_not(
    binfmt_machine: Machine, tmp_path: Path
) -> None:
    """Refused, runs, refused: before and after the container's own registration only its
    own counts. Whatever aarch64 handler the host has, it does not run the program inside."""
    machine = binfmt_machine
    hello = tmp_path / "hello-aarch64"
    hello.write_bytes(aarch64_hello_elf())
    hello.chmod(0o755)
    machine.copy_in(hello, HELLO_PATH)
    refused = "[Errno 8] Exec format error"
    status, said = run_hello(machine)
    assert status != 0 and refused in said, said  # the host's handlers do not apply

    line = machine.read_text("/usr/lib/binfmt.d/qemu-aarch64.conf").strip()
    name = machine.register(line)
    try:
        assert machine.binfmt_entries() == [name]
        assert run_hello(machine) == (0, HELLO.decode())  # the positive control
    finally:
        machine.unregister(name)
    status, said = run_hello(machine)
    assert status != 0 and refused in said, said


def test_binfmt_d_lines_are_registered_at_boot(
    tree: Path, tmp_path: Path, debian_package: Path
) -> None:
    """With the mount unit wanted by sysinit.target, the container's own systemd-binfmt
    registers /etc/binfmt.d at boot, and binfmtd.service, installed then, declares it."""
    (tmp_path / "want.conf").write_text(WANT_MOUNT)
    (tmp_path / "boot.conf").write_text(BOOT_LINE + "\n")
    binds = {str(tmp_path / "want.conf"): "/etc/systemd/system/sysinit.target.d/binfmt.conf",
             str(tmp_path / "boot.conf"): "/etc/binfmt.d/binfmtd-boot.conf"}
    with booted(tree, binds_ro=binds) as machine:
        assert condition_result(machine, "systemd-binfmt.service").strip() == "yes"
        active = machine.run(["systemctl", "is-active", "systemd-binfmt.service"], check=False)
        assert active.stdout.strip() == "active", active
        entries = machine.binfmt_entries()
        assert BOOT_ENTRY in entries and "qemu-aarch64" in entries, entries
        assert f"interpreter {BOOT_INTERPRETER}\n" in machine.read_text(
            f"{BINFMT_MISC}/{BOOT_ENTRY}")
        assert BOOT_INTERPRETER not in sandbox_paths(machine)  # the control is below

        install_binfmtd(machine, debian_package)
        machine.run(["systemctl", "start", "binfmtd.service"])
        wait_for(f"{BOOT_INTERPRETER} in nix.conf after boot",
                 lambda: BOOT_INTERPRETER in sandbox_paths(machine) or None)
        assert {"aarch64-linux", "loongarch64-linux"} <= set(managed_platforms(machine))
        shown = handler(machine, BOOT_ENTRY)
        assert shown is not None
        assert (shown["platform"], shown["interpreter"], shown["problems"]) == (
            "loongarch64-linux", BOOT_INTERPRETER, []), shown

