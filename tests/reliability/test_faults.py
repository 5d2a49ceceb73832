"""Faults under a root daemon: nothing lost, nothing half-written, the daemon keeps going.

Each test prints its figures; docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psutil
import pytest

from tests.support.daemon import RunningDaemon
from tests.support.kernel import AARCH64, BINFMT_MISC, RISCV64, PrivateBinfmt
from tests.support.parts import DATA, require
from tests.support.waiting import until

USER_FILE = "# the user's\ntrusted-users = root @wheel\nsubstituters = https://cache.example\n"


def binfmtd(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "binfmtd", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs to play /etc/nix on: it fills up and turns read-only on demand."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    folder = tmp_path / "etc-nix"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 1024)
        except OSError:
            pass  # ENOSPC: full
    return filler


def test_kill_9_during_200_syncs_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """Each sync flips the file between two states; kill -9 lands at a random moment."""
    trees = []
    for name, keep in (("all", None), ("few", ("qemu-aarch64", "qemu-riscv64"))):
        tree = tmp_path / name
        shutil.copytree(DATA / "binfmt_misc" / "debian", tree)
        for entry in tree.iterdir():
            if keep and entry.name not in (*keep, "register", "status"):
                entry.unlink()
        trees.append(tree)
    conf = tmp_path / "nix" / "nix.conf"
    conf.parent.mkdir()
    conf.write_text(USER_FILE)
    known = {USER_FILE}
    for tree in trees:  # what a finished sync writes for each tree
        run = subprocess.run([sys.executable, "-m", "binfmtd", "--binfmt-misc", str(tree),
                              "--nix-conf", str(conf), "sync", "--no-restart"], check=True)
        assert run.returncode == 0
        known.add(conf.read_text())
    assert len(known) == 3
    rng = random.Random(20261122)
    killed_before_end = 0
    for round_number in range(200):
        tree = trees[round_number % 2]
        process = binfmtd("--binfmt-misc", str(tree), "--nix-conf", str(conf), "sync",
                          "--no-restart", env={})
        time.sleep(rng.uniform(0.0, 0.25))
        if process.poll() is None:
            killed_before_end += 1
        process.kill()
        process.wait()
        assert conf.read_text() in known, f"round {round_number}: a partial file"
    leftovers = list(conf.parent.glob(".nix.conf.*"))
    print(f"200 kill -9s, {killed_before_end} before the process ended; "
          f"nix.conf was always a whole file; {len(leftovers)} temp files left "
          "(removed by the next write once a minute old)")
    assert killed_before_end > 50  # the kills did land during the work


def test_syncs_killed_while_nix_validates_leave_no_temp_folder_behind(tmp_path: Path) -> None:
    """Validation copies nix.conf into a temp folder for Nix to read: a sync killed then
    leaves the folder, and the next binfmtd that validates removes it (its process is
    gone). The kills land during validation; the last, unkilled sync leaves nothing."""
    require(shutil.which("nix") is not None, "Nix is not installed (apt-get install nix-bin)")
    tree = tmp_path / "debian"
    shutil.copytree(DATA / "binfmt_misc" / "debian", tree)
    conf = tmp_path / "nix" / "nix.conf"
    conf.parent.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}

    def debris() -> list[str]:
        return sorted(p.name for p in temp.iterdir() if p.name.startswith("binfmtd-validate-"))

    def copy_made_or_ended(before: set[str], process: subprocess.Popen[str]) -> bool:
        return bool(set(debris()) - before) or process.poll() is not None

    killed_validating = 0
    for round_number in range(40):
        conf.write_text(USER_FILE + f"# round {round_number}\n")  # every sync validates
        before = set(debris())
        process = binfmtd("--binfmt-misc", str(tree), "--nix-conf", str(conf), "sync",
                          "--no-restart", env=env)
        copied = bool(until(partial(copy_made_or_ended, before, process), timeout=10))
        process.kill()  # while Nix reads the copy
        process.wait()
        new = set(debris()) - before
        killed_validating += copied and bool(new)
        # The older folder went as soon as the new sync made its own: its binfmtd is dead.
        assert set(debris()) <= new, (before, debris())
    finished = subprocess.run([sys.executable, "-m", "binfmtd", "--binfmt-misc", str(tree),
                               "--nix-conf", str(conf), "sync", "--no-restart"],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              check=False, timeout=60)
    assert finished.returncode == 0, finished.stderr
    print(f"40 syncs killed: {killed_validating} while validating, each leaving its temp "
          f"folder until the next sync; after the last, finished sync: {len(debris())}")
    assert killed_validating >= 30  # the kills did land while the copy existed
    assert debris() == []


def test_a_full_disk_is_a_clear_error_and_the_old_file_survives(
    tiny_tmpfs: Path, real_binfmt: PrivateBinfmt
) -> None:
    conf = tiny_tmpfs / "nix.conf"
    conf.write_text(USER_FILE)
    real_binfmt.register(RISCV64)
    filler = fill(tiny_tmpfs)
    env = {"BINFMTD_NIX_CONF": str(conf), "BINFMTD_BINFMT_MISC": str(real_binfmt.binfmt_misc)}
    process = binfmtd("sync", "--no-restart", env=env)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "No space left on device; the old file is unchanged" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert conf.read_text() == USER_FILE
    filler.unlink()
    process = binfmtd("sync", "--no-restart", env=env)
    process.communicate(timeout=60)
    assert process.returncode == 0 and "riscv64-linux" in conf.read_text()


def test_a_read_only_nix_folder_is_a_clear_error(tiny_tmpfs: Path,
                                                 real_binfmt: PrivateBinfmt) -> None:
    conf = tiny_tmpfs / "nix.conf"
    conf.write_text(USER_FILE)
    real_binfmt.register(RISCV64)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    process = binfmtd("sync", "--no-restart", env={
        "BINFMTD_NIX_CONF": str(conf), "BINFMTD_BINFMT_MISC": str(real_binfmt.binfmt_misc)})
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and "Read-only file system" in stderr
    assert conf.read_text() == USER_FILE


def test_the_daemon_rides_out_a_full_disk_and_writes_when_space_returns(
    tiny_tmpfs: Path, tmp_path: Path, real_binfmt: PrivateBinfmt
) -> None:
    daemon = RunningDaemon(tmp_path, real_binfmt)
    daemon.nix_conf = tiny_tmpfs / "nix.conf"
    daemon.nix_conf.write_text(USER_FILE)
    filler = fill(tiny_tmpfs)
    try:
        daemon.start()
        daemon.wait_for_message("READY=1")
        real_binfmt.register(RISCV64)
        daemon.wait_for_message("No space left on device")
        assert daemon.nix_conf.read_text() == USER_FILE
        start = time.monotonic()
        filler.unlink()  # the freed space is itself the event that triggers the retry
        daemon.wait_until(lambda: "riscv64-linux" in daemon.nix_conf.read_text(), timeout=3)
        print(f"space freed -> nix.conf written: {time.monotonic() - start:.2f} s")
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        daemon.stop()


def test_binfmt_misc_unmounted_and_remounted_under_the_daemon(
    tmp_path: Path, real_binfmt: PrivateBinfmt
) -> None:
    """/proc/sys/fs/binfmt_misc unmounted under a running daemon, entries changed while it
    cannot see them, then mounted again: the daemon follows its own mount table."""
    side = tmp_path / "side"  # a second mount keeps the instance and its entries alive
    side.mkdir()
    assert real_binfmt.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(side)]) \
        .returncode == 0
    real_binfmt.register(RISCV64)
    daemon = RunningDaemon(tmp_path, real_binfmt, inside=True)
    try:
        daemon.start()
        daemon.wait_for_message("READY=1")
        assert "riscv64-linux" in daemon.nix_conf.read_text()
        assert real_binfmt.run(["umount", BINFMT_MISC]).returncode == 0
        daemon.wait_for_message("waiting for binfmt_misc")
        assert "riscv64-linux" in daemon.nix_conf.read_text()  # unknown world: left alone
        other_mount = real_binfmt.inside(str(side))
        real_binfmt.unregister("binfmtd-test-riscv64", other_mount)  # while it cannot see
        real_binfmt.register(AARCH64, other_mount)
        assert real_binfmt.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_MISC]) \
            .returncode == 0
        daemon.wait_until(lambda: "aarch64-linux" in daemon.nix_conf.read_text()
                          and "riscv64-linux" not in daemon.nix_conf.read_text(), timeout=3)
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        daemon.stop()


def wait_for_reader(fifo: Path, timeout: float = 10) -> int:
    """A write end of `fifo` once a reader has it open (until then O_NONBLOCK gives ENXIO)."""
    def opened() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            return None

    gate = until(opened, timeout)
    assert gate is not None, f"nothing opened {fifo} within {timeout} s"
    return gate


def release(gate: int) -> None:
    os.write(gate, b"go\n")
    os.close(gate)


def test_a_slow_restart_delays_but_does_not_lose_changes(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    gate = daemon.root / "gate"  # each restart waits here until the test lets it finish
    os.mkfifo(gate)
    slow = daemon.root / "slow-restart"
    slow.write_text(f"#!/bin/sh\nread go < {gate}\necho restart >> {daemon.restart_log}\n")
    slow.chmod(0o755)
    daemon.config.write_text(f'restart = ["{slow}"]\nrestart-interval-seconds = 0.5\n')
    daemon.start()
    daemon.wait_for_message("READY=1")
    real_binfmt.register(RISCV64)
    first_restart = wait_for_reader(gate)  # the restart is under way now
    real_binfmt.register(AARCH64)  # lands while the daemon waits for the slow restart
    release(first_restart)
    daemon.wait_until(lambda: daemon.restarts == 1)
    daemon.wait_until(lambda: "aarch64-linux" in daemon.nix_conf.read_text(), timeout=6)
    release(wait_for_reader(gate))  # the restart for aarch64
    daemon.wait_until(lambda: daemon.restarts == 2)


def test_systemctl_missing_is_reported_not_fatal(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt, tmp_path: Path
) -> None:
    daemon.config.write_text('restart = ["/nonexistent/systemctl", "try-restart", "x"]\n')
    daemon.start()
    daemon.wait_for_message("READY=1")
    real_binfmt.register(RISCV64)
    daemon.wait_for_message("restart failed")
    assert "cannot run /nonexistent/systemctl: not installed" in daemon.log
    assert daemon.process is not None and daemon.process.poll() is None


def test_an_event_storm_of_1000_writes_in_10_seconds(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    daemon.write_config()
    daemon.config.write_text(daemon.config.read_text().replace(
        "restart-interval-seconds = 0.5", "restart-interval-seconds = 10"))
    daemon.start()
    daemon.wait_for_message("READY=1")
    assert daemon.process is not None
    process = psutil.Process(daemon.pid)
    cpu_before = sum(process.cpu_times()[:2])
    start = time.monotonic()
    for index in range(1000):  # the load: one write every 10 ms, for 10 s
        if index % 2:
            real_binfmt.unregister("binfmtd-test-riscv64")
        else:
            real_binfmt.register(RISCV64)
        time.sleep(max(0.0, start + (index + 1) * 0.01 - time.monotonic()))
    storm_seconds = time.monotonic() - start
    # The control: one change after the storm. The reconcile that shows it read the world
    # after the storm's last write, so riscv64 must be gone then as well.
    real_binfmt.register(AARCH64)
    daemon.wait_until(lambda: "aarch64-linux" in daemon.nix_conf.read_text()
                      and "riscv64-linux" not in daemon.nix_conf.read_text(), timeout=3)
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    writes = daemon.log.count("nixconf.written")
    elapsed = time.monotonic() - start
    print(f"1000 writes in {storm_seconds:.1f} s: daemon CPU {cpu:.2f} s, nix.conf written "
          f"{writes}x (the last for the control), nix-daemon restarted {daemon.restarts}x "
          f"in {elapsed:.1f} s")
    assert cpu < 0.3 * storm_seconds  # bounded: well under a third of one core
    assert writes <= storm_seconds / 1.0 + 3  # one reconcile per second of storm, + control
    assert daemon.restarts <= elapsed / 10 + 1  # at most one per rate-limit window
