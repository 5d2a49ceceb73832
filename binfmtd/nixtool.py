"""Ask Nix itself: does it accept a nix.conf, and what settings result from it?"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple, Optional

from .errors import BinfmtdError
from .files import remove_folder
from .proc import run_program, start_program

if TYPE_CHECKING:  # status asks Nix before pathlib, re and the rest are imported
    from collections.abc import Mapping, Sequence

    from .proc import Running

EXPERIMENTAL = ["--extra-experimental-features", "nix-command"]
# Nix 2.8 has `nix show-config`; newer Nix calls it `nix config show`.
SHOW_CONFIG_COMMANDS = (["show-config"], ["config", "show"])


# Where installers put `nix` when it is not on PATH (systemd's and sudo's PATH lack them).
UPSTREAM_PROFILE_BIN = "/nix/var/nix/profiles/default/bin"  # the upstream/Determinate installers
ROOT_PROFILE_BIN = "/root/.nix-profile/bin"  # a single-user install by root
NIX_DAEMON_UNIT = "nix-daemon.service"


def find_nix(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The `nix` program: on PATH, else beside nix-daemon.service's ExecStart, else in the
    upstream installer's default profile, else in root's own profile; None if none."""
    on_path = environ.get("PATH", os.defpath).split(os.pathsep)
    return (_program_in("nix", on_path)
            or _program_in("nix", (*_unit_folders(), UPSTREAM_PROFILE_BIN, ROOT_PROFILE_BIN)))


def _program_in(name: str, folders: Sequence[str]) -> Optional[str]:
    """The first executable `name` in `folders` (shutil.which, without importing shutil
    for `binfmtd status`)."""
    for folder in folders:
        candidate = os.path.join(folder or os.curdir, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _unit_folders() -> tuple[str, ...]:
    """The folder of nix-daemon.service's ExecStart, where systemd runs and knows it."""
    if not os.path.isdir("/run/systemd/system"):
        return ()
    try:
        shown = run_program(["systemctl", "show", "--property=ExecStart", NIX_DAEMON_UNIT],
                            check=False, timeout=10).stdout
    except BinfmtdError:  # no systemctl, or it hangs: then systemd cannot tell us
        return ()
    path = exec_start_path(shown)
    return (os.path.dirname(path),) if path else ()


def exec_start_path(shown: str) -> Optional[str]:
    """The program of `systemctl show -p ExecStart` output:
    `ExecStart={ path=/nix/var/nix/profiles/default/bin/nix-daemon ; argv[]=... }`."""
    for field in shown.replace("{", " ").replace("}", " ").split(";"):
        key, _, value = field.strip().partition("=")
        if key == "ExecStart" and value.strip().startswith("path="):
            key, _, value = value.strip().partition("=")
        if key == "path" and value.strip().startswith("/"):
            return value.strip()
    return None


def version_argv(nix: str) -> list[str]:
    return [nix, "--version"]


def parse_version(output: str) -> Optional[str]:
    """`nix (Nix) 2.8.0` -> 2.8.0; Determinate prints `nix (Determinate Nix 3.8.2) 2.30.1`."""
    words = output.split()
    return words[-1] if words and words[-1][:1].isdigit() else None


def nix_version(nix: str) -> Optional[str]:
    """What `nix --version` says, e.g. 2.8.0; None when it cannot tell."""
    try:
        return parse_version(run_program(version_argv(nix), check=False, timeout=10).stdout)
    except BinfmtdError:
        return None


def nix_install_hint(os_release: str) -> str:
    """How to install Nix on this distribution (from /etc/os-release's ID and ID_LIKE)."""
    ids: set[str] = set()
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip('"').split())
    if ids & {"debian", "ubuntu"}:
        return "apt-get install nix-bin"
    if ids & {"fedora", "rhel", "centos"}:
        return "dnf install nix-daemon"
    return "install Nix with its own installer (nixos.org/download)"


def read_nix_install_hint() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8", errors="replace") as file:
            return nix_install_hint(file.read())
    except OSError:
        return nix_install_hint("")


def show_config_argv(nix: str, command: list[str]) -> list[str]:
    return [nix, *EXPERIMENTAL, *command]


class Staged(NamedTuple):
    """A temp folder laid out for Nix, and the real file each copy in it stands for."""

    folder: str
    names: dict[str, str]  # path of a copy -> the path of the file it stands for


class NixReading:
    """`nix show-config` under way for the nix.conf in one folder (no user files), and
    on request `nix --version` beside it.

    `status` starts it before anything else, so that Nix's ~30 ms run beside binfmtd's
    own start-up.
    """

    def __init__(self, nix: str, conf_dir: str, staged: Optional[Staged] = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NIX_CONFIG"}
        env.update(NIX_CONF_DIR=conf_dir, NIX_USER_CONF_FILES="/dev/null")
        self.nix, self.conf_dir, self._env, self._staged = nix, conf_dir, env, staged
        self._first = start_program(show_config_argv(nix, SHOW_CONFIG_COMMANDS[0]), env=env)
        self._version: Optional[Running] = None

    def ask_version(self) -> None:
        """Start `nix --version` as well. Not together with show-config: each Nix start
        costs ~30 ms of CPU, and on two cores binfmtd's own start-up needs the other."""
        if self._version is None:
            self._version = start_program(version_argv(self.nix), env=self._env)

    def version(self) -> Optional[str]:
        """What `nix --version` says, e.g. 2.8.0; None when not asked or not understood."""
        if self._version is None:
            return None
        try:
            return parse_version(self._version.wait(check=False).stdout)
        except BinfmtdError:
            return None

    def result(self) -> dict[str, str]:
        """The settings Nix derives; BinfmtdError when it rejects the file. Where Nix read
        a staged copy, the copies' paths (`builders = @<folder>/machines`) name the real
        files again."""
        try:
            return parse_show_config(self._unstaged(self._output()))
        finally:
            self._remove_staged()

    def _unstaged(self, text: str) -> str:
        """`text` with each staged copy's path, and the staged folder, replaced by the real."""
        if self._staged is None:
            return text
        for copy, real in self._staged.names.items():  # the copies, then their folder
            text = text.replace(copy, real)
        return text

    def close(self) -> None:
        """Stop what nobody waited for (a command that ended before it asked)."""
        for running in (self._first, self._version):
            if running is not None:
                running.stop()
        self._remove_staged()

    def _remove_staged(self) -> None:
        if self._staged is not None:
            remove_folder(self._staged.folder)
            self._staged = None

    def _output(self) -> str:
        result = self._first.wait(check=False)
        for command in SHOW_CONFIG_COMMANDS[1:]:
            if result.returncode == 0 or not _unknown_command(result.stderr):
                break
            result = run_program(show_config_argv(self.nix, command), check=False,
                                 env=self._env, timeout=30)
        if result.returncode == 0:
            return result.stdout
        if _unknown_command(result.stderr):
            raise BinfmtdError("this Nix has neither `nix show-config` nor `nix config show`")
        said = self._unstaged(_last_error(result.stderr))  # the admin's files, not copies
        raise BinfmtdError(f"Nix rejects it: {said}")


def read_in_place(nix_conf: str) -> Optional[NixReading]:
    """Nix's reading of `nix_conf` as it stands, where Nix reads it in place (a file named
    nix.conf, its folder given as NIX_CONF_DIR, as nix-daemon reads it); None where the
    file has another name (start_reading stages it) or Nix is not installed."""
    if os.path.basename(nix_conf) != "nix.conf":
        return None
    nix = find_nix()
    return NixReading(nix, os.path.dirname(nix_conf) or os.curdir) if nix else None


def _unknown_command(stderr: str) -> bool:
    return "recognised command" in stderr or "recognized command" in stderr


def _last_error(stderr: str) -> str:
    """Nix's last error line, without its colours (Nix colours some even into a pipe)."""
    import re

    stderr = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", stderr)
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
