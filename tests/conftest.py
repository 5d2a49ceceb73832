"""Fixtures more than one tier uses, and the run's hooks. What the tests share besides
fixtures lives in tests/support/: the real parts and require() (parts.py), the one way to
wait (waiting.py), binfmt_misc (kernel.py), Nix (nix.py), Debian (debian.py), booted
containers (containers.py), Ansible (ansible.py), the daemon (daemon.py), the host's guard
(hostguard.py), the emulated arm64 machine (armvm.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import ansible
from tests.support.daemon import RunningDaemon
from tests.support.kernel import NamespaceError, PrivateBinfmt
from tests.support.parts import REPO, project_version, require

# No per-example deadline: on a loaded 2-core machine (CI, or `make deb` beside other
# builds) one example of a pure function took 0.7 s, and a timing check is not what
# these tests are for. Speed lives in bench/.
settings.register_profile("binfmtd", deadline=None)
settings.load_profile("binfmtd")


@pytest.fixture
def real_binfmt() -> Iterator[PrivateBinfmt]:
    """The real kernel's binfmt_misc, in a private instance for this test alone.

    A user namespace of its own (Linux >= 6.7) gives an empty binfmt_misc that the host
    never sees, and where the host's own handlers do not apply: the test neither reads
    nor changes the host's entries, and is not helped by them. Register with
    `.register(line)`, point binfmtd at `.binfmt_misc`, or run a program inside with
    `.argv(cmd)`. Everything inside ends with the test.
    """
    require(os.geteuid() == 0, "a private binfmt_misc needs root (to map the user namespace)")
    require(shutil.which("nsenter") is not None, "nsenter not found (util-linux)")
    namespace = PrivateBinfmt()
    try:
        namespace.start()
    except NamespaceError as error:
        require(False, f"{error} (Linux >= 6.7 gives each user namespace a binfmt_misc)")
    try:
        yield namespace
    finally:
        namespace.stop()


@pytest.fixture
def daemon(tmp_path: Path, real_binfmt: PrivateBinfmt) -> Iterator[RunningDaemon]:
    """A `binfmtd run` (not started yet) on the test's private binfmt_misc, stopped at the
    end (tests/support/daemon.py): the daemon and reliability tiers'."""
    running = RunningDaemon(tmp_path, real_binfmt)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def nix() -> str:
    """The real `nix` program (Debian's nix-bin), needed for validation tests."""
    found = shutil.which("nix")
    require(found is not None, "Nix is not installed (apt-get install nix-bin)")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def debian_package() -> Path:
    """dist/binfmtd_<version>_all.deb, built once per test run by `make deb`."""
    require(Path("/etc/debian_version").exists() and shutil.which("dpkg") is not None,
            "the .deb is built on Debian or Ubuntu only")
    require(os.geteuid() == 0, "building the .deb installs its build dependencies: root")
    built = subprocess.run(["make", "deb"], cwd=REPO, capture_output=True, text=True,
                           timeout=1800, check=False)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    path = REPO / "dist" / f"binfmtd_{project_version()}_all.deb"
    assert path.is_file(), built.stdout[-2000:]
    return path


@pytest.fixture(scope="session")
def ansible_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ansible-core from PyPI, built once and cached (the packaging and farm
    tiers')."""
    return ansible.ansible_venv(tmp_path_factory)


# --- the cached Debian trees, built in the background from the start of a run ---------

TREE_TIERS = {"packaging": ("bookworm",), "system": ("bookworm",), "farm": ("bookworm",),
              "matrix": ("bookworm", "trixie", "sid")}
_tree_builder: list[subprocess.Popen[bytes]] = []


def _tier(item: pytest.Item) -> str:
    """tests/<tier>/...: the item's tier ('' outside tests/)."""
    path = Path(item.fspath)
    return path.relative_to(REPO).parts[1] if path.is_relative_to(REPO / "tests") else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The aarch64 tier runs last, whatever the alphabet says: on a fresh machine its arm64
    tree is the longest of the background builds, and every other tier overlaps it."""
    items.sort(key=lambda item: _tier(item) == "aarch64")  # stable: the rest keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a fresh machine the booted tiers' trees take minutes of debootstrap: start
    building the ones this run needs at once (tests/support/debian.py; the aarch64 tier's
    arm64 tree, tests/support/armvm.py), so that they overlap the tiers that need none.
    A test that needs a tree still asks for it (the tree's lock makes it wait for this
    build, or build it itself if this one failed)."""
    from tests.support import armvm
    from tests.support.containers import is_built
    from tests.support.debian import GENERATIONS

    tiers = {_tier(item) for item in session.items}
    suites = {suite for tier in tiers for suite in TREE_TIERS.get(tier, ())}
    missing = sorted(g.suite for g in GENERATIONS
                     if g.suite in suites and not is_built(g.suite, g.packages))
    builds = [["tests.support.debian", *missing]] if missing else []
    if "aarch64" in tiers and not armvm.is_built():  # the emulated arm64 machine's tree
        builds.append(["tests.support.armvm"])
    if os.geteuid() == 0 and not session.config.option.collectonly:
        for module in builds:
            _tree_builder.append(subprocess.Popen(
                [sys.executable, "-m", *module], cwd=REPO, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run that ended before it needed the trees waits for their build to end rather
    than kill debootstrap half-way, with its mounts inside the half-built tree."""
    for builder in _tree_builder:
        builder.wait()


# --- wall time of each tier, in the terminal summary ----------------------------------


@dataclass
class _Span:
    start: float
    stop: float
    tests: int = 0


_tiers: dict[str, _Span] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note when each tier (tests/<tier>/) started and ended, from its tests' phases."""
    parts = Path(report.fspath).parts
    # pytest < 7.3 (Debian 12's, in the .deb's and the RPM's builds) has no start/stop.
    if len(parts) < 3 or parts[0] != "tests" or not hasattr(report, "start"):
        return
    span = _tiers.setdefault(parts[1], _Span(report.start, report.stop))
    span.start = min(span.start, report.start)
    span.stop = max(span.stop, report.stop)
    span.tests += report.when == "setup"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _tiers:
        return
    terminalreporter.section("wall time per tier")
    for tier, span in sorted(_tiers.items()):
        terminalreporter.write_line(
            f"{span.stop - span.start:8.1f} s  tests/{tier} ({span.tests} tests)")
