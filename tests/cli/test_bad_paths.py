"""Every command, every path it can be pointed at, everything an admin can put there: one
line that says what is wrong and what belongs there, exit 2, never a traceback, a hang or
the exit status 1 that means "out of sync"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from tests.cli.sandbox import Sandbox
from tests.support.parts import require

COMMANDS = [("status",), ("status", "--json"), ("sync",), ("sync", "--check"), ("run",),
            ("register", "aarch64-linux"), ("unregister", "aarch64-linux"), ("doctor",),
            ("builder-line",), ("remove",)]

# Where a path goes in (an option or its variable), and whether a folder or a file belongs.
SOURCES = {
    "--binfmt-misc": "folder", "BINFMTD_BINFMT_MISC": "folder",
    "--nix-conf": "file", "BINFMTD_NIX_CONF": "file",
    "--config": "file", "BINFMTD_CONFIG": "file",
    "BINFMTD_BINFMT_D": "folder",
}


def wrong_kind(tmp: Path, belongs: str) -> Path:
    """A file where a folder belongs, a folder where a file does."""
    path = tmp / "wrong"
    if belongs == "folder":
        path.write_text("a file\n")
    else:
        path.mkdir()
    return path


def missing(tmp: Path, belongs: str) -> Path:
    return tmp / ("nix.cfg" if belongs == "file" else "no-such-folder")


def dangling(tmp: Path, belongs: str) -> Path:
    (tmp / "dangling").symlink_to(tmp / "gone")
    return tmp / "dangling"


def fifo(tmp: Path, belongs: str) -> Path:
    os.mkfifo(tmp / "fifo")
    return tmp / "fifo"


def under_a_file(tmp: Path, belongs: str) -> Path:
    (tmp / "plain").write_text("")
    return tmp / "plain" / "inside"


def huge(tmp: Path, belongs: str) -> Path:
    """2 GiB, sparse: reading it whole would take a while and all the memory."""
    path = tmp / "huge"
    with open(path, "wb") as file:
        file.truncate(2 << 30)
    return path


KINDS: dict[str, Callable[[Path, str], Path]] = {
    "wrong kind": wrong_kind, "missing": missing, "dangling link": dangling, "FIFO": fifo,
    "under a file": under_a_file, "huge": huge,
}
# What is no mistake: a folder for binfmt.d lines that does not exist yet (register makes
# it); a config from a pipe (the Ansible role's `--config /dev/stdin`, see below).
FINE = {("BINFMTD_BINFMT_D", "missing"), ("--config", "FIFO"), ("BINFMTD_CONFIG", "FIFO")}
CASES = [(source, kind) for source in SOURCES for kind in KINDS
         if (source, kind) not in FINE and not (SOURCES[source] == "folder" and kind == "huge")]


def run_with(sandbox: Sandbox, source: str, path: Path, command: tuple[str, ...],
             ) -> subprocess.CompletedProcess[str]:
    if source.startswith("--"):
        return sandbox.run(source, str(path), *command)
    return sandbox.run(*command, env={source: str(path)})


@pytest.mark.parametrize(("source", "kind"), CASES)
def test_every_command_refuses_it_in_one_line(sandbox: Sandbox, tmp_path: Path, source: str,
                                              kind: str) -> None:
    tmp = tmp_path / "bad"
    tmp.mkdir()
    path = KINDS[kind](tmp, SOURCES[source])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda cmd: run_with(sandbox, source, path, cmd), COMMANDS))
    for command, result in zip(COMMANDS, results):
        said = f"{' '.join(command)}: exit {result.returncode}\n{result.stderr}"
        assert result.returncode == 2, said
        assert result.stderr.startswith("binfmtd: ") and result.stderr.count("\n") == 1, said
        assert str(path) in result.stderr and "Traceback" not in result.stderr, said
        assert result.stdout == "", said
    assert sandbox.restarts == []


@pytest.mark.parametrize("source", list(SOURCES))
def test_the_same_source_with_what_belongs_there_works(sandbox: Sandbox, source: str) -> None:
    """The control: each source, named explicitly with a good path, is taken."""
    good = {"--binfmt-misc": sandbox.binfmt_misc, "BINFMTD_BINFMT_MISC": sandbox.binfmt_misc,
            "--nix-conf": sandbox.nix_conf, "BINFMTD_NIX_CONF": sandbox.nix_conf,
            "--config": sandbox.config, "BINFMTD_CONFIG": sandbox.config,
            "BINFMTD_BINFMT_D": sandbox.root}[source]
    result = run_with(sandbox, source, good, ("status",))
    assert result.returncode == 1 and "OUT OF SYNC" in result.stdout, result.stderr


def test_a_config_may_come_from_a_pipe(sandbox: Sandbox) -> None:
    """`--config /dev/stdin`, as the Ansible role checks the config a play would write; a
    FIFO nobody writes to reads as an empty config, never a hang."""
    piped = subprocess.run([*sandbox.command("--config", "/dev/stdin", "status")],
                           input="ignore-platforms = [\"aarch64-linux\"]\n",
                           env=sandbox.environment(), capture_output=True, text=True,
                           timeout=60, check=False)
    assert piped.returncode == 1, piped.stderr
    assert "aarch64-linux is in ignore-platforms" in piped.stdout
    os.mkfifo(sandbox.root / "fifo")
    unwritten = sandbox.run("--config", str(sandbox.root / "fifo"), "status")
    assert unwritten.returncode == 1 and "OUT OF SYNC" in unwritten.stdout, unwritten.stderr
    terminal = sandbox.run("--config", "/dev/null", "status")
    assert terminal.returncode == 2
    assert "/dev/null is a character device, not a file" in terminal.stderr


def test_a_relative_path_means_what_it_means_to_the_shell(sandbox: Sandbox) -> None:
    """`--nix-conf nix.conf` in /etc/nix: that file, read by Nix there."""
    relative = os.path.relpath(sandbox.nix_conf)
    synced = sandbox.run("--nix-conf", relative, "sync")
    assert synced.returncode == 0, synced.stderr
    status = sandbox.run("--nix-conf", relative, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["nix_conf"] == str(sandbox.nix_conf)
    assert report["effective"]["trusted-users"] == "root"  # Nix read that very file


# --- a file binfmtd may not read: as a user who is not root -------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder every user may enter (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="binfmtd-unreadable-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("what", ["nix.conf", "config.toml", "binfmt_misc"])
def test_a_path_binfmtd_may_not_read_is_one_line(open_tmp: Path, what: str) -> None:
    require(os.geteuid() == 0, "running binfmtd as another user needs root")
    require(shutil.which("setpriv") is not None, "setpriv not found (util-linux)")
    paths = {"nix.conf": open_tmp / "nix.conf", "config.toml": open_tmp / "config.toml",
             "binfmt_misc": open_tmp / "binfmt_misc"}
    paths["nix.conf"].write_text("sandbox = true\n")
    paths["config.toml"].write_text("restart = false\n")
    paths["binfmt_misc"].mkdir()
    (paths["binfmt_misc"] / "register").write_text("")
    (paths["binfmt_misc"] / "status").write_text("enabled\n")
    for path in paths.values():
        path.chmod(0o755 if path.is_dir() else 0o644)
    # The system's Python and a copy of binfmtd that nobody may read: the venv's Python
    # and the checkout may sit in root's home.
    require(Path(SYSTEM_PYTHON).exists(), f"{SYSTEM_PYTHON} is missing")
    shutil.copytree(Path(__file__).parents[2] / "binfmtd", open_tmp / "src" / "binfmtd")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(open_tmp / "src"),
           "BINFMTD_NIX_CONF": str(paths["nix.conf"]),
           "BINFMTD_CONFIG": str(paths["config.toml"]),
           "BINFMTD_BINFMT_MISC": str(paths["binfmt_misc"])}
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                 SYSTEM_PYTHON, "-m", "binfmtd", "status"]

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(as_nobody, env=env, capture_output=True, text=True, timeout=60,
                              check=False, cwd=open_tmp)

    control = status()
    assert control.returncode == 0, control.stdout + control.stderr  # readable: fine
    paths[what].chmod(0)
    refused = status()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == f"binfmtd: cannot read {paths[what]}: Permission denied\n"
