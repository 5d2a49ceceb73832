"""The daemon's small pure rules: status line, back-off, watchdog, journal fields."""

from __future__ import annotations

import os

from binfmtd.daemon import emulated_status, restart_backoff, watchdog_interval
from binfmtd.log import journal_fields, pick_format


def test_status_line_names_what_is_emulated() -> None:
    assert emulated_status(()) == "nothing emulated"
    assert emulated_status(("aarch64-linux", "riscv64-linux")) == (
        "2 emulated: aarch64-linux riscv64-linux")


def test_back_off_doubles_and_is_capped() -> None:
    assert [restart_backoff(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert restart_backoff(20) == 300.0


def test_watchdog_interval_is_half_of_what_systemd_asked_and_only_for_us() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "300000000"}) == 150.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0


def test_journal_fields_are_searchable_and_the_message_reads_well() -> None:
    fields = journal_fields({"event": "nixconf.written", "level": "info",
                             "platforms": ("aarch64-linux", "riscv64-linux"),
                             "path": "/etc/nix/nix.conf"})
    assert fields["MESSAGE"] == ("nixconf.written platforms=aarch64-linux riscv64-linux "
                                 "path=/etc/nix/nix.conf")
    assert fields["PLATFORMS"] == "aarch64-linux riscv64-linux"
    assert fields["BINFMTD_EVENT"] == "nixconf.written" and fields["PRIORITY"] == "6"


def test_auto_log_format_follows_the_journal_stream() -> None:
    assert pick_format("auto", {"JOURNAL_STREAM": "8:1234"}) == "journal"
    assert pick_format("auto", {}) == "console"
    assert pick_format("json", {"JOURNAL_STREAM": "8:1234"}) == "json"
