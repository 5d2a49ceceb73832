"""`binfmtd run` on a terminal: coloured console lines, unless NO_COLOR says otherwise
(no-color.org: set to anything, it wins). The terminal is a real pty."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from tests.support.kernel import PrivateBinfmt
from tests.support.waiting import until

ESCAPE = b"\x1b["


def console_until_ready(tmp_path: Path, binfmt: PrivateBinfmt,
                        no_color: Optional[str]) -> bytes:
    """What `binfmtd run` wrote to its terminal up to its ready line, with NO_COLOR set to
    `no_color` (None: not set at all)."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color is not None:
        env["NO_COLOR"] = no_color
    nix_conf = tmp_path / "nix.conf"
    nix_conf.write_text("sandbox = true\n")
    (tmp_path / "config.toml").write_text("restart = false\n")
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "binfmtd", "run", "--no-restart"], stdin=subprocess.DEVNULL,
        stdout=secondary, stderr=secondary,
        env={**env, "BINFMTD_NIX_CONF": str(nix_conf), "TERM": "xterm",
             "BINFMTD_CONFIG": str(tmp_path / "config.toml"),
             "BINFMTD_BINFMT_MISC": str(binfmt.binfmt_misc)})
    os.close(secondary)
    seen = bytearray()

    def ready() -> bool:
        while select.select([primary], [], [], 0.05)[0]:
            seen.extend(os.read(primary, 65536))
        return b"ready" in seen

    try:
        assert until(ready, timeout=20), bytes(seen)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        os.close(primary)
    return bytes(seen)


@pytest.mark.parametrize("no_color,coloured", [("1", False), (None, True), ("", True)])
def test_no_color_wins_on_a_terminal(tmp_path: Path, real_binfmt: PrivateBinfmt,
                                     no_color: Optional[str], coloured: bool) -> None:
    """NO_COLOR set to anything: no escape at all. Not set, or empty (the controls): the
    same terminal gets colours."""
    shown = console_until_ready(tmp_path, real_binfmt, no_color)
    assert (ESCAPE in shown) is coloured, shown
