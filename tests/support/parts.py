"""Where the tests find things, and the one rule for a real part that is missing.

A test that needs a real part (root, binfmt_misc, Nix, qemu, nspawn, a Debian tree) asks
`require()`: on a developer's machine it skips with the reason; in CI (CI=true) it fails,
so that a green run means proven rather than skipped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
IN_CI = os.environ.get("CI") == "true"
# What the tests fetch or build once and keep across runs (busybox, the ansible venv).
CACHE = Path(os.environ.get("BINFMTD_TEST_CACHE", "/var/cache/binfmtd-tests"))


def project_version() -> str:
    """The version pyproject.toml gives the project (and so its packages)."""
    with open(REPO / "pyproject.toml", "rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def require(condition: object, reason: str) -> None:
    """Skip a test whose real part is missing; in CI fail instead, so green means proven."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI needs this real part: {reason}", pytrace=False)
    pytest.skip(reason)
