"""Nix where the upstream installer puts it: only under /nix/var/nix/profiles/default/bin,
on nobody's PATH. binfmtd finds it there, asks it, and names it.

Run in a private namespace (tests/support/kernel.py) whose /nix/var/nix/profiles is a
tmpfs holding that layout, so the host's own profiles are neither read nor changed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.support.kernel import PrivateBinfmt
from tests.support.parts import require

PROFILE_BIN = "/nix/var/nix/profiles/default/bin"
NO_NIX_PATH = "/usr/local/sbin:/usr/sbin:/sbin"  # systemd's PATH has no Nix in it either


def test_status_finds_and_names_nix_in_the_upstream_installers_profile(
    real_binfmt: PrivateBinfmt, tmp_path: Path
) -> None:
    nix = shutil.which("nix")
    require(nix is not None, "Nix is not installed (apt-get install nix-bin)")
    require(Path("/nix/var/nix/profiles").is_dir(), "/nix/var/nix/profiles is missing")
    assert nix is not None
    layout = real_binfmt.run(["sh", "-c", 'mount -t tmpfs tmpfs /nix/var/nix/profiles && '
                              f'mkdir -p {PROFILE_BIN} && ln -s "$1" {PROFILE_BIN}/nix',
                              "sh", str(Path(nix).resolve())])
    assert layout.returncode == 0, layout.stderr
    conf = tmp_path / "etc-nix" / "nix.conf"
    conf.parent.mkdir()
    conf.write_text("sandbox = true\nextra-extra-platforms = riscv64-linux\n")
    (tmp_path / "config.toml").write_text("")
    status = real_binfmt.run(["env", f"PATH={NO_NIX_PATH}", sys.executable, "-m", "binfmtd",
                              "--nix-conf", str(conf), "--config", str(tmp_path / "config.toml"),
                              "status", "--json"], cwd=str(Path(__file__).parents[2]))
    assert status.returncode in (0, 1), status.stderr
    report = json.loads(status.stdout)
    assert report["nix"]["path"] == f"{PROFILE_BIN}/nix"
    assert report["nix"]["version"] and report["nix"]["version"][0].isdigit()
    assert report["nix_installed"] is True
    assert "riscv64-linux" in report["effective"]["extra-platforms"].split()
    assert "Nix is not installed" not in status.stdout
    # The control: the same command without that layout finds no Nix at all.
    real_binfmt.run(["umount", "/nix/var/nix/profiles"])
    bare = real_binfmt.run(["env", f"PATH={NO_NIX_PATH}", sys.executable, "-m", "binfmtd",
                            "--nix-conf", str(conf), "--config", str(tmp_path / "config.toml"),
                            "status", "--json"], cwd=str(Path(__file__).parents[2]))
    assert json.loads(bare.stdout)["nix"] is None
