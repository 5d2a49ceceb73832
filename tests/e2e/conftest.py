"""Fixtures for end-to-end tests: a real nix-daemon, a real binfmt_misc, foreign builders.

Each test gets a private namespace (tests/support/kernel.py) with its own binfmt_misc and
its own nix-daemon socket; the daemon, binfmtd and the builds all run in there, so the
host's handlers, /etc/nix and nix-daemon neither help nor get touched. The namespace's
end stops every process in it, also when a test fails. In CI (CI=true) a missing part
fails the test with the reason: a skipped e2e suite would let CI pass while proving
nothing. Elsewhere it skips with the reason.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.builds import Build, Busybox, Register, Timed
from tests.support import debian
from tests.support.kernel import PrivateBinfmt
from tests.support.nix import NixClient, NixDaemon
from tests.support.parts import require

_timings: list[tuple[str, str, float]] = []


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
def busybox() -> Busybox:
    """busybox("arm64") -> path of Debian's static busybox for that architecture."""
    return debian.busybox


@pytest.fixture
def nix_daemon(tmp_path: Path, timed: Timed, real_binfmt: PrivateBinfmt) -> Iterator[NixDaemon]:
    """A real nix-daemon for this test alone, inside its namespace, configured only by
    `nix_daemon.conf_path`.

    It exposes `conf_path`, `pid`, `listeners()`, `restart()` and `restart_command` (a
    script that another program in the namespace, such as binfmtd, runs to restart this
    same daemon).
    """
    require(os.geteuid() == 0, "must run as root (nix-daemon, binfmt_misc)")
    for program in ("nix-daemon", "nix-build", "unshare", "setpriv"):
        require(shutil.which(program), f"{program} not found (apt-get install nix-bin "
                                       "util-linux)")
    daemon = NixDaemon(tmp_path / "nix-daemon", real_binfmt)
    daemon.setup()
    with timed("start nix-daemon"):
        daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()  # the rest (workers, builds) ends with the namespace


@pytest.fixture
def nix_client(nix_daemon: NixDaemon, real_binfmt: PrivateBinfmt) -> Iterator[NixClient]:
    """A Nix client (NIX_REMOTE=daemon, user nobody) that forwards no setting of its own."""
    state = Path(tempfile.mkdtemp(prefix="binfmtd-e2e-client-"))
    state.chmod(0o755)  # nobody reads the derivations and builders from here
    try:
        yield NixClient(state, real_binfmt)
    finally:
        shutil.rmtree(state)


@pytest.fixture
def nix_build(nix_client: NixClient) -> Build:
    """nix_build(system, busybox, script) -> BuildResult(returncode, stdout, stderr, output)."""
    return nix_client.build


@pytest.fixture
def register_handler(real_binfmt: PrivateBinfmt) -> Register:
    """register_handler(name, line) registers `line` in the test's private binfmt_misc and
    returns the entry's path (as the host reaches it)."""
    def register(name: str, line: str) -> Path:
        fields = line.split(line[0])
        assert fields[1] == name, f"the line registers {fields[1]!r}, not {name!r}"
        require(Path(fields[6]).exists(),
                f"{fields[6]} missing (apt-get install qemu-user-static)")
        real_binfmt.register(line)
        return real_binfmt.binfmt_misc / name

    return register
