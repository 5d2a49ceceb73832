"""sd_notify and journal entries, received on real AF_UNIX sockets."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from binfmtd.daemon.notify import encode_journal_fields, journal_send, sd_notify


def test_nothing_is_sent_without_notify_socket() -> None:
    assert sd_notify("READY=1", environ={}) is False


def test_a_path_socket_receives_the_state(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        assert sd_notify("READY=1\nSTATUS=1 emulated: aarch64-linux",
                         environ={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert listener.recv(4096) == b"READY=1\nSTATUS=1 emulated: aarch64-linux"


def test_an_abstract_socket_is_named_with_at(tmp_path: Path) -> None:
    name = f"binfmtd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sd_notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(4096) == b"WATCHDOG=1"


def test_journal_fields_use_the_native_format() -> None:
    encoded = encode_journal_fields({"MESSAGE": "nixconf.written", "PLATFORMS": "a b",
                                     "ERROR": "two\nlines"})
    assert encoded == (b"MESSAGE=nixconf.written\nPLATFORMS=a b\n"
                       b"ERROR\n" + (9).to_bytes(8, "little") + b"two\nlines\n")


def test_journal_send_writes_one_datagram(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # the built-in, even where it is installed
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(str(tmp_path / "journal"))
        journal_send({"MESSAGE": "hello", "PRIORITY": "6"}, path=str(tmp_path / "journal"))
        assert journald.recv(4096) == b"MESSAGE=hello\nPRIORITY=6\n"
