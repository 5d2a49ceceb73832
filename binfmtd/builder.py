"""This machine as a Nix remote builder: its line for the clients' /etc/nix/machines.

A client sends a build to a builder only for the systems its line lists, so that list
must follow the builder's emulators: the host's own system, and every platform binfmtd
declares that Nix itself reports in effect (a platform in the block but not yet read by
Nix would be offered before the builder can take it).

The line's fields, in Nix's order, `-` for "none" or "the default":
    URI SYSTEMS SSH-KEY MAX-JOBS SPEED-FACTOR SUPPORTED-FEATURES MANDATORY-FEATURES HOST-KEY
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

# The host key a client pins, strongest kind first.
HOST_KEY_FILES = ("ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key.pub", "ssh_host_rsa_key.pub")


class BuilderLine(NamedTuple):
    """One machines-file line, field by field."""

    uri: str
    systems: tuple[str, ...]
    ssh_key: Optional[str]  # on the client; None: its ssh default
    max_jobs: int
    speed_factor: int
    supported_features: tuple[str, ...]
    mandatory_features: tuple[str, ...]
    host_key: Optional[str]  # base64 of `TYPE KEY` from /etc/ssh, as Nix wants it

    def render(self) -> str:
        """The line as Nix reads it."""
        return " ".join([
            self.uri, ",".join(self.systems), self.ssh_key or "-", str(self.max_jobs),
            str(self.speed_factor), ",".join(self.supported_features) or "-",
            ",".join(self.mandatory_features) or "-", self.host_key or "-",
        ])

    def to_json(self) -> dict[str, Any]:
        return {**self._asdict(), "systems": list(self.systems),
                "supported_features": list(self.supported_features),
                "mandatory_features": list(self.mandatory_features), "line": self.render()}


class BuilderOptions(NamedTuple):
    """What the operator says on the command line; None: binfmtd's default."""

    uri: Optional[str] = None
    ssh_key: Optional[str] = None
    max_jobs: Optional[int] = None
    speed_factor: int = 1
    mandatory_features: tuple[str, ...] = ()


def builder_line(host_system: str, declared: Sequence[str], effective: Mapping[str, str],
                 options: BuilderOptions, host_key: Optional[str], hostname: str) -> BuilderLine:
    """The line for this builder, from what Nix reports in effect; pure."""
    in_effect = set(effective.get("extra-platforms", "").split())
    systems = (host_system, *(p for p in declared if p in in_effect and p != host_system))
    return BuilderLine(
        uri=options.uri or f"ssh://root@{hostname}",
        systems=systems,
        ssh_key=options.ssh_key,
        max_jobs=options.max_jobs or _max_jobs(effective.get("max-jobs", "")),
        speed_factor=options.speed_factor,
        supported_features=tuple(effective.get("system-features", "").split()),
        mandatory_features=options.mandatory_features,
        host_key=host_key,
    )


def read_builder_line(host_system: str, declared: Sequence[str], effective: Mapping[str, str],
                      options: Optional[BuilderOptions] = None) -> BuilderLine:
    """This machine's line: builder_line with its own host key and name (None: the
    defaults)."""
    return builder_line(host_system, declared, effective, options or BuilderOptions(),
                        read_host_key(), hostname())


def _max_jobs(setting: str) -> int:
    """Nix's max-jobs: a number, or `auto` for one job per core."""
    return int(setting) if setting.isdigit() and int(setting) > 0 else (os.cpu_count() or 1)


def encode_host_key(pub_text: str) -> Optional[str]:
    """base64 of `TYPE KEY` from an ssh_host_*_key.pub file (its comment left out)."""
    words = pub_text.split()
    if len(words) < 2 or not words[0].startswith(("ssh-", "ecdsa-")):
        return None
    return binascii.b2a_base64(f"{words[0]} {words[1]}".encode(), newline=False).decode()


def read_host_key(folder: Path = Path("/etc/ssh")) -> Optional[str]:
    """This machine's public host key, encoded for the machines file; None without sshd."""
    for name in HOST_KEY_FILES:
        try:
            encoded = encode_host_key((folder / name).read_text(errors="replace"))
        except OSError:
            continue
        if encoded is not None:
            return encoded
    return None


def hostname() -> str:
    """The name clients reach this machine by, as far as it knows itself."""
    return os.uname().nodename
