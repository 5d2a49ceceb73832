"""The one writer of nix.conf: atomic, no write without change, mode and owner kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from binfmtd.conffile import managed_file, read_conf_text, write_conf_text
from binfmtd.errors import BinfmtdError


def test_unchanged_text_is_not_written_and_mtime_kept(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("sandbox = true\n")
    os.utime(conf, (1_000_000, 1_000_000))
    assert write_conf_text(conf, "sandbox = true\n") is False
    assert conf.stat().st_mtime == 1_000_000


def test_a_change_replaces_the_file_and_keeps_mode_and_owner(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("a = 1\n")
    conf.chmod(0o640)
    os.chown(conf, 1234, 5678) if os.geteuid() == 0 else None
    before = conf.stat()
    assert write_conf_text(conf, "a = 2\n") is True
    after = conf.stat()
    assert conf.read_text() == "a = 2\n"
    assert after.st_ino != before.st_ino  # renamed into place, not rewritten
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode, before.st_uid, before.st_gid)
    assert sorted(os.listdir(tmp_path)) == ["nix.conf"]  # no temp file left


def test_a_new_file_is_readable_by_everyone(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    assert write_conf_text(conf, "a = 1\n")
    assert conf.stat().st_mode & 0o777 == 0o644


def test_a_symlinked_nix_conf_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "nix.conf"
    target.write_text("a = 1\n")
    link = tmp_path / "nix.conf"
    link.symlink_to(target)
    assert write_conf_text(link, "a = 2\n")
    assert link.is_symlink()
    assert target.read_text() == "a = 2\n"


def test_non_utf8_bytes_survive_a_round_trip(tmp_path: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_bytes(b"# caf\xe9 latin-1\n")
    text = read_conf_text(conf)
    assert text is not None
    write_conf_text(conf, text + "b = 1\n")
    assert conf.read_bytes() == b"# caf\xe9 latin-1\nb = 1\n"


def test_an_unwritable_folder_is_one_clear_error_and_the_file_is_kept(tmp_path: Path) -> None:
    conf = tmp_path / "missing-folder" / "nix.conf"
    with pytest.raises(BinfmtdError, match=r"cannot write .*old file is unchanged"):
        write_conf_text(conf, "a = 1\n")


def test_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert read_conf_text(tmp_path / "nix.conf") is None


@pytest.mark.parametrize(
    ("main_text", "target", "expected"),
    [
        ("sandbox = true\n", "auto", "nix.conf"),
        ("a = 1\n!include nix.custom.conf\n", "auto", "nix.custom.conf"),
        ("include nix.custom.conf\n", "auto", "nix.custom.conf"),
        ("!include nix.custom.conf\n", "/etc/other.conf", "/etc/other.conf"),
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
    assert write_conf_text(conf, "a = 2\n")
    assert not stale.exists()  # minutes old: its writer is dead
    assert fresh.exists()  # could be another writer's, in progress
