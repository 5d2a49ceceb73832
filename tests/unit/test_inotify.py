"""The ctypes inotify wrapper, against real kernel events."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from binfmtd.daemon import inotify
from binfmtd.daemon.inotify import Event, Inotify, parse_events


def raw_event(wd: int, mask: int, name: bytes) -> bytes:
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("iIII", wd, mask, 0, len(padded)) + padded


def test_parse_events_splits_names_and_padding() -> None:
    data = raw_event(1, inotify.IN_CLOSE_WRITE, b"nix.conf") + raw_event(2, inotify.IN_IGNORED,
                                                                         b"")
    assert parse_events(data) == [Event(1, inotify.IN_CLOSE_WRITE, 0, "nix.conf"),
                                  Event(2, inotify.IN_IGNORED, 0, "")]


def test_a_write_and_a_rename_in_a_watched_folder(tmp_path: Path) -> None:
    with Inotify() as watcher:
        wd = watcher.add_watch(str(tmp_path), inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO)
        assert watcher.read_events() == []
        (tmp_path / "temp").write_text("x")
        (tmp_path / "temp").rename(tmp_path / "nix.conf")
        events = watcher.read_events()
    assert [(e.wd, e.name) for e in events] == [(wd, "temp"), (wd, "nix.conf")]
    assert events[0].mask & inotify.IN_CLOSE_WRITE and events[1].mask & inotify.IN_MOVED_TO


def test_removing_the_watched_folder_says_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    with Inotify() as watcher:
        wd = watcher.add_watch(str(folder), inotify.IN_DELETE_SELF)
        folder.rmdir()
        masks = [e.mask for e in watcher.read_events() if e.wd == wd]
        watcher.rm_watch(wd)  # already dropped by the kernel: not an error
    assert any(mask & inotify.IN_IGNORED for mask in masks)


def test_watching_a_missing_folder_is_an_os_error(tmp_path: Path) -> None:
    with Inotify() as watcher, pytest.raises(OSError) as caught:
        watcher.add_watch(str(tmp_path / "missing"), inotify.IN_CLOSE_WRITE)
    assert caught.value.errno == errno.ENOENT
