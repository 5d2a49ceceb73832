"""nix-daemon at the edge: reading systemd's answers, keeping clear of its start limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from binfmtd.config import RestartPolicy
from binfmtd.nixdaemon import (
    DaemonProcess,
    find_nix_daemons,
    parse_show,
    parse_timespan,
    socket_unit,
    start_limit_spacing,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1min 30s", 90.0), ("500ms", 0.5), ("2h", 7200.0), ("0", 0.0),
     ("infinity", None), ("", None), ("3 fortnights", None)],
)
def test_systemd_time_spans(text: str, seconds: float | None) -> None:
    assert parse_timespan(text) == seconds


def test_restarts_keep_one_start_to_spare_under_the_start_limit() -> None:
    # systemd's default, 5 starts in 10 s: at most 4 by binfmtd in any 10 s window
    assert start_limit_spacing(10.0, 5) == pytest.approx(10 / 3)
    assert start_limit_spacing(None, 5) == 0.0  # StartLimitIntervalSec=0: no limit
    assert start_limit_spacing(10.0, 0) == 0.0
    assert start_limit_spacing(10.0, 1) == 10.0


def test_systemctl_show_blocks() -> None:
    shown = ("Id=nix-daemon.service\nActiveState=failed\nResult=start-limit-hit\n\n"
             "Id=nix-daemon.socket\nActiveState=failed\nResult=service-start-limit-hit\n")
    assert parse_show(shown) == [
        {"Id": "nix-daemon.service", "ActiveState": "failed", "Result": "start-limit-hit"},
        {"Id": "nix-daemon.socket", "ActiveState": "failed",
         "Result": "service-start-limit-hit"},
    ]


def test_restart_commands() -> None:
    """A unit's restart is proven in a booted systemd (tests/system/
    test_nix_daemon_edges.py: one stopped on purpose stays stopped), not by its argv."""
    assert RestartPolicy(command=("/usr/local/bin/restart-nix", "--now")).argv == (
        "/usr/local/bin/restart-nix", "--now")
    assert RestartPolicy().argv is None and RestartPolicy().never
    assert socket_unit("nix-daemon.service") == "nix-daemon.socket"
    assert socket_unit("my-nix") == "my-nix"


def fake_process(proc: Path, pid: int, comm: str, ppid: int, start_ticks: int,
                 environ: dict[str, str]) -> None:
    """A /proc/PID as the kernel lays it out: comm, stat (comm may hold spaces and
    parentheses) and NUL-separated environ."""
    folder = proc / str(pid)
    folder.mkdir()
    (folder / "comm").write_text(comm + "\n")
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start_ticks)] + ["0"] * 30
    (folder / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")
    (folder / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0"
                                              for k, v in environ.items()))


def test_listening_nix_daemons_are_found_by_their_conf_dir_and_workers_are_not(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    (proc / "self").mkdir()  # not a process number
    ticks = os.sysconf("SC_CLK_TCK")
    fake_process(proc, 100, "nix-daemon", 1, 5 * ticks, {"PATH": "/bin"})
    fake_process(proc, 101, "nix-daemon", 100, 9 * ticks, {"PATH": "/bin"})  # a worker
    fake_process(proc, 200, "nix-daemon", 1, 7 * ticks, {"NIX_CONF_DIR": str(tmp_path)})
    fake_process(proc, 300, "sshd (x)", 1, 1, {})
    assert find_nix_daemons("/etc/nix", proc=str(proc)) == [
        DaemonProcess(100, 1700000005.0, "/etc/nix")]
    assert find_nix_daemons(str(tmp_path), proc=str(proc)) == [
        DaemonProcess(200, 1700000007.0, str(tmp_path))]


def test_this_machines_own_proc_reads_without_error() -> None:
    """The real /proc: every process is read or skipped, none raises."""
    assert all(d.started > 0 for d in find_nix_daemons("/etc/nix"))
