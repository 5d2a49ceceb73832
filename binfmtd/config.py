"""/etc/binfmtd/config.toml: optional; every key has a default that needs no file.

    nix-conf-target = "auto"        # or a path; auto: binfmtd.conf when nix.conf
                                    # `!include`s it (a templated nix.conf), else
                                    # nix.custom.conf when it includes that
                                    # (Determinate Nix), else nix.conf
    ignore-platforms = []           # systems never to declare, e.g. ["mips-linux"]
    declare-armv6l = true           # an ARM handler also declares armv6l-linux
    declare-i686 = false            # declare i686-linux on an x86_64 host (Nix's own
                                    # default already lists it there)
    restart = "nix-daemon.service"  # a unit to try-restart, a command (a list of
                                    # strings), or false for never
    debounce-seconds = 0.05         # daemon: quiet time before acting on events
    resync-seconds = 600            # daemon: safety-net resync interval
    restart-interval-seconds = 10   # daemon: at most one nix-daemon restart per interval
    emulated-systems = []           # systems `binfmtd register`/`sync` make sure are emulated
    replace-handlers = false        # may binfmtd's registration shadow someone else's
                                    # broken handler for the same system?
    registration-prefix = "binfmtd-"  # names of binfmtd's own entries: PREFIX + system
    sandbox-paths = {}              # system -> paths its builds' sandbox needs besides
                                    # the interpreter (what a dispatcher runs), e.g.
                                    # { "x86_64-linux" = ["/usr/lib/box64-x86_64-linux-gnu"] }
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from stat import S_IWGRP, S_IWOTH
from typing import Any, NamedTuple, Optional

from .emulators import EMULATIONS
from .errors import BinfmtdError
from .files import read_small_file
from .nixconf import unsafe_path_reason
from .platforms import known_systems, unknown_system


class RestartPolicy(NamedTuple):
    """How nix-daemon is restarted: a systemd unit to try-restart, a command, or never."""

    unit: Optional[str] = None
    command: tuple[str, ...] = ()

    @property
    def never(self) -> bool:
        return self.unit is None and not self.command

    @property
    def argv(self) -> Optional[tuple[str, ...]]:
        """The command that restarts nix-daemon; None for never."""
        if self.unit is not None:
            # try-restart: a socket-activated daemon that is not running needs nothing
            return ("systemctl", "try-restart", self.unit)
        return self.command or None


class Config(NamedTuple):
    """binfmtd's settings after defaults are applied."""

    nix_conf_target: str = "auto"
    ignore_platforms: frozenset[str] = frozenset()
    declare_armv6l: bool = True
    declare_i686: bool = False
    restart: RestartPolicy = RestartPolicy(unit="nix-daemon.service")
    debounce_seconds: float = 0.05
    resync_seconds: float = 600.0
    restart_interval_seconds: float = 10.0
    emulated_systems: tuple[str, ...] = ()
    replace_handlers: bool = False
    registration_prefix: str = "binfmtd-"
    # system -> paths the sandbox needs besides what binfmtd finds (a dispatcher's emulators)
    sandbox_paths: tuple[tuple[str, tuple[str, ...]], ...] = ()


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    """A Config from parsed TOML; any unknown key or wrong type is one clear error."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        checker = _CHECKS.get(key)
        if checker is None:
            known = ", ".join(sorted(_CHECKS))
            raise BinfmtdError(f"{source}: unknown key {key!r} (known keys: {known})")
        values[key.replace("-", "_")] = checker(key, value, source)
    return Config(**values)


def _string(key: str, value: Any, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise BinfmtdError(f"{source}: {key} must be a non-empty string, not {value!r}")
    return value


def _boolean(key: str, value: Any, source: str) -> bool:
    if not isinstance(value, bool):
        raise BinfmtdError(f"{source}: {key} must be true or false, not {value!r}")
    return value


def _seconds(key: str, value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BinfmtdError(f"{source}: {key} must be a positive number of seconds, not {value!r}")
    return float(value)


def _string_set(key: str, value: Any, source: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BinfmtdError(f"{source}: {key} must be a list of strings, not {value!r}")
    return frozenset(value)


def _systems(key: str, value: Any, source: str) -> frozenset[str]:
    """Nix system names; a typo is an error that names the closest known system."""
    systems = _string_set(key, value, source)
    known = known_systems()
    for system in sorted(systems):
        unknown = unknown_system(system, known)
        if unknown is not None:
            raise BinfmtdError(f"{source}: {key}: {unknown}")
    return systems


def _emulated_systems(key: str, value: Any, source: str) -> tuple[str, ...]:
    """Systems binfmtd registers an emulator for; the host's own may be listed (one list
    for a whole fleet of machines), and is then left alone where it runs natively."""
    systems = sorted(_systems(key, value, source))
    for system in systems:
        if system not in EMULATIONS:
            raise BinfmtdError(f"{source}: {key}: binfmtd cannot register {system} (it can: "
                               f"{' '.join(sorted(EMULATIONS))})")
    return tuple(systems)


def _sandbox_paths(key: str, value: Any, source: str
                   ) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A table: system -> absolute paths Nix can take in extra-sandbox-paths."""
    if not isinstance(value, dict):
        raise BinfmtdError(f"{source}: {key} must be a table of systems, e.g. "
                           '{ "x86_64-linux" = ["/usr/lib/box64"] }, not ' f"{value!r}")
    _systems(key, list(value), source)
    checked = []
    for system, paths in sorted(value.items()):
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise BinfmtdError(f"{source}: {key}.{system} must be a list of paths, not "
                               f"{paths!r}")
        for path in paths:
            unsafe = unsafe_path_reason(path)
            if unsafe:
                raise BinfmtdError(f"{source}: {key}.{system}: {path!r} {unsafe}")
        checked.append((system, tuple(paths)))
    return tuple(checked)


def _restart(key: str, value: Any, source: str) -> RestartPolicy:
    if value is False:
        return RestartPolicy()
    if isinstance(value, str) and value:
        return RestartPolicy(unit=value)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return RestartPolicy(command=tuple(value))
    raise BinfmtdError(
        f"{source}: {key} must be a unit name, a command as a list of strings, "
        f"or false, not {value!r}"
    )


_CHECKS = {
    "nix-conf-target": _string,
    "ignore-platforms": _systems,
    "declare-armv6l": _boolean,
    "declare-i686": _boolean,
    "restart": _restart,
    "debounce-seconds": _seconds,
    "resync-seconds": _seconds,
    "restart-interval-seconds": _seconds,
    "emulated-systems": _emulated_systems,
    "replace-handlers": _boolean,
    "registration-prefix": _string,
    "sandbox-paths": _sandbox_paths,
}
KEYS = tuple(_CHECKS)  # every key config.toml takes


def refuse_unsafe_owner(path: Path, stat: os.stat_result, euid: int) -> None:
    """Like sshd's StrictModes: whoever may write the config may steer a root daemon.

    The file must belong to root (or to the user running binfmtd, for trials on copies)
    and must not be writable by its group or by others.
    """
    if stat.st_uid not in (0, euid):
        raise BinfmtdError(f"{path}: owned by uid {stat.st_uid}, not root: refused "
                           f"(chown root {path})")
    if stat.st_mode & (S_IWGRP | S_IWOTH):
        raise BinfmtdError(f"{path}: writable by group or others: refused (chmod go-w {path})")


CONFIG_HINT = "binfmtd's config.toml belongs there (/etc/binfmtd/config.toml)"


def read_config(path: Path, *, required: bool) -> Config:
    """Read config.toml; a missing file means defaults unless the user named it."""
    found = read_small_file(path, CONFIG_HINT, pipe_ok=True)  # --config /dev/stdin
    if found is None:
        if required:
            raise BinfmtdError(f"{path}: no such file (check --config or BINFMTD_CONFIG)")
        return Config()
    refuse_unsafe_owner(path, found.stat, os.geteuid())
    try:
        text = found.data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BinfmtdError(f"{path}: not valid TOML: {error}") from error
    if all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        return Config()  # the packaged file is all comments: no TOML parser needed
    return parse_config(_parse_toml(text, path), str(path))


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        import tomli as tomllib
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise BinfmtdError(f"{path}: not valid TOML: {error}") from error
    return data
