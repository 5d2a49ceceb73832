"""What the system tests share besides tests/booted.py: booting, timings, installing the .deb."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from tests.booted import BootFailed, Machine, boot
from tests.conftest import require

TIMINGS: list[tuple[str, float]] = []  # printed at the end of the pytest run (conftest.py)


def unavailable(reason: str) -> NoReturn:
    """Skip outside CI; in CI (CI=true) fail with the reason, without a traceback."""
    require(False, f"system test infrastructure unavailable: {reason}")
    raise AssertionError("require() raises")


@contextlib.contextmanager
def booted(tree: Path, binds_ro: dict[str, str] | None = None) -> Iterator[Machine]:
    """A container booted from `tree` (an overlay over it), powered off afterwards."""
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            machine = stack.enter_context(boot(tree, binds_ro=binds_ro))
        except BootFailed as error:
            unavailable(f"systemd-nspawn cannot boot {tree}: {error}")
        TIMINGS.append(("boot", time.monotonic() - start))
        yield machine


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
