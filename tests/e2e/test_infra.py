"""The e2e infrastructure proves itself, with no binfmtd involved.

If these fail, a binfmtd e2e failure would mean nothing: the daemon, the client isolation,
the emulator registration or the foreign builder would be at fault, not binfmtd.
"""
from __future__ import annotations

import contextlib
import socket
import uuid
from pathlib import Path

import pytest

from tests.e2e.builds import SCRIPT, Build, Busybox, Register, Timed, built
from tests.support.kernel import AARCH64, RISCV64, PrivateBinfmt
from tests.support.nix import SOCKET, NixDaemon, not_declared
from tests.support.waiting import until


def test_undeclared_platform_fails(nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox,
                                   register_handler: Register, timed: Timed) -> None:
    with timed("fetch arm64 busybox (cached after the first run)"):
        builder = busybox("arm64")
    with timed("register binfmtd-test-aarch64"):
        entry = register_handler("binfmtd-test-aarch64", AARCH64)
    assert entry.read_text().startswith("enabled\n")
    with timed("aarch64-linux build, platform not declared"):
        result = nix_build("aarch64-linux", builder, SCRIPT)
    assert result.returncode != 0, result
    assert not_declared("aarch64-linux") in result.stderr, result.stderr


@pytest.mark.parametrize("system, arch, name, line", [
    ("aarch64-linux", "arm64", "binfmtd-test-aarch64", AARCH64),
    ("riscv64-linux", "riscv64", "binfmtd-test-riscv64", RISCV64),
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
    built(result, system)


def test_restart_script_restarts_the_same_daemon(nix_daemon: NixDaemon, timed: Timed,
                                                 real_binfmt: PrivateBinfmt) -> None:
    """binfmtd gets `restart = [script]`: the script must work from another process."""
    old_pid = nix_daemon.pid
    assert nix_daemon.listeners() == [old_pid]
    with timed("restart nix-daemon through the script"):
        proc = real_binfmt.run(nix_daemon.restart_command, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert nix_daemon.pid not in (None, old_pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(real_binfmt.inside(str(SOCKET))))  # nix-daemon forks a worker
        assert until(lambda: len(named(real_binfmt, "nix-daemon")) == 2, timeout=5)
        # One daemon; its worker is not one, once it has closed the listening socket it
        # inherited (right after the fork: wait for it rather than race it).
        assert until(lambda: nix_daemon.listeners() == [nix_daemon.pid], timeout=5), (
            nix_daemon.listeners())


def named(namespace: PrivateBinfmt, comm: str) -> list[int]:
    """Processes inside called `comm` (a nix-daemon worker shares its daemon's name)."""
    found = []
    for pid in namespace.pids():
        with contextlib.suppress(OSError):
            if (namespace.inside(f"/proc/{pid}/comm")).read_text().strip() == comm:
                found.append(pid)
    return found


def test_a_handler_registered_inside_runs_inside_only(
    real_binfmt: PrivateBinfmt, register_handler: Register, busybox: Busybox
) -> None:
    """The private binfmt_misc runs a foreign program inside; the host lists no such entry."""
    builder = busybox("arm64")
    name = f"binfmtd-test-{uuid.uuid4().hex[:12]}"  # a name nothing on the host can have
    register_handler(name, AARCH64.replace("binfmtd-test-aarch64", name))
    ran = real_binfmt.run([str(builder), "uname", "-m"])
    assert (ran.returncode, ran.stdout) == (0, "aarch64\n"), ran.stderr
    assert real_binfmt.entries() == [name]
    assert not (Path("/proc/sys/fs/binfmt_misc") / name).exists()
