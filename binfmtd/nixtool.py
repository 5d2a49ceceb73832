"""Ask Nix itself: does it accept a nix.conf, and what settings result from it?"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from .errors import BinfmtdError
from .nixconf import included_files
from .proc import run_program

EXPERIMENTAL = ["--extra-experimental-features", "nix-command"]
# Nix 2.8 has `nix show-config`; newer Nix calls it `nix config show`.
SHOW_CONFIG_COMMANDS = (["show-config"], ["config", "show"])
INSTALL_NIX = "apt-get install nix-bin (Debian/Ubuntu) or dnf install nix-daemon (Fedora)"


def find_nix() -> Optional[str]:
    """The `nix` program, or None where Nix is not installed."""
    return shutil.which("nix")


def show_config_argv(nix: str, command: list[str]) -> list[str]:
    return [nix, *EXPERIMENTAL, *command]


def read_effective_settings(nix: str, conf_dir: Path) -> dict[str, str]:
    """The settings Nix derives from the nix.conf in `conf_dir` (no user files)."""
    env = {k: v for k, v in os.environ.items() if k != "NIX_CONFIG"}
    env.update(NIX_CONF_DIR=str(conf_dir), NIX_USER_CONF_FILES="/dev/null")
    output = _show_config(nix, env)
    return parse_show_config(output)


def _show_config(nix: str, env: Mapping[str, str]) -> str:
    for command in SHOW_CONFIG_COMMANDS:
        result = run_program(show_config_argv(nix, command), check=False, env=env, timeout=30)
        if result.returncode == 0:
            return result.stdout
        if "recognised command" not in result.stderr and "recognized command" not in result.stderr:
            raise BinfmtdError(f"Nix rejects it: {_last_error(result.stderr)}")
    raise BinfmtdError("this Nix has neither `nix show-config` nor `nix config show`")


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
    """Nix's effective settings with `candidate` in place of `managed`; BinfmtdError if rejected.

    The files go into a temp folder laid out like the real one: the main nix.conf
    (or the candidate, when it is the main file) and the siblings it includes.
    """
    with tempfile.TemporaryDirectory(prefix="binfmtd-validate-") as folder:
        staged = Path(folder)
        siblings = [n for n in included_files(main_text) if "/" not in n]
        if managed == main_conf or managed.name not in siblings:
            main_text, siblings = candidate, []  # the candidate stands alone
        _stage(staged / "nix.conf", main_text)
        for name in siblings:
            if main_conf.parent / name == managed:
                _stage(staged / name, candidate)
            elif (main_conf.parent / name).exists():
                os.symlink(main_conf.parent / name, staged / name)
        return read_effective_settings(nix, staged)


def _stage(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
