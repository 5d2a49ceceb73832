"""binfmtd's speed and cost, measured on this machine's real binfmt_misc; prints figures.

    .venv/bin/python bench/run.py [--idle-seconds 60] [--rounds 15]

Needs root (it registers binfmtd-test-* handlers, always removed again).
Targets (issue 3): register/unregister -> nix.conf median < 300 ms; a storm of 500
writes ends in the right state with few writes and no restart storm; an idle
daemon wakes 0 times a minute, spends no CPU, stays under 30 MB; `binfmtd status`
from a cold start < 150 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

PROC = Path("/proc/sys/fs/binfmt_misc")
MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00"
MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
NAME = "binfmtd-test-bench"
LINE = f":{NAME}:M::{MAGIC}:{MASK}:/usr/libexec/qemu-binfmt/riscv64-binfmt-P:OPF"


def register() -> None:
    fd = os.open(PROC / "register", os.O_WRONLY)
    try:
        os.write(fd, LINE.encode())
    finally:
        os.close(fd)


def unregister() -> None:
    if (PROC / NAME).exists():
        (PROC / NAME).write_text("-1")


@contextlib.contextmanager
def running_daemon(folder: Path, restart_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    recorder = folder / "restart"
    recorder.write_text(f"#!/bin/sh\necho restart >> {restart_log}\n")
    recorder.chmod(0o755)
    (folder / "config.toml").write_text(f'restart = ["{recorder}"]\n')
    env = {**os.environ, "BINFMTD_NIX_CONF": str(folder / "nix.conf"),
           "BINFMTD_CONFIG": str(folder / "config.toml")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    with open(folder / "daemon.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "binfmtd", "run", "--log-format",
                                    "json"], env=env, stderr=log)
    try:
        wait_for(lambda: b"daemon.ready" in (folder / "daemon.log").read_bytes(), 10)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def wait_for(condition: object, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if condition():  # type: ignore[operator]
            return time.perf_counter() - start
        time.sleep(0.002)
    raise SystemExit(f"bench: condition not met within {timeout} s")


def bench_latency(folder: Path, rounds: int) -> None:
    conf = folder / "nix.conf"
    conf.write_text("")
    added, removed = [], []
    with running_daemon(folder, folder / "restarts.log"):
        for _ in range(rounds):
            start = time.perf_counter()
            register()
            wait_for(lambda: "riscv64-linux" in conf.read_text(), 5)
            added.append(time.perf_counter() - start)
            start = time.perf_counter()
            unregister()
            wait_for(lambda: "riscv64-linux" not in conf.read_text(), 5)
            removed.append(time.perf_counter() - start)
    print(f"register   -> nix.conf: median {statistics.median(added) * 1000:6.0f} ms, "
          f"max {max(added) * 1000:4.0f} ms over {rounds} rounds (target < 300 ms)")
    print(f"unregister -> nix.conf: median {statistics.median(removed) * 1000:6.0f} ms, "
          f"max {max(removed) * 1000:4.0f} ms")


def bench_storm(folder: Path, writes: int) -> None:
    conf = folder / "nix.conf"
    conf.write_text("")
    restart_log = folder / "storm-restarts.log"
    with running_daemon(folder, restart_log):
        start = time.perf_counter()
        for index in range(writes):
            unregister() if index % 2 else register()
        storm = time.perf_counter() - start
        register()  # the final state: registered
        wait_for(lambda: "riscv64-linux" in conf.read_text(), 5)
        time.sleep(1.5)
        log = (folder / "daemon.log").read_text()
    unregister()
    restarts = len(restart_log.read_text().splitlines()) if restart_log.exists() else 0
    print(f"storm of {writes} writes in {storm * 1000:.0f} ms: final state right, "
          f"nix.conf written {log.count('nixconf.written')}x, nix-daemon restarted "
          f"{restarts}x (restart-interval 10 s)")


def bench_idle(folder: Path, seconds: float) -> None:
    (folder / "nix.conf").write_text("")
    with running_daemon(folder, folder / "idle-restarts.log") as process:
        daemon = psutil.Process(process.pid)
        time.sleep(0.5)
        before_cpu, before_switches = sum(daemon.cpu_times()[:2]), daemon.num_ctx_switches()
        time.sleep(seconds)
        after_cpu, after_switches = sum(daemon.cpu_times()[:2]), daemon.num_ctx_switches()
        rss = daemon.memory_info().rss
    wakeups = (after_switches.voluntary - before_switches.voluntary
               + after_switches.involuntary - before_switches.involuntary)
    cpu_ms = (after_cpu - before_cpu) * 1000
    print(f"idle {seconds:.0f} s: {wakeups} wake-ups, CPU {cpu_ms:.0f} ms, "
          f"RSS {rss / 2**20:.1f} MB (targets: 0, 0, < 30 MB)")


def bench_status(rounds: int) -> None:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "binfmtd", "status"], capture_output=True,
                       check=False)
        times.append(time.perf_counter() - start)
    print(f"binfmtd status, cold process: median {statistics.median(times) * 1000:.0f} ms "
          f"over {rounds} runs (target < 150 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--storm", type=int, default=500)
    args = parser.parse_args()
    if os.geteuid() != 0 or not (PROC / "register").exists():
        raise SystemExit("bench: needs root and a mounted /proc/sys/fs/binfmt_misc")
    unregister()
    try:
        with tempfile.TemporaryDirectory(prefix="binfmtd-bench-") as name:
            folder = Path(name)
            bench_status(args.rounds)
            bench_latency(folder, args.rounds)
            bench_storm(folder, args.storm)
            bench_idle(folder, args.idle_seconds)
    finally:
        unregister()


if __name__ == "__main__":
    main()
