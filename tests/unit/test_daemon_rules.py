"""The daemon's pure rules: when to reconcile and restart (binfmtd.daemon.rules, on made-up
times), and the status line, watchdog and journal fields."""

from __future__ import annotations

import os
import re

import pytest

from binfmtd.daemon.log import EVENTS, journal_fields, pick_format, use_colour
from binfmtd.daemon.loop import emulated_status, watchdog_interval
from binfmtd.daemon.rules import Action, Rules, Timing, restart_backoff

RECONCILE, RESTART, WATCHDOG = Action.RECONCILE, Action.RESTART, Action.WATCHDOG
TIMING = Timing(debounce=0.05, restart_gap=10.0, resync=600.0)


def started(timing: Timing = TIMING, now: float = 0.0) -> Rules:
    """Rules right after the daemon's first reconcile, which wrote nothing."""
    rules = Rules(timing, now)
    rules.reconciled(now, restart=False)
    return rules


def test_idle_means_nothing_due_and_no_wake_up_before_the_resync() -> None:
    rules = started()
    assert rules.due(1.0) == ()
    assert rules.timeout(1.0) == pytest.approx(599.0)


def test_an_event_is_acted_on_after_the_debounce_and_not_before() -> None:
    rules = started()
    rules.changed(1.0)
    assert rules.due(1.04) == ()
    assert rules.timeout(1.0) == pytest.approx(0.05)
    assert rules.due(1.05) == (RECONCILE,)


def test_each_event_in_a_burst_pushes_the_reconcile_out() -> None:
    rules = started()
    for t in (1.0, 1.03, 1.06):  # the shape of systemd-binfmt's flush + re-register
        rules.changed(t)
        assert rules.due(t) == ()
    assert rules.due(1.10) == ()
    assert rules.due(1.11) == (RECONCILE,)


def test_a_storm_is_acted_on_within_a_second_of_its_first_event() -> None:
    rules = started()
    t = 1.0
    while t < 1.99:  # an event every 10 ms, never quiet for the debounce
        rules.changed(t)
        t += 0.01
    assert rules.due(1.99) == ()
    assert rules.due(2.0) == (RECONCILE,)
    rules.reconciled(2.0, restart=False)
    rules.changed(2.01)  # the next burst gets a deadline of its own
    assert rules.due(2.05) == ()
    assert rules.due(2.06) == (RECONCILE,)


def test_the_resync_comes_without_events() -> None:
    rules = started()
    assert rules.due(599.9) == ()
    assert rules.due(600.0) == (RECONCILE,)


def test_a_change_to_nix_conf_restarts_at_once_when_none_ran_lately() -> None:
    rules = started()
    rules.changed(1.0)
    rules.reconciled(1.05, restart=True)
    assert rules.restart_pending and rules.due(1.05) == (RESTART,)
    assert rules.restarted(1.06, ok=True) is None
    assert not rules.restart_pending and rules.due(1.06) == ()


def test_restarts_are_at_least_the_gap_apart() -> None:
    rules = started()
    rules.reconciled(1.0, restart=True)
    rules.restarted(1.0, ok=True)
    rules.changed(2.0)
    rules.reconciled(2.05, restart=True)
    assert rules.due(10.99) == ()
    assert rules.timeout(2.05) == pytest.approx(8.95)
    assert rules.due(11.0) == (RESTART,)


def test_changes_while_a_restart_waits_are_one_restart() -> None:
    rules = started()
    rules.reconciled(1.0, restart=True)
    rules.restarted(1.0, ok=True)
    for t in (2.0, 3.0, 4.0):
        rules.changed(t)
        rules.reconciled(t + 0.05, restart=True)
    assert rules.due(11.0) == (RESTART,)
    rules.restarted(11.0, ok=True)
    assert rules.due(30.0) == ()


def test_a_failed_restart_is_retried_with_growing_back_off() -> None:
    rules = started(Timing(debounce=0.05, restart_gap=0.0, resync=600.0))
    rules.reconciled(1.0, restart=True)
    tries = []
    now = 1.0
    for _ in range(4):
        assert rules.due(now) == (RESTART,)
        tries.append(rules.restarted(now, ok=False))
        assert rules.due(now) == ()
        assert rules.timeout(now) == pytest.approx(tries[-1])
        now += tries[-1] or 0.0
    assert tries == [2.0, 4.0, 8.0, 16.0]
    assert rules.restart_failures == 4
    assert rules.restarted(now, ok=True) is None and rules.restart_failures == 0


def test_a_reconcile_that_wrote_nothing_asks_for_no_restart() -> None:
    rules = started()
    rules.changed(1.0)
    rules.reconciled(1.05, restart=False)
    assert not rules.restart_pending and rules.due(100.0) == ()


def test_the_watchdog_is_pinged_on_its_interval() -> None:
    rules = started(Timing(debounce=0.05, restart_gap=10.0, resync=600.0, watchdog=150.0))
    assert rules.timeout(0.0) == pytest.approx(150.0)
    assert rules.due(150.0) == (WATCHDOG,)
    rules.watchdog_sent(150.0)
    assert rules.due(299.0) == () and rules.due(300.0) == (WATCHDOG,)


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
                             "path": "/etc/nix/nix.conf", "sandbox_paths": ()})
    assert fields["MESSAGE"] == ("declared aarch64-linux, riscv64-linux in /etc/nix/nix.conf "
                                 "(sandbox paths: nothing)")
    assert fields["MESSAGE_ID"] == EVENTS["nixconf.written"].message_id
    assert fields["BINFMTD_PLATFORMS"] == "aarch64-linux riscv64-linux"
    assert fields["BINFMTD_PATH"] == "/etc/nix/nix.conf"
    assert fields["BINFMTD_EVENT"] == "nixconf.written" and fields["PRIORITY"] == "6"
    assert "PLATFORMS" not in fields and "PATH" not in fields  # every field is binfmtd's
    # Nothing reads "nothing" to a person, and is empty to a program.
    assert fields["BINFMTD_SANDBOX_PATHS"] == ""


def test_every_event_the_daemon_logs_has_its_own_message_id_and_sentence() -> None:
    """Each kind of event is one MESSAGE_ID (journalctl MESSAGE_ID=... finds them all), and
    a sentence whose fields are the ones the code logs with."""
    import ast
    from pathlib import Path

    import binfmtd

    logged = {}
    for source in Path(binfmtd.__file__).parent.rglob("*.py"):
        for call in ast.walk(ast.parse(source.read_text())):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("info", "warning", "error") and call.args
                    and isinstance(call.args[0], ast.Constant)
                    and isinstance(call.args[0].value, str)):
                logged[call.args[0].value] = {k.arg for k in call.keywords}
    assert set(logged) == set(EVENTS), "an event without an entry in log.EVENTS, or the reverse"
    ids = [event.message_id for event in EVENTS.values()]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)
    for name, fields in logged.items():
        named = set(re.findall(r"{(\w+)}", EVENTS[name].says))
        assert named <= fields, (name, named - fields)
        said = journal_fields({"event": name, **{f: "x" for f in fields}})["MESSAGE"]
        assert "{" not in said and " - " not in said, said


def test_auto_log_format_follows_the_journal_stream() -> None:
    assert pick_format("auto", {"JOURNAL_STREAM": "8:1234"}) == "journal"
    assert pick_format("auto", {}) == "console"
    assert pick_format("json", {"JOURNAL_STREAM": "8:1234"}) == "json"


def test_a_failed_reconcile_is_retried_at_the_resync_and_not_before() -> None:
    """The daemon reports a reconcile that failed (nix.conf unwritable) as done: nothing is
    due until the resync, so it sleeps in between instead of spinning."""
    rules = started(Timing(debounce=0.05, restart_gap=10.0, resync=2.0))
    rules.changed(1.0)
    assert rules.due(1.05) == (RECONCILE,)
    rules.reconciled(1.05, restart=False)  # it failed: nothing written, no restart owed
    assert rules.due(1.06) == () and rules.due(3.04) == ()
    assert rules.timeout(1.06) == pytest.approx(1.99)
    assert rules.due(3.05) == (RECONCILE,)


def test_colours_only_on_a_terminal_and_never_with_no_color() -> None:
    """no-color.org: NO_COLOR set to anything wins; a pipe never gets colours."""
    controller, terminal = os.openpty()
    reading, writing = os.pipe()
    try:
        with open(terminal, "w", closefd=False) as tty, open(writing, "w", closefd=False) as pipe:
            assert use_colour(tty, {}) and not use_colour(tty, {"NO_COLOR": "1"})
            assert not use_colour(pipe, {})
    finally:
        for fd in (controller, terminal, reading, writing):
            os.close(fd)
