"""The cli tier's fixture: a Sandbox (tests/cli/sandbox.py) with Debian's registrations,
a nix.conf of the user's and a restart command that records."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.sandbox import QEMU_STATIC_DIR, Sandbox
from tests.support.parts import require


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    require(QEMU_STATIC_DIR.is_dir(), "qemu-user-static is not installed")
    box = Sandbox(tmp_path)
    box.use_registrar("debian")
    box.nix_conf.parent.mkdir()
    box.nix_conf.write_text("# the user's own file\nsandbox = true\ntrusted-users = root\n")
    recorder = tmp_path / "restart-nix-daemon"
    recorder.write_text(f'#!/bin/sh\necho "restart $*" >> {tmp_path}/restarts.log\n')
    recorder.chmod(0o755)
    box.config.write_text(f'restart = ["{recorder}", "--now"]\n')
    return box
