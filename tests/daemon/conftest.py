"""Run the real `binfmtd run` as systemd would: a process, a notify socket, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import PROC_BINFMT


class RunningDaemon:
    """A `binfmtd run` process, the messages it sent to NOTIFY_SOCKET, and its files."""

    def __init__(self, root: Path, binfmt_misc: Path = PROC_BINFMT) -> None:
        self.root = root
        self.nix_conf = root / "etc-nix" / "nix.conf"
        self.nix_conf.parent.mkdir(exist_ok=True)
        if not self.nix_conf.exists():
            self.nix_conf.write_text("sandbox = true\n")
        self.config = root / "config.toml"
        self.restart_log = root / "restarts.log"
        self.binfmt_misc = binfmt_misc
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(root / "notify.sock"))
        self.messages: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def write_config(self, extra: str = "") -> None:
        recorder = self.root / "restart-nix-daemon"
        if not recorder.exists():  # never rewrite it: it may be running (ETXTBSY)
            recorder.write_text(f"#!/bin/sh\necho restart >> {self.restart_log}\n")
            recorder.chmod(0o755)
        self.config.write_text(f'restart = ["{recorder}"]\nrestart-interval-seconds = 0.5\n'
                               + extra)

    def start(self, *args: str) -> None:
        if not self.config.exists():
            self.write_config()
        env = {**os.environ, "NOTIFY_SOCKET": str(self.root / "notify.sock"),
               "BINFMTD_NIX_CONF": str(self.nix_conf), "BINFMTD_CONFIG": str(self.config),
               "BINFMTD_BINFMT_MISC": str(self.binfmt_misc)}
        with open(self.root / "daemon.log", "w") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "binfmtd", "run", "--log-format", "json", *args],
                env=env, stderr=log, text=True,
            )

    @property
    def restarts(self) -> int:
        return len(self.restart_log.read_text().splitlines()) if self.restart_log.exists() else 0

    @property
    def log(self) -> str:
        return (self.root / "daemon.log").read_text()

    def wait_for_message(self, wanted: str, timeout: float = 5) -> str:
        """The first new notify message containing `wanted`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.socket.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.socket.recv(4096).decode()
            except socket.timeout:
                break
            self.messages.append(message)
            if wanted in message:
                return message
        raise AssertionError(f"no notify message with {wanted!r}; got {self.messages}\n{self.log}")

    def wait_until(self, condition: Callable[[], bool], timeout: float = 3) -> float:
        """Seconds until `condition` held; fails after `timeout`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if condition():
                return time.monotonic() - start
            time.sleep(0.01)
        raise AssertionError(f"condition not met within {timeout} s\n{self.log}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=5)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.socket.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    running = RunningDaemon(tmp_path)
    try:
        yield running
    finally:
        running.stop()
