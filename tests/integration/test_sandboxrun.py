"""doctor's sandbox run: a program in a root that shows only the sandbox paths, with a
deadline. Real mount namespaces, real programs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from binfmtd.emulation.elfgen import EXIT_CODE, exit_program
from binfmtd.emulation.sandboxrun import run_sandboxed
from binfmtd.platforms import host_system
from tests.support.parts import require

# What a shell script needs to run in the private root (merged /usr or not).
SHELL_PATHS = ("/usr", "/bin", "/lib", "/lib64")


@pytest.fixture(autouse=True)
def as_root() -> None:
    require(os.geteuid() == 0, "a private mount namespace needs root")


def children() -> list[str]:
    """This process's children, as the kernel lists them."""
    return [pid for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()]


def test_a_program_runs_and_its_exit_status_comes_back() -> None:
    program = exit_program(host_system(os.uname().machine))
    assert run_sandboxed(program, ()) == (EXIT_CODE, None)


def test_a_program_that_cannot_start_says_why() -> None:
    """Its interpreter is not among the visible paths: what a missing sandbox path does."""
    outcome = run_sandboxed(b"#!/bin/sh\nexit 0\n", ())
    assert outcome.status is None and outcome.error == "No such file or directory"


def test_a_program_that_does_not_end_is_killed_at_the_deadline() -> None:
    before = children()
    started = time.monotonic()
    outcome = run_sandboxed(b"#!/bin/sh\nexec sleep 30\n", SHELL_PATHS, timeout=1)
    assert outcome == (None, "did not finish within 1 s")
    assert time.monotonic() - started < 10
    assert children() == before  # killed and reaped
    control = run_sandboxed(b"#!/bin/sh\nexit 7\n", SHELL_PATHS, timeout=10)
    assert control == (7, None)  # the same paths let a shell script run to its end
