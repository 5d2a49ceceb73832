"""Fixtures for the booted-systemd tests: a cached Debian 12 tree, booted with
tests/support/containers.py.

Each container runs systemd in a user namespace of its own, so its binfmt_misc is its own:
empty once mounted, its registrations invisible to the host, the host's handlers not
applied inside. Nothing here reads or changes the host's binfmt_misc or /etc/nix.

Why fail in CI but skip elsewhere: on a developer's machine without root or nspawn the
system tests cannot run and saying so is enough; in CI the same condition means the
tests silently stopped testing anything, which must turn the run red.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containers import Machine, is_built, require_nspawn
from tests.support.debian import BOOKWORM, required_tree
from tests.system.machine import CONFIG, TIMINGS, booted, install_binfmtd, own_binfmt_misc


@pytest.fixture(scope="session")
def tree() -> Path:
    """The cached Debian 12 tree (built on first use, reused while the package set holds):
    the matrix's bookworm tree, which has man-db (`systemd-analyze verify` runs
    `man binfmtd(8)` for the unit's Documentation= and fails without it)."""
    require_nspawn()
    cached, start = is_built(BOOKWORM.suite, BOOKWORM.packages), time.monotonic()
    built = required_tree(BOOKWORM)
    TIMINGS.append(("tree (cached)" if cached else "tree build", time.monotonic() - start))
    return built


@pytest.fixture
def machine(tree: Path) -> Iterator[Machine]:
    """A freshly booted container, binfmt_misc not mounted (systemd skips it in nspawn)."""
    with booted(tree) as booted_machine:
        yield booted_machine


@pytest.fixture
def binfmt_machine(machine: Machine) -> Machine:
    """Like `machine`, with the container's own, empty binfmt_misc mounted."""
    return own_binfmt_misc(machine)


@pytest.fixture
def installed(binfmt_machine: Machine, debian_package: Path) -> Machine:
    """binfmtd installed from its .deb, with CONFIG; not running; binfmt_misc empty."""
    install_binfmtd(binfmt_machine, debian_package)
    binfmt_machine.write_text("/etc/binfmtd/config.toml", CONFIG)
    return binfmt_machine


@pytest.fixture
def service(installed: Machine) -> Machine:
    """binfmtd enabled and started, with a running nix-daemon whose restarts show."""
    installed.run(["systemctl", "start", "nix-daemon.service"])
    installed.run(["systemctl", "enable", "--now", "binfmtd.service"])
    return installed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print each measured step once, so timings show without `-s`: the slowest of its
    runs, and how many there were."""
    if not TIMINGS:
        return
    terminalreporter.section("system test timings")
    runs: dict[str, list[float]] = {}
    for label, seconds in TIMINGS:
        runs.setdefault(label, []).append(seconds)
    for label, times in runs.items():
        count = f" (slowest of {len(times)})" if len(times) > 1 else ""
        terminalreporter.write_line(f"{max(times):8.3f} s  {label}{count}")
