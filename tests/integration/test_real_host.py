"""Against the real kernel's binfmt_misc (a private instance for each test) and real Nix
(Debian's nix-bin 2.8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.kernel import PrivateBinfmt, binfmt_line
from tests.support.parts import require

AARCH64_INTERPRETER = "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
RISCV64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00"
RISCV64_INTERPRETER = "/usr/libexec/qemu-binfmt/riscv64-binfmt-P"


def binfmtd(binfmt: PrivateBinfmt, conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BINFMTD_BINFMT_MISC": str(binfmt.binfmt_misc),
           "BINFMTD_NIX_CONF": str(conf)}
    env.pop("BINFMTD_CONFIG", None)  # defaults: restart = nix-daemon.service, not used here
    return subprocess.run([sys.executable, "-m", "binfmtd", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def nix_settings(nix: str, conf_dir: Path) -> dict[str, str]:
    env = {**os.environ, "NIX_CONF_DIR": str(conf_dir), "NIX_USER_CONF_FILES": "/dev/null"}
    env.pop("NIX_CONFIG", None)
    shown = subprocess.run([nix, "--extra-experimental-features", "nix-command", "show-config"],
                           capture_output=True, text=True, env=env, check=True, timeout=60)
    return dict(line.split(" = ", 1) for line in shown.stdout.splitlines() if " = " in line)


def test_nix_itself_sees_the_emulated_platforms_beside_its_defaults(
    real_binfmt: PrivateBinfmt, nix: str, tmp_path: Path
) -> None:
    require(Path(AARCH64_INTERPRETER).exists(), "qemu-user-static is not installed")
    real_binfmt.register(binfmt_line("binfmtd-test-aarch64", AARCH64_INTERPRETER, flags="OP"))
    real_binfmt.register(binfmt_line("binfmtd-test-riscv64", RISCV64_INTERPRETER, flags="OPF",
                            magic=RISCV64_MAGIC))
    conf = tmp_path / "nix.conf"
    conf.write_text("sandbox = true\nextra-platforms = i686-linux\n")
    before = nix_settings(nix, tmp_path)

    synced = binfmtd(real_binfmt, conf, "sync", "--no-restart")
    assert synced.returncode == 0, synced.stderr
    after = nix_settings(nix, tmp_path)
    platforms = after["extra-platforms"].split()
    assert {"aarch64-linux", "riscv64-linux"} <= set(platforms)
    assert set(before["extra-platforms"].split()) <= set(platforms)  # defaults kept
    # Without F the kernel opens the interpreter at each exec: the sandbox must see it.
    assert f"{AARCH64_INTERPRETER}?" in after["sandbox-paths"].split()
    assert f"{RISCV64_INTERPRETER}?" not in after["sandbox-paths"].split()

    report = json.loads(binfmtd(real_binfmt, conf, "status", "--json").stdout)
    assert report["in_sync"]
    assert "aarch64-linux" in report["effective"]["extra-platforms"]
    mtime = conf.stat().st_mtime_ns
    assert binfmtd(real_binfmt, conf, "sync", "--check").returncode == 0
    assert binfmtd(real_binfmt, conf, "sync", "--no-restart").returncode == 0
    assert conf.stat().st_mtime_ns == mtime

    assert binfmtd(real_binfmt, conf, "remove", "--no-restart").returncode == 0
    assert conf.read_text() == "sandbox = true\nextra-platforms = i686-linux\n"


def test_a_registration_change_changes_the_plan(
    real_binfmt: PrivateBinfmt, tmp_path: Path
) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("")
    name = real_binfmt.register(binfmt_line("binfmtd-test-riscv64", RISCV64_INTERPRETER,
                                   magic=RISCV64_MAGIC))
    assert binfmtd(real_binfmt, conf, "sync", "--no-restart").returncode == 0
    assert "riscv64-linux" in conf.read_text()
    (real_binfmt.binfmt_misc / name).write_text("0")  # disable
    assert binfmtd(real_binfmt, conf, "sync", "--check").returncode == 1
    assert binfmtd(real_binfmt, conf, "sync", "--no-restart").returncode == 0
    assert "riscv64-linux" not in conf.read_text()


def test_an_interpreter_path_carrying_a_setting_never_reaches_nix_conf(
    real_binfmt: PrivateBinfmt, tmp_path: Path
) -> None:
    # The kernel accepts a newline in the interpreter and prints it raw in the entry.
    real_binfmt.register(binfmt_line("binfmtd-test-evil", "/tmp/x\ntrusted-users = evil",
                                     flags="P"))
    conf = tmp_path / "nix.conf"
    conf.write_text("trusted-users = root\n")
    result = binfmtd(real_binfmt, conf, "sync", "--no-restart")
    assert result.returncode == 0, result.stderr
    assert "evil" not in conf.read_text()
    report = json.loads(binfmtd(real_binfmt, conf, "status", "--json").stdout)
    evil = next(h for h in report["handlers"] if h["name"] == "binfmtd-test-evil")
    assert evil["platform"] is None
    assert "malformed" in evil["problems"][0]


def test_a_file_nix_rejects_is_never_installed(nix: str, tmp_path: Path,
                                               real_binfmt: PrivateBinfmt) -> None:
    real_binfmt.register(binfmt_line("binfmtd-test-riscv64", RISCV64_INTERPRETER,
                                     magic=RISCV64_MAGIC))
    conf = tmp_path / "nix.conf"
    conf.write_text("sandbox = maybe\n")
    result = binfmtd(real_binfmt, conf, "sync", "--no-restart")
    assert result.returncode == 2
    assert "sandbox" in result.stderr and "fix the file first" in result.stderr
    assert conf.read_text() == "sandbox = maybe\n"


def test_a_dynamic_interpreter_brings_its_libraries_and_nix_accepts_them(
    real_binfmt: PrivateBinfmt, nix: str, tmp_path: Path
) -> None:
    # /usr/bin/env stands in for a dynamically linked emulator such as Debian's qemu-user.
    real_binfmt.register(binfmt_line("binfmtd-test-dynamic", "/usr/bin/env", flags="F",
                            magic=RISCV64_MAGIC))
    conf = tmp_path / "nix.conf"
    conf.write_text("")
    assert binfmtd(real_binfmt, conf, "sync", "--no-restart").returncode == 0
    paths = nix_settings(nix, tmp_path)["sandbox-paths"].split()
    assert any(p.startswith("/lib64/ld-linux") for p in paths)
    assert any("libc.so" in p for p in paths)
    assert "/usr/bin/env?" not in paths  # F: the kernel holds the file itself
