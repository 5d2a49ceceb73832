"""`binfmtd run` against the real kernel's binfmt_misc (a private instance for each test):
events in, nix.conf and restarts out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.support.daemon import (
    Reads,
    RunningDaemon,
    blocked_in_select,
    declares,
    lacks,
    wakeups,
)
from tests.support.kernel import BINFMT_MISC, RISCV64, S390X, PrivateBinfmt
from tests.support.parts import require
from tests.support.waiting import until


def test_ready_after_the_first_reconcile_and_status_names_the_platforms(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    real_binfmt.register(RISCV64)
    daemon.start()
    ready = daemon.wait_for_message("READY=1")
    assert "extra-extra-platforms = riscv64-linux\n" in daemon.nix_conf.read_text()  # before READY
    assert "emulated: riscv64-linux" in ready
    daemon.wait_until(lambda: daemon.restarts == 1)


def test_registering_and_removing_a_handler_updates_nix_conf_within_a_second(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    daemon.start()
    daemon.wait_for_message("READY=1")
    name = real_binfmt.register(RISCV64)
    added = daemon.wait_until(declares(daemon, "riscv64-linux"), timeout=1)
    daemon.wait_until(lambda: daemon.restarts == 1)
    real_binfmt.unregister(name)
    removed = daemon.wait_until(lacks(daemon, "riscv64-linux"), timeout=1)
    daemon.wait_until(lambda: daemon.restarts == 2)
    print(f"register -> nix.conf: {added * 1000:.0f} ms; unregister -> nix.conf: "
          f"{removed * 1000:.0f} ms")
    assert daemon.nix_conf.read_text() == "sandbox = true\n"


def systemd_binfmt_lines() -> list[str]:
    """Every line systemd-binfmt would register from /usr/lib/binfmt.d (qemu-user-static's
    29, and the python and llvm ones Debian ships beside them)."""
    lines = [line for conf in sorted(Path("/usr/lib/binfmt.d").glob("*.conf"))
             for line in conf.read_text().splitlines() if line and line[0] not in "#;"]
    require(len(lines) >= 20, "/usr/lib/binfmt.d holds no qemu lines "
                              "(apt-get install qemu-user-static)")
    return lines


def test_flush_and_reregister_like_systemd_binfmt_writes_and_restarts_nothing(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    """`systemctl restart systemd-binfmt` writes -1 to status (every entry gone), then
    registers every line again: one burst that changes nothing, so nothing is written."""
    lines = systemd_binfmt_lines()
    for line in lines:
        real_binfmt.register(line)
    daemon.write_config("debounce-seconds = 0.5\n")  # a burst shorter than this: one look
    daemon.start()
    daemon.wait_for_message("READY=1")
    daemon.wait_until(lambda: daemon.restarts == 1)
    before = daemon.nix_conf.stat().st_mtime_ns
    reads = Reads(real_binfmt.binfmt_misc)
    flushed = time.monotonic()
    for _ in range(3):
        real_binfmt.flush()
        for line in lines:
            real_binfmt.register(line)
    burst = time.monotonic() - flushed
    assert burst < 0.25, f"the burst took {burst:.2f} s: too slow to be one burst here"
    reads.wait_for_a_read_after_my_writes()  # the daemon looked at the world after the flush
    print(f"3 flushes of {len(lines)} lines in {burst * 1000:.0f} ms; the daemon read them "
          f"{time.monotonic() - flushed:.2f} s after the first")
    # The control: a real change now. Its write must be the only one since the first
    # sync, and the same waits must see it (else the daemon stopped watching).
    assert "s390x-linux" in daemon.nix_conf.read_text()
    real_binfmt.unregister("qemu-s390x")
    daemon.wait_until(lacks(daemon, "s390x-linux"), timeout=2)
    daemon.wait_until(lambda: daemon.restarts == 2)
    reads.close()
    assert daemon.nix_conf.stat().st_mtime_ns != before
    assert daemon.log.count("nixconf.written") == 2  # the first sync and the control only
    assert daemon.restarts == 2


def test_a_hand_edit_that_drops_the_block_is_repaired(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    real_binfmt.register(RISCV64)
    daemon.start()
    daemon.wait_for_message("READY=1")
    daemon.nix_conf.write_text("sandbox = true\nmax-jobs = 4\n")  # a template run, say
    daemon.wait_until(declares(daemon, "riscv64-linux"), timeout=1)
    assert daemon.nix_conf.read_text().startswith("sandbox = true\nmax-jobs = 4\n")


def test_a_block_moved_by_hand_goes_back_last_and_its_neighbours_stay_apart(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    """The admin moves the block between a comment and a setting: within a second the
    daemon puts it back at the end, each line of the admin's still on its own."""
    real_binfmt.register(RISCV64)
    daemon.start()
    daemon.wait_for_message("READY=1")
    block = daemon.nix_conf.read_text().split("\n\n", 1)[1]
    daemon.nix_conf.write_text(f"sandbox = true\n# my settings\n{block}max-jobs = 8\n")
    daemon.wait_until(lambda: daemon.nix_conf.read_text().endswith(block), timeout=1)
    assert daemon.nix_conf.read_text() == f"sandbox = true\n# my settings\nmax-jobs = 8\n\n{block}"


def test_sighup_reloads_the_config_and_resyncs(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    real_binfmt.register(RISCV64)
    real_binfmt.register(S390X)
    daemon.start()
    daemon.wait_for_message("READY=1")
    daemon.write_config('ignore-platforms = ["s390x-linux"]\n')
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_message("RELOADING=1")
    daemon.wait_for_message("READY=1")
    daemon.wait_until(lacks(daemon, "s390x-linux"), timeout=1)
    assert "riscv64-linux" in daemon.nix_conf.read_text()


def test_a_bad_config_on_reload_keeps_the_old_one_running(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    real_binfmt.register(RISCV64)
    daemon.start()
    daemon.wait_for_message("READY=1")
    daemon.config.write_text("restrat = false\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_message("READY=1")
    assert daemon.process is not None and daemon.process.poll() is None
    assert "unknown key 'restrat'" in daemon.log


def test_sigterm_exits_0_and_says_stopping(daemon: RunningDaemon) -> None:
    daemon.start()
    daemon.wait_for_message("READY=1")
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_message("STOPPING=1")
    assert daemon.process is not None and daemon.process.wait(timeout=5) == 0


def test_a_failing_restart_is_retried_with_back_off_and_shown(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    flaky = daemon.root / "flaky-restart"
    flaky.write_text(f"#!/bin/sh\necho try >> {daemon.restart_log}\n"
                     f"[ -e {daemon.root}/ok ] || exit 1\n")
    flaky.chmod(0o755)
    daemon.config.write_text(f'restart = ["{flaky}"]\n')
    daemon.start()
    daemon.wait_for_message("READY=1")
    real_binfmt.register(RISCV64)
    daemon.wait_for_message("restart failed 1x")
    (daemon.root / "ok").touch()
    daemon.wait_until(lambda: daemon.restarts == 2, timeout=4)  # back-off: 2 s
    # binfmtd logs the outcome once the command has returned, after its line above
    daemon.wait_until(lambda: "nixdaemon.restarted" in daemon.log)
    assert "nixdaemon.restart_failed" in daemon.log


def test_restarts_are_rate_limited(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    daemon.write_config()
    daemon.config.write_text(daemon.config.read_text().replace(
        "restart-interval-seconds = 0.5", "restart-interval-seconds = 2"))
    daemon.start()
    daemon.wait_for_message("READY=1")
    real_binfmt.register(RISCV64)
    daemon.wait_until(lambda: daemon.restarts == 1)
    first = time.monotonic()
    real_binfmt.register(S390X)
    daemon.wait_until(declares(daemon, "s390x-linux"), timeout=1)
    assert daemon.restarts == 1  # the second restart waits for the interval
    daemon.wait_until(lambda: daemon.restarts == 2, timeout=3)
    assert time.monotonic() - first >= 1.5


def test_an_unwritable_nix_conf_is_logged_and_retried_on_the_next_event(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    require(os.geteuid() == 0, "mounting a read-only tmpfs needs root")
    folder = daemon.nix_conf.parent
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
    try:
        daemon.nix_conf.write_text("sandbox = true\n")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        daemon.start()
        real_binfmt.register(RISCV64)
        daemon.wait_for_message("error: cannot write")  # with READY=1, or after it
        assert daemon.process is not None and daemon.process.poll() is None
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        real_binfmt.register(S390X)
        daemon.wait_until(declares(daemon, "riscv64-linux"), timeout=2)
        assert daemon.log.count("reconcile.failed") == 1  # logged once, not per event
    finally:
        daemon.stop()
        subprocess.run(["umount", str(folder)], check=False)


def test_waits_for_binfmt_misc_to_be_mounted_without_spinning(
    tmp_path: Path, real_binfmt: PrivateBinfmt
) -> None:
    """At boot binfmtd may start before /proc/sys/fs/binfmt_misc is mounted: it waits in
    select without waking up, and acts on the mount itself (no inotify event for that)."""
    side = tmp_path / "side"  # an instance already holds an entry, as after systemd-binfmt
    side.mkdir()
    unmounted = real_binfmt.run(["sh", "-c", f"mount -t binfmt_misc binfmt_misc {side} && "
                                             f"umount {BINFMT_MISC}"])
    assert unmounted.returncode == 0, unmounted.stderr
    real_binfmt.register(RISCV64, folder=real_binfmt.inside(str(side)))
    waiting = RunningDaemon(tmp_path, real_binfmt, inside=True)
    try:
        waiting.start()
        ready = waiting.wait_for_message("READY=1")
        assert "waiting for binfmt_misc" in ready
        waiting.wait_until(lambda: blocked_in_select(waiting.pid))
        asleep = wakeups(waiting.pid)
        cpu = _cpu_seconds(waiting)
        woke = until(lambda: wakeups(waiting.pid) != asleep, timeout=0.5)
        assert not woke, "the daemon woke up with nothing to do: it polls"
        idle_cpu = _cpu_seconds(waiting) - cpu
        assert idle_cpu < 0.05
        print(f"waiting for the mount: 0 wake-ups and {idle_cpu:.3f} s CPU in 0.5 s")
        mounted = real_binfmt.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_MISC])
        assert mounted.returncode == 0, mounted.stderr
        assert until(lambda: wakeups(waiting.pid) != asleep, timeout=2)  # the control
        waiting.wait_until(declares(waiting, "riscv64-linux"), timeout=2)
        assert "binfmt_misc.mounted" in waiting.log
    finally:
        waiting.stop()


def _cpu_seconds(daemon: RunningDaemon) -> float:
    times = psutil.Process(daemon.pid).cpu_times()
    return float(times.user + times.system)


def test_json_logs_are_one_object_per_line(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    real_binfmt.register(RISCV64)
    daemon.start()
    daemon.wait_for_message("READY=1")
    daemon.stop()
    events = [json.loads(line) for line in daemon.log.splitlines()]
    written = next(e for e in events if e["event"] == "nixconf.written")
    assert written["platforms"] == ["riscv64-linux"]
