"""Shell completions, as the packages install them (python3 -m binfmtd.completions SHELL),
completing in the real shells from Debian: bash and fish complete a command, an option,
an option's value and a global option given after the command; zsh takes the file as a
completion function for binfmtd."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from binfmtd.cli import COMMANDS
from tests.support.parts import require

# (the words typed so far, the last one unfinished; what must be among the completions)
CASES = [
    ("binfmtd sta", {"status"}),
    ("binfmtd ", set(COMMANDS)),
    ("binfmtd sync --ch", {"--check"}),
    ("binfmtd register aarch", {"aarch64-linux"}),
    ("binfmtd run --log-format j", {"json", "journal"}),
    ("binfmtd status --nix-c", {"--nix-conf"}),
]


def completion_file(shell: str, folder: Path) -> Path:
    written = folder / f"binfmtd.{shell}"
    written.write_text(subprocess.run(
        [sys.executable, "-m", "binfmtd.completions", shell], capture_output=True, text=True,
        check=True).stdout)
    return written


def bash_completes(script: Path, line: str, cwd: Path) -> set[str]:
    """What bash offers for `line`, the way it calls the function on TAB."""
    words = line + ("''" if line.endswith(" ") else "")  # an empty word being typed
    program = (f"source {script}\nCOMP_WORDS=({words})\n"
               'COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n_binfmtd\n'
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], cwd=cwd,
                          capture_output=True, text=True, check=True, timeout=30)
    return set(done.stdout.split())


def fish_completes(script: Path, line: str, cwd: Path) -> set[str]:
    done = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"],
                          cwd=cwd, capture_output=True, text=True, check=True, timeout=30)
    return {row.split("\t")[0] for row in done.stdout.splitlines()}


@pytest.mark.parametrize("shell", ["bash", "fish"])
@pytest.mark.parametrize("line,wanted", CASES, ids=[c[0] for c in CASES])
def test_the_shell_completes(tmp_path: Path, shell: str, line: str, wanted: set[str]) -> None:
    require(shutil.which(shell) is not None, f"{shell} is not installed")
    completes = {"bash": bash_completes, "fish": fish_completes}[shell]
    offered = completes(completion_file(shell, tmp_path), line, tmp_path)
    assert wanted <= offered, offered
    # and not everything: what is offered fits what was typed
    typed = line.split(" ")[-1]
    assert all(word.startswith(typed) for word in offered), offered


@pytest.mark.parametrize("shell", ["bash", "fish"])
def test_a_path_option_completes_files(tmp_path: Path, shell: str) -> None:
    require(shutil.which(shell) is not None, f"{shell} is not installed")
    (tmp_path / "nix.conf").write_text("")
    completes = {"bash": bash_completes, "fish": fish_completes}[shell]
    script = completion_file(shell, tmp_path)
    assert "nix.conf" in completes(script, "binfmtd --nix-conf ni", tmp_path)
    assert completes(script, "binfmtd builder-line --uri ni", tmp_path) == set()  # not a file


def test_zsh_takes_it_as_binfmtds_completion_function(tmp_path: Path) -> None:
    """zsh reads the file (no syntax error) and compinit binds it to binfmtd, as it does
    from /usr/share/zsh/vendor-completions. Shortcut: zsh's completion is not driven key by
    key here (that takes a zpty); bash and fish above are."""
    require(shutil.which("zsh") is not None, "zsh is not installed")
    folder = tmp_path / "functions"
    folder.mkdir()
    completion_file("zsh", tmp_path).rename(folder / "_binfmtd")
    subprocess.run(["zsh", "-n", str(folder / "_binfmtd")], check=True, timeout=30)
    done = subprocess.run(
        ["zsh", "-f", "-c", f"fpath=({folder} $fpath); autoload -Uz compinit; "
         f"compinit -u -d {tmp_path}/zcompdump; print -r -- $_comps[binfmtd]"],
        capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "_binfmtd", done.stdout + done.stderr
