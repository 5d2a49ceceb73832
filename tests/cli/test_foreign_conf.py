"""A nix.conf that is not binfmtd's to write: a link into the Nix store (NixOS,
home-manager, system-manager manage /etc that way), or a file something else keeps
read-only. binfmtd refuses to write, says so in one line, and gives the values to
declare where the file comes from."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.sandbox import Sandbox
from tests.support.parts import require

MANAGED_TEXT = "# written by a manager\nsandbox = true\nexperimental-features = nix-command\n"


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    """A nix.conf made a store path by Nix itself, as a manager's activation does."""
    require(shutil.which("nix-store") is not None,
            "nix-store is not installed (apt-get install nix-bin)")
    source = tmp_path / "nix.conf"
    source.write_text(MANAGED_TEXT)
    added = subprocess.run(["nix-store", "--add", str(source)], capture_output=True, text=True,
                           check=False)
    require(added.returncode == 0, f"nix-store --add failed here: {added.stderr.strip()}")
    return Path(added.stdout.strip())


def link_into_store(sandbox: Sandbox, store_file: Path) -> None:
    sandbox.nix_conf.unlink()
    sandbox.nix_conf.symlink_to(store_file)


def test_sync_refuses_a_nix_conf_in_the_store_in_one_line_with_the_values(
    sandbox: Sandbox, store_file: Path
) -> None:
    link_into_store(sandbox, store_file)
    before = store_file.read_bytes()
    result = sandbox.run("sync")
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "belongs to the Nix store" in lines[0] and str(store_file) in lines[0]
    assert "home-manager" in lines[0] and "boot.binfmt.emulatedSystems" in lines[0]
    assert "extra-platforms = aarch64-linux" in lines[0]
    assert "Traceback" not in result.stderr
    assert store_file.read_bytes() == before == MANAGED_TEXT.encode()
    assert sandbox.nix_conf.is_symlink()
    assert sandbox.restarts == []


def test_status_names_the_refusal_as_a_problem_and_exits_1(
    sandbox: Sandbox, store_file: Path
) -> None:
    link_into_store(sandbox, store_file)
    result = sandbox.run("status", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    refused = [p for p in report["problems"] if "belongs to the Nix store" in p]
    assert len(refused) == 1 and "extra-platforms = aarch64-linux" in refused[0]
    assert "binfmtd does not write there" in sandbox.run("status").stdout


def test_a_store_file_that_already_declares_the_platforms_is_in_sync(
    sandbox: Sandbox, store_file: Path, tmp_path: Path
) -> None:
    """The manager did what binfmtd would have: nothing to refuse, nothing to do.
    Positive control for the refusal: the same link, other content."""
    sandbox.nix_conf.unlink()
    wanted = tmp_path / "wanted"
    wanted.mkdir()
    (wanted / "nix.conf").write_text(MANAGED_TEXT)
    planned = sandbox.run("--nix-conf", str(wanted / "nix.conf"), "sync", "--no-restart")
    assert planned.returncode == 0, planned.stderr
    added = subprocess.run(["nix-store", "--add", str(wanted / "nix.conf")],
                           capture_output=True, text=True, check=True)
    sandbox.nix_conf.symlink_to(added.stdout.strip())
    assert sandbox.run("sync", "--check").returncode == 0
    assert sandbox.run("sync").returncode == 0


def test_a_read_only_nix_conf_is_someone_elses(sandbox: Sandbox) -> None:
    sandbox.nix_conf.chmod(0o444)
    before = sandbox.nix_conf.read_bytes()
    result = sandbox.run("sync")
    assert result.returncode == 2
    assert "is read-only (mode 0444), so something else manages it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sandbox.nix_conf.read_bytes() == before
    sandbox.nix_conf.chmod(0o644)  # the control: writable again, and sync writes
    assert sandbox.run("sync").returncode == 0
    assert "aarch64-linux" in sandbox.nix_conf.read_text()
