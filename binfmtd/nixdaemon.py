"""nix-daemon at the edge: is it running with the current nix.conf, and restart it.

nix-daemon reads nix.conf only when it starts (SIGHUP kills it rather than
reloading), so "does Nix see the new platforms" is "did it start after the write".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .config import RestartPolicy
from .proc import run_program

# psutil derives start times from the boot time, which /proc/stat gives in whole seconds.
START_TIME_SLACK_SECONDS = 1.0


DEFAULT_CONF_DIR = "/etc/nix"


@dataclass(frozen=True)
class DaemonProcess:
    """The listening nix-daemon (not the per-connection workers it forks)."""

    pid: int
    started: float  # seconds since the epoch
    conf_dir: str  # where it read nix.conf: NIX_CONF_DIR, else /etc/nix


def find_nix_daemons(conf_dir: str) -> list[DaemonProcess]:
    """Every listening nix-daemon that reads its nix.conf from `conf_dir`."""
    import psutil  # imported here: only status and restarts need it

    found = []
    for process in psutil.process_iter(["name", "ppid", "create_time"]):
        info = process.info
        if info["name"] != "nix-daemon":
            continue
        try:
            parent_name = psutil.Process(info["ppid"]).name() if info["ppid"] else ""
            environ = process.environ()
        except psutil.Error:
            continue
        daemon_dir = environ.get("NIX_CONF_DIR", DEFAULT_CONF_DIR)
        if parent_name != "nix-daemon" and _same_folder(daemon_dir, conf_dir):
            found.append(DaemonProcess(process.pid, info["create_time"], daemon_dir))
    return found


def _same_folder(one: str, other: str) -> bool:
    return os.path.realpath(one) == os.path.realpath(other)


def started_before(daemon: DaemonProcess, mtime: float) -> bool:
    """True when the daemon surely started before the file last changed."""
    return daemon.started < mtime - START_TIME_SLACK_SECONDS


def systemd_running() -> bool:
    """sd_booted(): is this system managed by systemd right now?"""
    return os.path.isdir("/run/systemd/system")


def restart_argv(policy: RestartPolicy) -> Optional[list[str]]:
    """The command that restarts nix-daemon under this policy; None for never."""
    if policy is None:
        return None
    if isinstance(policy, str):
        # try-restart: a socket-activated daemon that is not running needs nothing
        return ["systemctl", "try-restart", policy]
    return list(policy)


def restart_nix_daemon(policy: RestartPolicy) -> str:
    """Restart nix-daemon as configured; says what happened, BinfmtdError on failure."""
    argv = restart_argv(policy)
    if argv is None:
        return "not restarted (restart = false in config)"
    if isinstance(policy, str) and not systemd_running():
        return "not restarted: systemd is not running here; restart nix-daemon yourself"
    run_program(argv, timeout=120)
    return f"restarted ({' '.join(argv)})"
