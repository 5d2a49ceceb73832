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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.builds import SCRIPT, Build, Busybox, Register, Timed
from tests.support.kernel import AARCH64, RISCV64, PrivateBinfmt, binfmt_line
from tests.support.nix import NixClient, NixDaemon, not_declared
from tests.support.parts import REPO
from tests.support.waiting import until


class Binfmtd:
    """The binfmtd command, run inside the test's namespace (where the daemon and the
    private binfmt_misc are), pointed at the test daemon's nix.conf and restart script."""

    def __init__(self, daemon: NixDaemon, folder: Path, namespace: PrivateBinfmt) -> None:
        self.namespace = namespace
        self.config = folder / "binfmtd.toml"
        restart = json.dumps([str(part) for part in daemon.restart_command])
        self.config.write_text(f"restart = {restart}\nrestart-interval-seconds = 1\n")
        self.env = {**os.environ, "BINFMTD_NIX_CONF": str(daemon.conf_path),
                    "BINFMTD_CONFIG": str(self.config), "PYTHONPATH": str(REPO)}
        self.env.pop("BINFMTD_BINFMT_MISC", None)  # the usual path, inside

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.namespace.run([sys.executable, "-m", "binfmtd", *args], env=self.env)

    def status(self) -> dict:  # type: ignore[type-arg]
        result = self("status", "--json")
        print(f"binfmtd status: exit {result.returncode}")
        return json.loads(result.stdout)  # type: ignore[no-any-return]


class RunningBinfmtd:
    """`binfmtd run` in the namespace, and its JSON log."""

    def __init__(self, binfmtd: Binfmtd, log: Path) -> None:
        self.log_path = log
        with open(log, "w") as stream:
            self.process = subprocess.Popen(
                binfmtd.namespace.argv([sys.executable, "-m", "binfmtd", "run",
                                        "--log-format", "json"]),
                env=binfmtd.env, stderr=stream, text=True)
        self.pid = binfmtd.namespace.child_of(self.process)  # nsenter passes no signal on

    def events(self, name: str) -> int:
        return sum(json.loads(line).get("event") == name
                   for line in self.log_path.read_text().splitlines() if line.startswith("{"))

    def wait_for(self, name: str, count: int, timeout: float = 10) -> None:
        assert until(lambda: self.events(name) >= count, timeout), \
            f"no {count}x {name} within {timeout} s:\n{self.log_path.read_text()}"

    def stop(self) -> int:
        os.kill(self.pid, signal.SIGTERM)
        return self.process.wait(timeout=10)


@pytest.fixture
def binfmtd(nix_daemon: NixDaemon, tmp_path: Path, real_binfmt: PrivateBinfmt) -> Binfmtd:
    return Binfmtd(nix_daemon, tmp_path, real_binfmt)


@pytest.fixture
def aarch64_builder(busybox: Busybox, register_handler: Register) -> Path:
    """The arm64 busybox, with Debian's aarch64 handler registered to run it."""
    builder = busybox("arm64")
    register_handler("binfmtd-test-aarch64", AARCH64)
    return builder


def test_aarch64_build_fails_before_binfmtd_and_works_after_sync(
    nix_daemon: NixDaemon, nix_build: Build, aarch64_builder: Path, binfmtd: Binfmtd,
    timed: Timed,
) -> None:
    builder = aarch64_builder
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
def running_binfmtd(binfmtd: Binfmtd, tmp_path: Path) -> Iterator[RunningBinfmtd]:
    running = RunningBinfmtd(binfmtd, tmp_path / "binfmtd.daemon.log")
    try:
        running.wait_for("daemon.ready", 1)
        yield running
    finally:
        assert running.stop() == 0


def test_the_daemon_follows_registrations(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, register_handler: Register,
    binfmtd: Binfmtd, running_binfmtd: RunningBinfmtd, timed: Timed,
) -> None:
    """Each change reaches nix.conf and restarts nix-daemon; the build after the restart
    (binfmtd logs nixdaemon.restarted once the restart command returned) has the outcome."""
    builder = busybox("riscv64")
    refused = nix_build("riscv64-linux", builder, SCRIPT)  # hermetic: nothing emulated yet
    assert not_declared("riscv64-linux") in refused.stderr, refused.stderr
    restarts = running_binfmtd.events("nixdaemon.restarted")
    with timed("register riscv64 -> nix-daemon restarted"):
        entry = register_handler("binfmtd-test-riscv64", RISCV64)
        running_binfmtd.wait_for("nixdaemon.restarted", restarts + 1)
    works = nix_build("riscv64-linux", builder, SCRIPT)
    assert works.returncode == 0, works.stderr
    assert works.output is not None and works.output.split() == ["riscv64", "nixbld"]
    assert binfmtd.status()["in_sync"]

    with timed("unregister riscv64 -> nix-daemon restarted"):
        entry.write_text("-1")
        running_binfmtd.wait_for("nixdaemon.restarted", restarts + 2)
    refused = nix_build("riscv64-linux", builder, SCRIPT)
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
    line = binfmt_line(name, interpreter, "OP")
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


# How other distributions register aarch64, reproduced with Debian's own binaries:
# Fedora's qemu-user-static (the static emulator, flag F only), Fedora's qemu-user (the
# dynamic emulator, no flags), and Ubuntu 24.04's qemu-user-binfmt (a dynamically linked
# qemu-aarch64 that the kernel opens at registration: F, so only its loader and libraries
# must be in the sandbox).
@pytest.mark.parametrize(
    ("interpreter", "flags"),
    [
        ("/usr/bin/qemu-aarch64-static", "F"),
        ("/usr/bin/qemu-aarch64", ""),
        ("/usr/bin/qemu-aarch64", "OPF"),
    ],
    ids=["fedora-static-F", "fedora-dynamic-no-flags", "ubuntu-dynamic-F"],
)
def test_other_distributions_registrations_build(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, register_handler: Register,
    binfmtd: Binfmtd, interpreter: str, flags: str,
) -> None:
    name = "binfmtd-test-qemu-aarch64"  # the private instance: Fedora's name would do too
    line = binfmt_line(name, interpreter, flags)
    builder = busybox("arm64")
    register_handler(name, line)
    before = nix_build("aarch64-linux", builder, SCRIPT)
    assert before.returncode != 0 and not_declared("aarch64-linux") in before.stderr
    assert binfmtd("sync").returncode == 0
    result = nix_build("aarch64-linux", builder, SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.output is not None and result.output.split() == ["aarch64", "nixbld"]


def test_a_build_in_flight_survives_the_restart(
    nix_daemon: NixDaemon, nix_client: NixClient, aarch64_builder: Path,
    register_handler: Register, binfmtd: Binfmtd, timed: Timed,
) -> None:
    builder = aarch64_builder
    gate = nix_client.state / "gate"  # the build ends once the test creates gate/open
    gate.mkdir()
    with open(nix_daemon.conf_path, "a") as conf:
        conf.write(f"extra-sandbox-paths = {gate}\n")
    assert binfmtd("sync").returncode == 0  # declares aarch64-linux, restarts nix-daemon
    build = nix_client.begin("aarch64-linux", builder, "echo build-started >&2; "
                             f"until [ -e {gate}/open ]; do sleep 0.05; done; uname -m > $out")
    with timed("aarch64 build with a nix-daemon restart in the middle"):
        assert until(lambda: "build-started" in build.log() or not build.running(), 60)
        assert build.running(), build.log()
        register_handler("binfmtd-test-riscv64", RISCV64)
        old_pid = nix_daemon.pid
        assert binfmtd("sync").returncode == 0  # a change: restarts nix-daemon
        assert nix_daemon.pid != old_pid
        assert build.running(), build.log()  # still in flight after the restart
        (gate / "open").touch()
        result = build.wait(timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.output == "aarch64\n"
    assert result.stderr.count("build-started") == 1  # the same build, not a rebuild


def test_register_doctor_build_unregister(
    nix_daemon: NixDaemon, nix_build: Build, busybox: Busybox, binfmtd: Binfmtd,
    tmp_path: Path, timed: Timed, real_binfmt: PrivateBinfmt,
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
    assert [n for n in real_binfmt.entries() if n.startswith(prefix)] == []
    refused = nix_build("aarch64-linux", busybox("arm64"), SCRIPT)
    assert not_declared("aarch64-linux") in refused.stderr, refused.stderr


def test_status_names_a_nix_daemon_that_started_before_the_last_change(
    binfmtd: Binfmtd, nix_daemon: NixDaemon
) -> None:
    """nix-daemon reads nix.conf only when it starts: one that started before nix.conf last
    changed has not read it, and status says so (exit 1) until it is restarted."""
    fresh = binfmtd("status", "--json")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr  # the control
    assert json.loads(fresh.stdout)["nix_daemon"]["restart_needed"] is False
    later = os.stat(nix_daemon.conf_path).st_mtime + 60
    os.utime(nix_daemon.conf_path, (later, later))  # edited after the daemon started
    stale = binfmtd("status")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "started BEFORE the last change to nix.conf: restart needed" in stale.stdout
    assert "in sync, but nix-daemon has not read it yet: restart nix-daemon" in stale.stdout
    os.utime(nix_daemon.conf_path)  # now: the restart below comes after it
    nix_daemon.restart()
    assert binfmtd("status").returncode == 0
