"""What the system tests share besides tests/booted.py: timings and installing the .deb."""

from __future__ import annotations

import os
from pathlib import Path

from tests.booted import Machine

TIMINGS: list[tuple[str, float]] = []  # printed at the end of the pytest run (conftest.py)


def install_binfmtd(machine: Machine, deb: os.PathLike[str]) -> None:
    """Install the project's .deb into the container as a user would (dpkg -i; its
    dependencies are in the tree), enabled but not started, so that a test configures it
    first: a policy-rc.d that says 101 is Debian's way to install without starting."""
    machine.copy_in(Path(deb), "/tmp/binfmtd.deb")
    machine.write_text("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode="755")
    try:
        machine.run(["dpkg", "-i", "/tmp/binfmtd.deb"])
    finally:
        machine.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
