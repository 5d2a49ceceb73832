"""README's install for other distributions, `pipx install .`, as a user runs it in a
checkout: pipx (from PyPI, kept in the test cache) builds the project from source into a
venv of its own and puts `binfmtd` on the user's PATH. That command then reads a copy of
a real binfmt_misc tree, and without python3-systemd it still starts (its own sd_notify
and journal lines stand in)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.parts import CACHE, DATA, REPO, project_version, require

PIPX = CACHE / "pipx-venv"


def pipx() -> Path:
    """pipx from PyPI in a venv of the tests' own, made once."""
    program = PIPX / "bin" / "pipx"
    if not program.exists():
        shutil.rmtree(PIPX, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(PIPX)], check=True)
        installed = subprocess.run([str(PIPX / "bin" / "pip"), "install", "-q", "pipx"],
                                   capture_output=True, text=True, timeout=600, check=False)
        require(installed.returncode == 0, f"pipx from PyPI: {installed.stderr[-500:]}")
    return program


def test_pipx_install_from_a_checkout_gives_a_working_binfmtd(tmp_path: Path) -> None:
    checkout = tmp_path / "binfmtd"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(
        ".venv", ".git", "dist", "build", "*.egg-info", "__pycache__", ".*_cache"))
    home = tmp_path / "home"
    env = {"PATH": f"{home}/.local/bin:/usr/bin:/bin", "HOME": str(home),
           "PIPX_HOME": str(home / ".local/pipx"), "PIPX_BIN_DIR": str(home / ".local/bin"),
           "PIPX_DEFAULT_PYTHON": sys.executable}
    done = subprocess.run([str(pipx()), "install", "."], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "binfmtd" in done.stdout  # pipx names the command it put on PATH

    installed = shutil.which("binfmtd", path=env["PATH"])
    assert installed == f"{home}/.local/bin/binfmtd"
    version = subprocess.run(["binfmtd", "--version"], env=env, capture_output=True,
                             text=True, check=True)
    assert project_version() in version.stdout
    binfmt_misc = tmp_path / "binfmt_misc"
    shutil.copytree(DATA / "binfmt_misc" / "debian", binfmt_misc)
    (tmp_path / "config.toml").write_text("restart = false\n")
    shown = subprocess.run(
        ["binfmtd", "status", "--json", "--binfmt-misc", str(binfmt_misc),
         "--nix-conf", str(tmp_path / "nix.conf"), "--config", str(tmp_path / "config.toml")],
        env=env, capture_output=True, text=True, check=False)
    assert shown.returncode in (0, 1), shown.stderr
    assert "aarch64-linux" in json.loads(shown.stdout)["wanted_platforms"]
