"""Fixtures of the aarch64 tier: an emulated arm64 machine (tests/support/armvm.py) booted
once per CPU for the whole session, each boot's report shared by every test that reads it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.aarch64.plan import DISPATCHED, boot_plan, status_plan
from tests.support import armvm
from tests.support.debian import busybox


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _boots:
        terminalreporter.section("aarch64 machine")
        for cpu, seconds in _boots:
            terminalreporter.write_line(f"{seconds:8.1f} s  boot, plan and poweroff, -cpu {cpu}")


_boots: list[tuple[str, float]] = []


@pytest.fixture(scope="session")
def arm_image(debian_package: Path) -> armvm.Image:
    """The machine's disk with the project's .deb installed (cached per .deb)."""
    return armvm.required_image(debian_package)


def _boot(image: armvm.Image, plan: list[dict[str, object]], cpu: str) -> armvm.Report:
    files: dict[str, Path | bytes] = {"busybox/amd64": busybox("amd64"),
                                      "busybox/i386": busybox("i386"),
                                      "dispatcher": armvm.exec_program(DISPATCHED)}
    report = armvm.boot(image, plan, cpu, files)
    _boots.append((cpu, report.seconds))
    return report


@pytest.fixture(scope="session")
def with_aarch32(arm_image: armvm.Image) -> armvm.Report:
    """One boot of a CPU with AArch32 at EL0 (-cpu max) running the whole plan."""
    plan = boot_plan(armvm.arm64_tree(), {"x86_64-linux": "busybox/amd64",
                                          "i686-linux": "busybox/i386"}, "dispatcher")
    return _boot(arm_image, plan, armvm.WITH_AARCH32)


@pytest.fixture(scope="session")
def without_aarch32(arm_image: armvm.Image) -> armvm.Report:
    """A short boot of a CPU without AArch32 (-cpu a64fx): status only."""
    return _boot(arm_image, status_plan(), armvm.WITHOUT_AARCH32)
