"""The user's story, end to end: a sandboxed aarch64-linux build fails before binfmtd
and works after it; the daemon follows registrations; restarts spare builds in flight.

Real nix-daemon (sandbox = true, sandbox-fallback = false), real qemu-user-static, real
binfmt_misc, Debian's static busybox as the foreign builder, no network in the build.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

import pytest
from nixtest import BuildResult, NixDaemon
from test_infra import AARCH64_LINE, RISCV64_LINE, SCRIPT

Build = Callable[[str, Path, str], BuildResult]
Busybox = Callable[[str], Path]
Register = Callable[[str, str], Path]
Timed = Callable[[str], AbstractContextManager[None]]

REPO = Path(__file__).resolve().parents[2]


def not_declared(system: str) -> str:
    return f"a '{system}' with features {{}} is required to build"


class Binfmtd:
    """The binfmtd command, pointed at the test daemon's nix.conf and restart script."""

    def __init__(self, daemon: NixDaemon, folder: Path) -> None:
        self.config = folder / "binfmtd.toml"
        restart = json.dumps([str(part) for part in daemon.restart_command])
        self.config.write_text(f"restart = {restart}\nrestart-interval-seconds = 1\n")
        self.env = {**os.environ, "BINFMTD_NIX_CONF": str(daemon.conf_path),
                    "BINFMTD_CONFIG": str(self.config), "PYTHONPATH": str(REPO)}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "binfmtd", *args], capture_output=True,
                              text=True, env=self.env, timeout=120, check=False)

    def status(self) -> dict:  # type: ignore[type-arg]
        result = self("status", "--json")
        print(f"binfmtd status: exit {result.returncode}")
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def background(self, log: Path) -> subprocess.Popen[str]:
        with open(log, "w") as stream:
            return subprocess.Popen([sys.executable, "-m", "binfmtd", "run", "--log-format",
                                     "json"], env=self.env, stderr=stream, text=True)


@pytest.fixture
def binfmtd(nix_daemon: NixDaemon, tmp_path: Path) -> Binfmtd:
    return Binfmtd(nix_daemon, tmp_path)


def test_aarch64_build_fails_before_binfmtd_and_works_after_sync(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, register_handler: Register,
    binfmtd: Binfmtd, timed: Timed,
) -> None:
    builder = busybox("arm64")
    register_handler("binfmtd-test-aarch64", AARCH64_LINE)
    with timed("build before binfmtd"):
        before = nix_build("aarch64-linux", builder, SCRIPT)
    assert before.returncode != 0 and not_declared("aarch64-linux") in before.stderr
    status = binfmtd.status()
    assert not status["in_sync"] and "aarch64-linux" in status["wanted_platforms"]

    old_pid = nix_daemon.pid
    with timed("binfmtd sync (with nix-daemon restart)"):
        synced = binfmtd("sync")
    assert synced.returncode == 0, synced.stderr
    assert nix_daemon.pid != old_pid  # restarted through the configured command
    with timed("build after binfmtd sync"):
        after = nix_build("aarch64-linux", builder, SCRIPT)
    assert after.returncode == 0, after.stderr
    assert after.output is not None and after.output.split() == ["aarch64", "nixbld"]
    status = binfmtd.status()
    assert status["in_sync"] and "aarch64-linux" in status["effective"]["extra-platforms"]
    assert not status["nix_daemon"]["restart_needed"]


@pytest.fixture
def running_binfmtd(binfmtd: Binfmtd, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = binfmtd.background(tmp_path / "binfmtd.log")
    try:
        deadline = time.monotonic() + 10
        while "daemon.ready" not in (tmp_path / "binfmtd.log").read_text():
            assert time.monotonic() < deadline and process.poll() is None, \
                (tmp_path / "binfmtd.log").read_text()
            time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def build_soon(nix_build: Build, system: str, builder: Path,
               outcome: Callable[[BuildResult], bool], within: float = 10) -> BuildResult:
    """Retry a build until it has the wanted outcome: binfmtd acts some 200 ms after the
    kernel changed, and a build started in between meets the kernel's new state."""
    deadline = time.monotonic() + within
    while True:
        result = nix_build(system, builder, SCRIPT)
        if outcome(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_the_daemon_follows_registrations(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, register_handler: Register,
    binfmtd: Binfmtd, running_binfmtd: subprocess.Popen[str], timed: Timed,
) -> None:
    builder = busybox("riscv64")
    start = time.monotonic()
    entry = register_handler("binfmtd-test-riscv64", RISCV64_LINE)
    with timed("register riscv64 -> riscv64 build succeeds"):
        works = build_soon(nix_build, "riscv64-linux", builder, lambda r: r.returncode == 0)
    assert works.returncode == 0, works.stderr
    assert works.output is not None and works.output.split() == ["riscv64", "nixbld"]
    print(f"registration to a working riscv64 build: {time.monotonic() - start:.2f} s")
    assert binfmtd.status()["in_sync"]

    entry.write_text("-1")
    with timed("unregister riscv64 -> build refused by Nix"):
        refused = build_soon(nix_build, "riscv64-linux", builder,
                             lambda r: not_declared("riscv64-linux") in r.stderr)
    assert refused.returncode != 0
    assert not_declared("riscv64-linux") in refused.stderr, refused.stderr  # not a sandbox error


@pytest.mark.parametrize(
    ("name", "interpreter"),
    [
        ("binfmtd-test-nof-static", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"),
        ("binfmtd-test-nof-dynamic", "/usr/bin/qemu-aarch64"),
    ],
    ids=["static-without-F", "dynamic-qemu-user-without-F"],
)
def test_registrations_the_sandbox_cannot_see_by_itself(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, register_handler: Register,
    binfmtd: Binfmtd, timed: Timed, name: str, interpreter: str,
) -> None:
    line = AARCH64_LINE.replace("binfmtd-test-aarch64", name).replace(
        "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", interpreter).replace(":OPF", ":OP")
    register_handler(name, line)
    builder = busybox("arm64")
    # The control: the platform declared by hand, without the sandbox paths.
    with open(nix_daemon.conf_path, "a") as conf:
        conf.write("extra-extra-platforms = aarch64-linux\n")
    nix_daemon.restart()
    blind = nix_build("aarch64-linux", builder, SCRIPT)
    assert blind.returncode != 0 and "No such file or directory" in blind.stderr, blind.stderr
    with timed("binfmtd sync"):
        assert binfmtd("sync").returncode == 0
    paths = binfmtd.status()["effective"]["sandbox-paths"].split()
    assert f"{interpreter}?" in paths
    with timed(f"aarch64 build through {interpreter} without F"):
        result = nix_build("aarch64-linux", builder, SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.output is not None and result.output.split() == ["aarch64", "nixbld"]


def test_a_build_in_flight_survives_the_restart(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, register_handler: Register,
    binfmtd: Binfmtd, timed: Timed,
) -> None:
    builder = busybox("arm64")
    register_handler("binfmtd-test-aarch64", AARCH64_LINE)
    assert binfmtd("sync").returncode == 0
    results: list[BuildResult] = []
    long_build = threading.Thread(target=lambda: results.append(
        nix_build("aarch64-linux", builder, "sleep 20; uname -m > $out")))
    with timed("20 s aarch64 build with a nix-daemon restart in the middle"):
        long_build.start()
        time.sleep(3)
        register_handler("binfmtd-test-riscv64", RISCV64_LINE)
        old_pid = nix_daemon.pid
        assert binfmtd("sync").returncode == 0  # a change: restarts nix-daemon
        assert nix_daemon.pid != old_pid
        long_build.join(timeout=120)
    assert results and results[0].returncode == 0, results[0].stderr if results else "no result"
    assert results[0].output == "aarch64\n"


def test_register_doctor_build_unregister(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, binfmtd: Binfmtd,
    tmp_path: Path, timed: Timed,
) -> None:
    """The NixOS-like story: declare the systems, prove them, build, and take it all back."""
    prefix = "binfmtd-test-e2e-"
    binfmt_d = tmp_path / "binfmt.d"
    binfmt_d.mkdir()
    binfmtd.env["BINFMTD_BINFMT_D"] = str(binfmt_d)
    binfmtd.config.write_text(binfmtd.config.read_text()
                              + f'registration-prefix = "{prefix}"\n')
    conf_before = nix_daemon.conf_path.read_text()
    systems = {"aarch64-linux": "arm64", "riscv64-linux": "riscv64"}
    try:
        with timed("binfmtd register aarch64-linux riscv64-linux"):
            registered = binfmtd("register", *systems)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        with timed("binfmtd doctor"):
            doctor = binfmtd("doctor", "--json")
        report = {p["system"]: p["ok"] for p in json.loads(doctor.stdout)["platforms"]}
        assert report.get("aarch64-linux") and report.get("riscv64-linux"), doctor.stdout
        for system, arch in systems.items():
            with timed(f"{system} build after register"):
                built = nix_build(system, busybox(arch), SCRIPT)
            assert built.returncode == 0, built.stderr
            assert built.output is not None and built.output.split()[0] == system.split("-")[0]
        with timed("binfmtd unregister"):
            assert binfmtd("unregister", *systems).returncode == 0
        assert nix_daemon.conf_path.read_text() == conf_before
        assert list(binfmt_d.iterdir()) == []
        left = [p.name for p in Path("/proc/sys/fs/binfmt_misc").iterdir()
                if p.name.startswith(prefix)]
        assert left == []
        refused = nix_build("aarch64-linux", busybox("arm64"), SCRIPT)
        assert not_declared("aarch64-linux") in refused.stderr, refused.stderr
    finally:
        for entry in Path("/proc/sys/fs/binfmt_misc").glob(prefix + "*"):
            entry.write_text("-1")
