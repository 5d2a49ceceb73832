"""nix-daemon at the edge: is it running with the current nix.conf, and restart it.

nix-daemon reads nix.conf only when it starts (SIGHUP kills it rather than
reloading), so "does Nix see the new platforms" is "did it start after the write".
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple, Optional

from .config import RestartPolicy
from .errors import BinfmtdError
from .proc import run_program

# Start times derive from the boot time, which /proc/stat gives in whole seconds.
START_TIME_SLACK_SECONDS = 1.0


DEFAULT_CONF_DIR = "/etc/nix"


class DaemonProcess(NamedTuple):
    """The listening nix-daemon (not the per-connection workers it forks)."""

    pid: int
    started: float  # seconds since the epoch
    conf_dir: str  # where it read nix.conf: NIX_CONF_DIR, else /etc/nix


def find_nix_daemons(conf_dir: str, proc: str = "/proc") -> list[DaemonProcess]:
    """Every listening nix-daemon that reads its nix.conf from `conf_dir`.

    Read straight from /proc (comm, stat, environ: three small files per nix-daemon),
    which costs status less than importing a process library would.
    """
    pids = [pid for pid in _numbered(proc) if _comm(proc, pid) == "nix-daemon"]
    found = []
    for pid in pids:
        try:
            ppid, started = _stat(proc, pid)
            environ = _environ(proc, pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        daemon_dir = environ.get("NIX_CONF_DIR", DEFAULT_CONF_DIR)
        if ppid not in pids and _same_folder(daemon_dir, conf_dir):
            found.append(DaemonProcess(pid, started, daemon_dir))
    return found


def _numbered(proc: str) -> list[int]:
    return [int(name) for name in os.listdir(proc) if name.isdigit()]


def _comm(proc: str, pid: int) -> str:
    try:
        with open(f"{proc}/{pid}/comm", "rb") as file:
            return file.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _stat(proc: str, pid: int) -> tuple[int, float]:
    """(parent pid, start time in seconds since the epoch) from /proc/PID/stat."""
    with open(f"{proc}/{pid}/stat", "rb") as file:
        fields = file.read().rsplit(b")", 1)[1].split()
    ticks = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    return int(fields[1]), _boot_time(proc) + ticks


def _boot_time(proc: str) -> float:
    with open(f"{proc}/stat", "rb") as file:
        for line in file:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _environ(proc: str, pid: int) -> dict[str, str]:
    with open(f"{proc}/{pid}/environ", "rb") as file:
        pairs = file.read().decode(errors="replace").split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def _same_folder(one: str, other: str) -> bool:
    return os.path.realpath(one) == os.path.realpath(other)


def started_before(daemon: DaemonProcess, mtime: float) -> bool:
    """True when the daemon surely started before the file last changed."""
    return daemon.started < mtime - START_TIME_SLACK_SECONDS


def systemd_running() -> bool:
    """sd_booted(): is this system managed by systemd right now?"""
    return os.path.isdir("/run/systemd/system")


def restart_nix_daemon(policy: RestartPolicy) -> str:
    """Restart nix-daemon as configured; says what happened, BinfmtdError on failure."""
    argv = policy.argv
    if argv is None:
        return "not restarted (restart = false in config)"
    if policy.unit is not None and not systemd_running():
        return "not restarted: systemd is not running here; restart nix-daemon yourself"
    run_program(list(argv), timeout=120)
    if policy.unit is not None:
        # try-restart of a failed unit does nothing and succeeds: look, rather than trust it.
        failed = failed_units(policy.unit)
        if failed:
            raise BinfmtdError(failed)
    return f"restarted ({' '.join(argv)})"


def socket_unit(unit: str) -> str:
    """nix-daemon.service is started through nix-daemon.socket."""
    return unit[: -len(".service")] + ".socket" if unit.endswith(".service") else unit


def failed_units(unit: str) -> Optional[str]:
    """What is wrong when nix-daemon's service or socket unit has failed, else None.

    systemd's start limit (5 starts in 10 s by default) fails both units for good; every
    Nix client then gets "Connection refused".
    """
    units = [unit, socket_unit(unit)] if socket_unit(unit) != unit else [unit]
    shown = run_program(["systemctl", "show", "--property=Id,ActiveState,Result", *units],
                        check=False, timeout=30).stdout
    failed = [f"{u['Id']} ({u.get('Result', '?')})" for u in parse_show(shown)
              if u.get("ActiveState") == "failed"]
    if not failed:
        return None
    return (f"{', '.join(failed)} failed: Nix is down; bring it back with "
            f"systemctl reset-failed {' '.join(units)} && systemctl start {units[-1]}")


def parse_show(text: str) -> list[dict[str, str]]:
    """`systemctl show` output: one KEY=value block per unit, blank lines between."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, _, value = line.partition("=")
        blocks[-1][key] = value
    return [block for block in blocks if block]


def parse_timespan(text: str) -> Optional[float]:
    """Seconds in a systemd time span as `systemctl show` prints it ("10s", "1min 30s",
    "500ms"); None for "infinity" or what it cannot read."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        if unit not in units and unit != "":
            return None
        total += float(number) * units.get(unit, 1e-6)  # a bare number is microseconds
    return total if text.strip() and text.strip() != "infinity" else None


def start_limit_spacing(interval: Optional[float], burst: int) -> float:
    """The gap between restarts that keeps clear of systemd's start limit (burst starts
    per interval), with one start to spare for socket activation or an admin."""
    if not interval or burst <= 0:
        return 0.0
    return interval / max(1, burst - 2)


def restart_spacing(unit: str) -> float:
    """start_limit_spacing() for this unit, as systemd has it configured now; 0 if unknown."""
    shown = run_program(["systemctl", "show", "--property=StartLimitIntervalUSec,"
                         "StartLimitBurst", unit], check=False, timeout=30).stdout
    values = parse_show(shown)
    if not values:
        return 0.0
    burst = values[0].get("StartLimitBurst", "")
    interval = parse_timespan(values[0].get("StartLimitIntervalUSec", ""))
    return start_limit_spacing(interval, int(burst)) if burst.isdigit() else 0.0
