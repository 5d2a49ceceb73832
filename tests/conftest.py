"""Shared fixtures: real parts (binfmt_misc, Nix) and the rule that CI never skips them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
PROC_BINFMT = Path("/proc/sys/fs/binfmt_misc")
TEST_PREFIX = "binfmtd-test-"
IN_CI = os.environ.get("CI") == "true"

# Debian 12's qemu-user-static line for aarch64, as systemd-binfmt writes it.
DEBIAN_AARCH64_MAGIC = (
    r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
)
DEBIAN_AARCH64_MASK = (
    r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
)


def require(condition: object, reason: str) -> None:
    """Skip a test whose real part is missing; in CI fail instead, so green means proven."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI needs this real part: {reason}", pytrace=False)
    pytest.skip(reason)


def binfmt_line(name: str, interpreter: str, flags: str = "OPF",
                magic: str = DEBIAN_AARCH64_MAGIC, mask: str = DEBIAN_AARCH64_MASK) -> str:
    return f":{name}:M::{magic}:{mask}:{interpreter}:{flags}"


@pytest.fixture
def real_binfmt() -> Iterator[Callable[[str], str]]:
    """Register lines in the real binfmt_misc; every name is removed again afterwards.

    Yields `register(line) -> name`; names must start with binfmtd-test-.
    """
    require(os.geteuid() == 0, "registering binfmt_misc handlers needs root")
    if not (PROC_BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(PROC_BINFMT)],
                       check=False, capture_output=True)
    require((PROC_BINFMT / "register").exists(), "binfmt_misc cannot be mounted here")
    names: list[str] = []

    def register(line: str) -> str:
        name = line.split(":")[1]
        assert name.startswith(TEST_PREFIX), name
        unregister(name)
        names.append(name)
        fd = os.open(PROC_BINFMT / "register", os.O_WRONLY)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return name

    try:
        yield register
    finally:
        for name in names:
            unregister(name)


def unregister(name: str) -> None:
    """Remove an entry if it is there (opening a missing one fails with EACCES, not ENOENT)."""
    entry = PROC_BINFMT / name
    if entry.exists():
        with contextlib.suppress(FileNotFoundError):
            entry.write_text("-1")


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
    with open(REPO / "pyproject.toml", "rb") as file:
        version = tomllib.load(file)["project"]["version"]
    path = REPO / "dist" / f"binfmtd_{version}_all.deb"
    assert path.is_file(), built.stdout[-2000:]
    return path
