"""The daemon's guards, each proven by making its condition happen: an event queue that
overflows, a reconcile that keeps failing, a reload by SIGHUP alone, and every layout of the
file that holds the block. A real `binfmtd run`, the real kernel's inotify and a private
binfmt_misc for each test."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.daemon import RunningDaemon
from tests.support.kernel import AARCH64, RISCV64, PrivateBinfmt
from tests.support.parts import require
from tests.support.waiting import until

MAX_QUEUED_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")


def cpu_seconds(pid: int) -> float:
    """The daemon's CPU and that of the programs it ran and reaped: a daemon that spins on
    a failure spends most of it in the `nix` it runs to validate each attempt."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def test_an_event_queue_that_overflowed_means_one_full_re_read(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    """The daemon stopped (SIGSTOP) while more events than the kernel queues pile up, all of
    them about files it does not care for; then a registration, whose event the full queue
    drops. Only IN_Q_OVERFLOW can tell it to look again."""
    daemon.start()
    daemon.wait_for_message("READY=1")
    daemon.signal(signal.SIGSTOP)
    try:
        for n in range(int(MAX_QUEUED_EVENTS.read_text()) // 2 + 100):
            (daemon.nix_conf.parent / f"junk{n}").touch()  # IN_CREATE, IN_CLOSE_WRITE: names
        real_binfmt.register(RISCV64)  # its event has no room left in the queue
    finally:
        daemon.signal(signal.SIGCONT)
    # The log line follows the write: wait for it too, or its count races the file.
    daemon.wait_until(lambda: '"event": "nixconf.written"' in daemon.log, timeout=3)
    assert "riscv64-linux" in daemon.nix_conf.read_text()
    assert daemon.log.count('"event": "inotify.overflow"') == 1
    assert daemon.log.count('"event": "nixconf.written"') == 1  # one re-read, one write


@pytest.fixture
def nix_folder_mount(daemon: RunningDaemon) -> Iterator[Path]:
    """The nix.conf folder on a tmpfs of its own, which the test may remount read-only."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    folder = daemon.nix_conf.parent
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
    try:
        daemon.nix_conf.write_text("sandbox = true\n")
        yield folder
    finally:
        daemon.stop()
        subprocess.run(["umount", str(folder)], check=False)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


def test_a_reconcile_that_keeps_failing_is_retried_at_the_resync_and_idle_between(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt, nix_folder_mount: Path
) -> None:
    """A registration that nix.conf cannot take (read-only): the daemon says so, sleeps
    (near no CPU) and tries again at its resync, not before; the remount that makes the
    folder writable again raises no event, so only the resync finds it."""
    daemon.write_config("resync-seconds = 2\n")
    daemon.start()
    daemon.wait_for_message("READY=1")
    remount(nix_folder_mount, "ro")
    real_binfmt.register(RISCV64)
    daemon.wait_for_message("error: cannot write")
    failed_at = time.monotonic()
    cpu = cpu_seconds(daemon.pid)
    time.sleep(1.5)  # the measurement window: nothing is due in it
    idle_cpu = cpu_seconds(daemon.pid) - cpu
    remount(nix_folder_mount, "rw")
    daemon.wait_until(lambda: "riscv64-linux" in daemon.nix_conf.read_text(), timeout=4)
    retried_after = time.monotonic() - failed_at
    print(f"failed reconcile: {idle_cpu:.3f} s CPU in 1.5 s; written {retried_after:.2f} s "
          "after the failure (resync 2 s)")
    assert idle_cpu < 0.2, "the daemon spins after a failed reconcile"
    assert 1.5 <= retried_after <= 3.5


def test_sighup_alone_reloads_the_config(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    """config.toml is a link into a folder the daemon does not watch, so a change there
    raises no event: the change takes effect on SIGHUP, and not before."""
    real_binfmt.register(RISCV64)
    real_binfmt.register(AARCH64)
    daemon.write_config()
    elsewhere = daemon.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.toml").write_text(daemon.config.read_text())
    daemon.config.unlink()
    daemon.config.symlink_to(elsewhere / "config.toml")
    daemon.start()
    daemon.wait_for_message("READY=1")
    with open(elsewhere / "config.toml", "a") as config:  # in place: no event for the link
        config.write('ignore-platforms = ["aarch64-linux"]\n')
    ignored = until(lambda: "aarch64-linux" not in daemon.nix_conf.read_text(), timeout=1)
    assert not ignored and "config.reloaded" not in daemon.log, "it reloaded without SIGHUP"
    daemon.signal(signal.SIGHUP)
    daemon.wait_until(lambda: "aarch64-linux" not in daemon.nix_conf.read_text(), timeout=1)
    assert "riscv64-linux" in daemon.nix_conf.read_text() and "config.reloaded" in daemon.log


LAYOUTS = {
    # nix.conf's last line, and the file binfmtd must then keep the block in
    "binfmtd.conf": ("!include binfmtd.conf\n", "binfmtd.conf"),
    "nix.custom.conf": ("!include nix.custom.conf\n", "nix.custom.conf"),
    "nix-conf-target": ("", "target/elsewhere.conf"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_daemon_follows_the_file_that_holds_the_block(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt, layout: str
) -> None:
    """Whichever file holds the block: a registration reaches it, and a hand edit that
    drops the block from it is repaired, while nix.conf itself is left as it is."""
    include, name = LAYOUTS[layout]
    held = daemon.nix_conf.parent / name
    held.parent.mkdir(exist_ok=True)
    daemon.nix_conf.write_text("sandbox = true\n" + include)
    if layout == "nix-conf-target":
        daemon.write_config(f'nix-conf-target = "{held}"\n')
    daemon.start()
    daemon.wait_for_message("READY=1")
    real_binfmt.register(RISCV64)
    daemon.wait_until(lambda: held.exists() and "riscv64-linux" in held.read_text(), timeout=1)
    held.write_text("# the admin's\n")  # a template run, say
    daemon.wait_until(lambda: "riscv64-linux" in held.read_text(), timeout=1)
    assert held.read_text().startswith("# the admin's\n")
    assert daemon.nix_conf.read_text() == "sandbox = true\n" + include
