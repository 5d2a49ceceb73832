"""The daemon and a nix.conf that is not its to write: it says so once, writes nothing,
and takes over as soon as the file is an ordinary one again."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.daemon import Reads, RunningDaemon, declares
from tests.support.kernel import RISCV64, S390X, PrivateBinfmt
from tests.support.parts import require


def test_a_nix_conf_in_the_store_is_refused_once_and_left_alone(
    daemon: RunningDaemon, real_binfmt: PrivateBinfmt
) -> None:
    require(shutil.which("nix-store") is not None, "nix-store is not installed (nix-bin)")
    added = subprocess.run(["nix-store", "--add", str(daemon.nix_conf)], capture_output=True,
                           text=True, check=False)
    require(added.returncode == 0, f"nix-store --add failed here: {added.stderr.strip()}")
    store_file = Path(added.stdout.strip())
    before = store_file.read_bytes()
    daemon.nix_conf.unlink()
    daemon.nix_conf.symlink_to(store_file)
    real_binfmt.register(RISCV64)
    daemon.start()
    ready = daemon.wait_for_message("READY=1")
    assert "belongs to the Nix store" in ready, ready
    reads = Reads(real_binfmt.binfmt_misc)
    real_binfmt.register(S390X)
    reads.wait_for_a_read_after_my_writes()  # it looked again, with a second reason to write
    assert store_file.read_bytes() == before
    assert daemon.nix_conf.is_symlink()
    assert daemon.log.count("reconcile.failed") == 1, daemon.log
    assert daemon.restarts == 0
    # The control: an ordinary file in its place, and the same daemon writes at once.
    daemon.nix_conf.unlink()
    daemon.nix_conf.write_text(before.decode())
    daemon.wait_until(declares(daemon, "s390x-linux"))
    assert "riscv64-linux" in daemon.nix_conf.read_text()
    daemon.wait_until(lambda: daemon.restarts == 1)
