"""What the e2e tests share besides fixtures: the build every test runs, and the types of
the fixtures that run it (tests/e2e/conftest.py)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

from tests.support.nix import BuildResult

# `id -un` prints nixbld only inside the sandbox (outside, the build user is nixbldN).
SCRIPT = "uname -m > $out; id -un >> $out"

Build = Callable[[str, Path, str], BuildResult]  # nix_build(system, busybox, script)
Busybox = Callable[[str], Path]  # busybox(arch): Debian's static one
Register = Callable[[str, str], Path]  # register_handler(name, line): the entry's path
Timed = Callable[[str], AbstractContextManager[None]]  # with timed("step"): ...


def built(result: BuildResult, system: str) -> None:
    """The build for `system` succeeded, under its own emulator, inside Nix's sandbox."""
    assert result.returncode == 0, result.stderr
    assert result.output is not None
    assert result.output.split() == [system.split("-")[0], "nixbld"], result
