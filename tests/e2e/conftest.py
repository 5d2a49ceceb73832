"""Fixtures for end-to-end tests: a real nix-daemon, a real binfmt_misc, foreign builders.

Everything these fixtures start or register is undone at teardown, also when a test
fails. In CI (CI=true) a missing part fails the test with the reason: a skipped e2e suite
would let CI pass while proving nothing. Elsewhere it skips with the reason.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable

import pytest
from builders import FetchError, static_busybox
from nixtest import BuildResult, NixClient, NixDaemon, running_daemons

from tests.conftest import require

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
PR_SET_CHILD_SUBREAPER = 36

Timed = Callable[[str], AbstractContextManager[None]]
_timings: list[tuple[str, str, float]] = []


def _subreaper(on: bool) -> None:
    """Adopt orphans, such as the daemon the restart script starts, so that they are
    reaped at once: PID 1 here reaps only every second or two, leaving zombies that
    pgrep still lists."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        terminalreporter.section("e2e timings")
        for test, step, seconds in _timings:
            terminalreporter.write_line(f"{seconds:8.3f} s  {test}: {step}")


@pytest.fixture
def timed(request: pytest.FixtureRequest) -> Timed:
    """`with timed("step"):` prints and records how long the step took."""
    @contextmanager
    def step(name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            print(f"{name}: {seconds:.3f} s")
            _timings.append((request.node.name, name, seconds))
    return step


@pytest.fixture(scope="session")
def busybox() -> Callable[[str], Path]:
    """busybox("arm64") -> path of Debian's static busybox for that architecture."""
    def get(arch: str) -> Path:
        try:
            return static_busybox(arch)
        except FetchError as e:
            require(False, f"cannot fetch busybox-static for {arch}: {e}")
            raise
    return get


@pytest.fixture
def nix_daemon(tmp_path: Path, timed: Timed) -> Iterator[NixDaemon]:
    """A real nix-daemon for this test alone, configured only by `nix_daemon.conf_path`.

    It exposes `conf_path`, `pid`, `restart()` and `restart_command` (a script that
    another program, such as binfmtd, can run to restart this same daemon).
    """
    require(os.geteuid() == 0, "must run as root (nix-daemon, binfmt_misc)")
    require(shutil.which("nix-daemon") and shutil.which("nix-build"),
            "nix-daemon/nix-build not found (apt-get install nix-bin)")
    require(shutil.which("unshare"), "unshare not found (util-linux)")
    others = running_daemons()
    require(not others, f"a nix-daemon is already running (pids {others}); "
                        "the tests need its socket to themselves")
    daemon = NixDaemon(tmp_path / "nix-daemon")
    daemon.setup()
    _subreaper(True)
    try:
        with timed("start nix-daemon"):
            daemon.start()
        yield daemon
    finally:
        try:
            daemon.shutdown()
        finally:
            _subreaper(False)
    assert not running_daemons(), "a nix-daemon survived teardown"


@pytest.fixture
def nix_client(tmp_path: Path, nix_daemon: NixDaemon) -> NixClient:
    """A Nix client (NIX_REMOTE=daemon) that forwards no setting of its own."""
    return NixClient(tmp_path / "nix-client")


@pytest.fixture
def nix_build(nix_client: NixClient) -> Callable[[str, Path, str], BuildResult]:
    """nix_build(system, busybox, script) -> BuildResult(returncode, stdout, stderr, output)."""
    return nix_client.build


@pytest.fixture
def register_handler(real_binfmt: Callable[[str], str]) -> Callable[[str, str], Path]:
    """register_handler(name, line) registers `line` in the real binfmt_misc, through the
    suite's real_binfmt fixture (binfmtd-test-* names only, always removed at teardown)."""
    def register(name: str, line: str) -> Path:
        fields = line.split(line[0])
        assert fields[1] == name, f"the line registers {fields[1]!r}, not {name!r}"
        require(Path(fields[6]).exists(),
                f"{fields[6]} missing (apt-get install qemu-user-static)")
        real_binfmt(line)
        return BINFMT_MISC / name

    return register
