"""Ask Nix itself: does it accept a nix.conf, and what settings result from it?"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from .errors import BinfmtdError
from .nixconf import included_files
from .proc import run_program, start_program

EXPERIMENTAL = ["--extra-experimental-features", "nix-command"]
# Nix 2.8 has `nix show-config`; newer Nix calls it `nix config show`.
SHOW_CONFIG_COMMANDS = (["show-config"], ["config", "show"])
INSTALL_NIX = "apt-get install nix-bin (Debian/Ubuntu) or dnf install nix-daemon (Fedora)"


def find_nix() -> Optional[str]:
    """The `nix` program, or None where Nix is not installed."""
    return shutil.which("nix")


def show_config_argv(nix: str, command: list[str]) -> list[str]:
    return [nix, *EXPERIMENTAL, *command]


class NixReading:
    """`nix show-config` under way for the nix.conf in one folder (no user files).

    `status` starts it before reading binfmt_misc, so Nix's ~20 ms overlap binfmtd's own.
    """

    def __init__(self, nix: str, conf_dir: Path, staged: Optional[Path] = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NIX_CONFIG"}
        env.update(NIX_CONF_DIR=str(conf_dir), NIX_USER_CONF_FILES="/dev/null")
        self._nix, self._env, self._staged = nix, env, staged
        self._first = start_program(show_config_argv(nix, SHOW_CONFIG_COMMANDS[0]), env=env)

    def result(self) -> dict[str, str]:
        """The settings Nix derives; BinfmtdError when it rejects the file."""
        try:
            return parse_show_config(self._output())
        finally:
            if self._staged is not None:
                shutil.rmtree(self._staged, ignore_errors=True)

    def _output(self) -> str:
        result = self._first.wait(check=False)
        for command in SHOW_CONFIG_COMMANDS[1:]:
            if result.returncode == 0 or not _unknown_command(result.stderr):
                break
            result = run_program(show_config_argv(self._nix, command), check=False,
                                 env=self._env, timeout=30)
        if result.returncode == 0:
            return result.stdout
        if _unknown_command(result.stderr):
            raise BinfmtdError("this Nix has neither `nix show-config` nor `nix config show`")
        raise BinfmtdError(f"Nix rejects it: {_last_error(result.stderr)}")


def _unknown_command(stderr: str) -> bool:
    return "recognised command" in stderr or "recognized command" in stderr


def read_effective_settings(nix: str, conf_dir: Path) -> dict[str, str]:
    """The settings Nix derives from the nix.conf in `conf_dir` (no user files)."""
    return NixReading(nix, conf_dir).result()


def start_reading(nix: str, main_conf: Path, managed: Path, text: str,
                  main_text: str) -> NixReading:
    """Ask Nix about the files as they would be with `text` in `managed`.

    The files go into a temp folder laid out like the real one: the main nix.conf (or
    the text, when it is the main file) and the siblings it includes.
    """
    import tempfile  # only a staged reading needs it: status reads the real folder

    staged = Path(tempfile.mkdtemp(prefix="binfmtd-validate-"))
    try:
        siblings = [n for n in included_files(main_text) if "/" not in n]
        if managed == main_conf or managed.name not in siblings:
            main_text, siblings = text, []  # the text stands alone
        _stage(staged / "nix.conf", main_text)
        for name in siblings:
            if main_conf.parent / name == managed:
                _stage(staged / name, text)
            elif (main_conf.parent / name).exists():
                os.symlink(main_conf.parent / name, staged / name)
        return NixReading(nix, staged, staged=staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    return (errors or lines or ["no message"])[-1]


def parse_show_config(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            settings[key.strip()] = value.strip()
    return settings


def validate_candidate(
    nix: str, main_conf: Path, managed: Path, candidate: str, main_text: str
) -> dict[str, str]:
    """Nix's effective settings with `candidate` in place of `managed`; BinfmtdError if rejected."""
    return start_reading(nix, main_conf, managed, candidate, main_text).result()


def _stage(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
