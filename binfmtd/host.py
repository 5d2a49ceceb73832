"""Where things are on this host, as the command line, the environment or the defaults say.

Every path is made absolute (a relative one means what it meant to the shell) and checked
to be what it should be before any command runs: a folder for binfmt_misc, a file for
nix.conf. Only cli builds a Host; tests point one at copies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Optional

from .files import check_file, check_folder
from .platforms import also_native, host_system

PER_LINUX32 = 0x0008
PERSONALITY_QUERY = 0xFFFFFFFF

DEFAULT_CONFIG = "/etc/binfmtd/config.toml"
DEFAULT_BINFMT_MISC = "/proc/sys/fs/binfmt_misc"
DEFAULT_NIX_CONF = "/etc/nix/nix.conf"
DEFAULT_BINFMT_D = "/etc/binfmt.d"


class Host(NamedTuple):
    """Where things are, and the host's own Nix system: what the command line tells
    binfmtd, as config.toml tells it the rest."""

    system: str  # the host's own Nix system, e.g. x86_64-linux
    binfmt_misc: Path  # /proc/sys/fs/binfmt_misc
    nix_conf: Path  # /etc/nix/nix.conf
    config: Path  # /etc/binfmtd/config.toml
    binfmt_d: Path  # /etc/binfmt.d: where `register` leaves its lines for systemd-binfmt
    config_required: bool = False  # the user named the config file: it must exist
    also_native: tuple[str, ...] = ()  # what else it runs with no emulator (i686-linux)


class Named(NamedTuple):
    """The paths the command line gives (None: not given there)."""

    binfmt_misc: Optional[str] = None
    nix_conf: Optional[str] = None
    config: Optional[str] = None


def find_host(named: Named, environ: Mapping[str, str] = os.environ) -> Host:
    """Paths from options, else BINFMTD_* variables, else the defaults, each checked."""
    def path(given: Optional[str], option: str, variable: str,
             default: str) -> tuple[Path, str]:
        """The absolute path named, and what named it ("" for the default)."""
        if given:
            return Path(os.path.abspath(given)), option
        if environ.get(variable):
            return Path(os.path.abspath(environ[variable])), variable
        return Path(default), ""

    binfmt_misc, binfmt_misc_from = path(named.binfmt_misc, "--binfmt-misc",
                                         "BINFMTD_BINFMT_MISC", DEFAULT_BINFMT_MISC)
    nix_conf, nix_conf_from = path(named.nix_conf, "--nix-conf", "BINFMTD_NIX_CONF",
                                   DEFAULT_NIX_CONF)
    config, config_from = path(named.config, "--config", "BINFMTD_CONFIG", DEFAULT_CONFIG)
    binfmt_d, binfmt_d_from = path(None, "", "BINFMTD_BINFMT_D", DEFAULT_BINFMT_D)
    check_folder(binfmt_misc, _hint(binfmt_misc_from, "binfmt_misc's folder",
                                    DEFAULT_BINFMT_MISC), must_exist=bool(binfmt_misc_from))
    # A nix.conf may be missing (sync makes it), but Nix reads no file of another name.
    check_file(nix_conf, _hint(nix_conf_from, "the nix.conf Nix reads", DEFAULT_NIX_CONF),
               must_exist=bool(nix_conf_from) and nix_conf.name != "nix.conf")
    check_file(config, _hint(config_from, "binfmtd's config.toml", DEFAULT_CONFIG),
               must_exist=bool(config_from), pipe_ok=True)  # --config /dev/stdin
    check_folder(binfmt_d, _hint(binfmt_d_from, "the folder of binfmt.d lines",
                                 DEFAULT_BINFMT_D), must_exist=False)
    system = host_system(os.uname().machine)
    return Host(system=system, binfmt_misc=binfmt_misc, nix_conf=nix_conf, config=config,
                binfmt_d=binfmt_d, config_required=bool(config_from),
                also_native=also_native(system, runs_32bit(system)))


def _hint(source: str, names: str, default: str) -> str:
    """What belongs at a path, and where it was named, for an error about it."""
    named = f"{source} names {names}" if source else f"{names} is here by default"
    return f"{named} (default {default})"


def runs_32bit(system: str) -> bool:
    """Whether the kernel runs 32-bit programs of the host's family, as it says itself.

    An aarch64 CPU may have no AArch32 (Apple's, AmpereOne): the kernel then
    refuses the 32-bit personality (arm64's personality(2) checks the CPU's AArch32 EL0),
    so asking for it, and putting the old one back, is the answer; `uname -m` says
    aarch64 either way. x86_64 kernels are taken to run i686, as Nix itself takes them.
    """
    if system != "aarch64-linux":
        return True
    import ctypes  # aarch64 hosts only

    libc = ctypes.CDLL(None, use_errno=True)
    previous = libc.personality(PERSONALITY_QUERY)
    if libc.personality(PER_LINUX32) == -1:
        return False
    libc.personality(previous)
    return True
