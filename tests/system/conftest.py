"""Fixtures for the booted-systemd tests: a cached Debian tree and a container booted from it.

Why fail in CI but skip elsewhere: on a developer's machine without root or nspawn the
system tests cannot run and saying so is enough; in CI the same condition means the
tests silently stopped testing anything, which must turn the run red.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import rootfs as rootfs_mod
from hostguard import SYSTEM_PREFIX, host_kept
from machine import TIMINGS, BootFailed, Machine, booted

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]


def unavailable(reason: str) -> NoReturn:
    """Skip outside CI; in CI (CI=true) fail with the reason, without a traceback."""
    require(False, f"system test infrastructure unavailable: {reason}")
    raise AssertionError("require() raises")


@pytest.fixture(autouse=True)
def host_binfmt_misc_kept() -> Iterator[None]:
    """Each test leaves the host's binfmt_misc and /etc/nix as it found them (hostguard)."""
    if os.geteuid() != 0:
        unavailable("system tests need root (debootstrap, systemd-nspawn, binfmt_misc)")
    with host_kept(SYSTEM_PREFIX):
        yield


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """The cached Debian 12 tree (built on first use, reused while the package set holds)."""
    if os.geteuid() != 0:
        unavailable("system tests need root (debootstrap, systemd-nspawn, binfmt_misc)")
    start = time.monotonic()
    try:
        rootfs_mod.ensure_host_tools()
        built = rootfs_mod.build()
    except (rootfs_mod.Unavailable, OSError) as err:
        unavailable(f"cannot build the Debian tree: {err}")
    label = "rootfs build" if built else "rootfs (cached)"
    TIMINGS.append((label, time.monotonic() - start))
    return rootfs_mod.TREE


@pytest.fixture
def machine(rootfs: Path) -> Iterator[Machine]:
    """A freshly booted container on an overlay of the tree; powered off after the test."""
    yield from _boot(rootfs)


@pytest.fixture
def binfmt_machine(rootfs: Path) -> Iterator[Machine]:
    """Like `machine`, and the host's binfmt_misc is the container's, read-only."""
    yield from _boot(rootfs, host_binfmt_misc=True)


def _boot(tree: Path, host_binfmt_misc: bool = False) -> Iterator[Machine]:
    with contextlib.ExitStack() as stack:
        try:
            booted_machine = stack.enter_context(booted(tree, host_binfmt_misc=host_binfmt_misc))
        except BootFailed as err:
            unavailable(f"systemd-nspawn cannot boot {tree}: {err}")
        yield booted_machine


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every measured step, so timings show without `-s`."""
    if not TIMINGS:
        return
    terminalreporter.section("system test timings")
    for label, seconds in TIMINGS:
        terminalreporter.write_line(f"{seconds:8.3f} s  {label}")
