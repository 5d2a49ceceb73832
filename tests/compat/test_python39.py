"""binfmtd promises Python 3.9 (RHEL 9; Ubuntu 22.04 has 3.10): the pure core's tests run
under a real 3.9 too, where tomli stands in for tomllib. It found a bug the 3.11 runs had
not: '¹'.isdigit() is True."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.parts import REPO, require

CACHE = Path("/var/cache/binfmtd-tests/py39-venv")
PACKAGES = ["structlog", "psutil", "tomli", "pytest", "hypothesis"]


def find_python39() -> str | None:
    """A real 3.9: pyenv's own build first (its shims refuse versions not selected)."""
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.9.*/bin/python3.9"))
    if pyenv:
        return str(pyenv[-1])
    found = shutil.which("python3.9")
    return found if found and "/shims/" not in found else None


def venv_with_packages(python: str) -> Path:
    marker = CACHE / ".ready"
    if not marker.exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(CACHE)], check=True, timeout=300)
        subprocess.run([str(CACHE / "bin" / "pip"), "install", "-q", *PACKAGES], check=True,
                       timeout=600)
        marker.touch()
    return CACHE / "bin" / "python"


def test_the_unit_tests_pass_on_python_3_9() -> None:
    python = find_python39()
    require(python is not None, "no Python 3.9 here (pyenv install 3.9, or python3.9)")
    assert python is not None
    require(os.access(CACHE.parent, os.W_OK) or os.geteuid() == 0, "cannot write the cache")
    venv_python = venv_with_packages(python)
    version = subprocess.run([str(venv_python), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "(3, 9)"
    result = subprocess.run(
        [str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    print(result.stdout.strip().splitlines()[-1])
