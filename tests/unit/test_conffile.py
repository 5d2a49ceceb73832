"""The one writer of nix.conf: atomic, no write without change, mode, owner and label kept.

The order of its system calls (O_EXCL, fsync, rename, fsync of the folder) is traced in
tests/integration/test_writer_syscalls.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from binfmtd.conffile import managed_file, read_conf_text
from binfmtd.errors import BinfmtdError
from binfmtd.files import replace_file
from tests.support.parts import REPO, require
from tests.unit.labelled_write import LABEL


def test_unchanged_text_is_not_written_and_mtime_kept(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("sandbox = true\n")
    os.utime(conf, (1_000_000, 1_000_000))
    assert replace_file(conf, "sandbox = true\n") is False
    assert conf.stat().st_mtime == 1_000_000


def test_a_change_replaces_the_file_and_keeps_its_mode(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("a = 1\n")
    conf.chmod(0o640)  # neither mkstemp's 0600 nor a new file's 0644
    before = conf.stat()
    assert replace_file(conf, "a = 2\n") is True
    after = conf.stat()
    assert conf.read_text() == "a = 2\n"
    assert after.st_ino != before.st_ino  # renamed into place, not rewritten
    assert after.st_mode == before.st_mode
    assert sorted(os.listdir(tmp_path)) == ["nix.conf"]  # no temp file left


def test_mode_owner_and_selinux_label_survive_a_write(tmp_path: Path) -> None:
    """On a tmpfs, which keeps security.selinux without an SELinux kernel (measured on 6.18).

    The tmpfs is mounted in a private mount namespace of a child, so no mount outlives it.
    """
    require(os.geteuid() == 0, "setting an owner and a security.* attribute needs root")
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable,
         "-m", "tests.unit.labelled_write", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert probe.returncode == 0, probe.stderr
    before, after = json.loads(probe.stdout)
    # The positive control: this tmpfs kept all three before the write.
    require(before["label"] == LABEL.decode(), f"tmpfs dropped security.selinux: {before}")
    assert before == {"mode": 0o640, "uid": 1234, "gid": 5678, "label": LABEL.decode(),
                      "text": "a = 1\n"}
    assert after == {**before, "text": "a = 2\n"}


def test_a_new_file_is_readable_by_everyone(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    assert replace_file(conf, "a = 1\n")
    assert conf.stat().st_mode & 0o777 == 0o644


def test_a_symlinked_nix_conf_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "nix.conf"
    target.write_text("a = 1\n")
    link = tmp_path / "nix.conf"
    link.symlink_to(target)
    assert replace_file(link, "a = 2\n")
    assert link.is_symlink()
    assert target.read_text() == "a = 2\n"


def test_non_utf8_bytes_survive_a_round_trip(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_bytes(b"# caf\xe9 latin-1\n")
    text = read_conf_text(conf)
    assert text is not None
    replace_file(conf, text + "b = 1\n")
    assert conf.read_bytes() == b"# caf\xe9 latin-1\nb = 1\n"


def test_an_unwritable_folder_is_one_clear_error_and_the_file_is_kept(tmp_path: Path) -> None:
    conf = tmp_path / "missing-folder" / "nix.conf"
    with pytest.raises(BinfmtdError, match=r"cannot write .*old file is unchanged"):
        replace_file(conf, "a = 1\n")


def test_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert read_conf_text(tmp_path / "nix.conf") is None


@pytest.mark.parametrize(
    ("main_text", "target", "expected"),
    [
        ("sandbox = true\n", "auto", "nix.conf"),
        ("a = 1\n!include nix.custom.conf\n", "auto", "nix.custom.conf"),
        ("include nix.custom.conf\n", "auto", "nix.custom.conf"),
        ("!include nix.custom.conf\n", "/etc/other.conf", "/etc/other.conf"),
        ("!include ./binfmtd.conf  # binfmtd's own\n", "auto", "binfmtd.conf"),
        ("include /etc/nix/nix.custom.conf\n", "auto", "nix.custom.conf"),
        ("include sub/../nix.custom.conf\n", "auto", "nix.custom.conf"),
        ("include /elsewhere/nix.custom.conf\n", "auto", "nix.conf"),
        ("# !include binfmtd.conf\n", "auto", "nix.conf"),
    ],
)
def test_the_managed_file_follows_determinate_nix_layout(
    main_text: str, target: str, expected: str
) -> None:
    main = Path("/etc/nix/nix.conf")
    result = managed_file(main, main_text, target)
    assert result == (Path(expected) if expected.startswith("/") else main.parent / expected)


def test_temp_files_left_by_a_killed_writer_are_cleaned_up_later(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("a = 1\n")
    stale = tmp_path / ".nix.conf.k1ll3d.binfmtd"
    fresh = tmp_path / ".nix.conf.wr1t1ng.binfmtd"
    stale.write_text("half")
    fresh.write_text("half")
    os.utime(stale, (1_000_000, 1_000_000))
    assert replace_file(conf, "a = 2\n")
    assert not stale.exists()  # minutes old: its writer is dead
    assert fresh.exists()  # could be another writer's, in progress
