"""The e2e infrastructure proves itself, with no binfmtd involved.

If these fail, a binfmtd e2e failure would mean nothing: the daemon, the client isolation,
the emulator registration or the foreign builder would be at fault, not binfmtd.
"""
from __future__ import annotations

import subprocess
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

import pytest
from nixtest import BuildResult, NixDaemon, alive, running_daemons

# Debian's qemu-user-static lines (/usr/lib/binfmt.d), under test names.
AARCH64_LINE = (r":binfmtd-test-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00"
                r"\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff"
                r"\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
                r":/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF")
RISCV64_LINE = (r":binfmtd-test-riscv64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00"
                r"\x00\x00\x00\x00\x02\x00\xf3\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff"
                r"\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
                r":/usr/libexec/qemu-binfmt/riscv64-binfmt-P:OPF")
NOT_DECLARED = "a 'aarch64-linux' with features {} is required to build"
# `id -un` prints nixbld only inside the sandbox (outside, the build user is nixbldN).
SCRIPT = "uname -m > $out; id -un >> $out"

Build = Callable[[str, Path, str], BuildResult]
Busybox = Callable[[str], Path]
Register = Callable[[str, str], Path]
Timed = Callable[[str], AbstractContextManager[None]]


def test_undeclared_platform_fails(nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox,
                                   register_handler: Register, timed: Timed) -> None:
    with timed("fetch arm64 busybox (cached after the first run)"):
        builder = busybox("arm64")
    with timed("register binfmtd-test-aarch64"):
        entry = register_handler("binfmtd-test-aarch64", AARCH64_LINE)
    assert entry.read_text().startswith("enabled\n")
    with timed("aarch64-linux build, platform not declared"):
        result = nix_build("aarch64-linux", builder, SCRIPT)
    assert result.returncode != 0, result
    assert NOT_DECLARED in result.stderr, result.stderr


@pytest.mark.parametrize("system, arch, name, line", [
    ("aarch64-linux", "arm64", "binfmtd-test-aarch64", AARCH64_LINE),
    ("riscv64-linux", "riscv64", "binfmtd-test-riscv64", RISCV64_LINE),
], ids=["aarch64", "riscv64"])
def test_declared_platform_builds(nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox,
                                  register_handler: Register, timed: Timed,
                                  system: str, arch: str, name: str, line: str) -> None:
    with timed(f"fetch {arch} busybox (cached after the first run)"):
        builder = busybox(arch)
    register_handler(name, line)
    with open(nix_daemon.conf_path, "a") as conf:
        conf.write(f"extra-extra-platforms = {system}\n")
    old_pid = nix_daemon.pid
    with timed("restart nix-daemon"):
        nix_daemon.restart()
    assert nix_daemon.pid != old_pid
    with timed(f"{system} build, platform declared"):
        result = nix_build(system, builder, SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.output is not None
    assert result.output.split() == [system.split("-")[0], "nixbld"], result


def test_restart_script_restarts_the_same_daemon(nix_daemon: NixDaemon, timed: Timed) -> None:
    """binfmtd gets `restart = [script]`: the script must work from another process."""
    old_pid = nix_daemon.pid
    with timed("restart nix-daemon through the script"):
        proc = subprocess.run(nix_daemon.restart_command, capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert nix_daemon.pid not in (None, old_pid)
    assert [p for p in running_daemons() if alive(p)] == [nix_daemon.pid]
