"""nix-daemon at the edge: reading systemd's answers, keeping clear of its start limit."""

from __future__ import annotations

import pytest

from binfmtd.config import RestartPolicy
from binfmtd.nixdaemon import (
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
    assert RestartPolicy(unit="nix-daemon.service").argv == (
        "systemctl", "try-restart", "nix-daemon.service")
    assert RestartPolicy(command=("/usr/local/bin/restart-nix", "--now")).argv == (
        "/usr/local/bin/restart-nix", "--now")
    assert RestartPolicy().argv is None and RestartPolicy().never
    assert socket_unit("nix-daemon.service") == "nix-daemon.socket"
    assert socket_unit("my-nix") == "my-nix"
