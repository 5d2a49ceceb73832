"""A small ctypes wrapper over inotify(7).

Debian 12 packages no inotify library (inotify_simple is PyPI-only), and the .deb may
depend only on what Debian ships, so binfmtd carries these few lines itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple, Optional

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class Event(NamedTuple):
    """One inotify event; `name` is the file inside a watched folder, or ''."""

    wd: int
    mask: int
    cookie: int
    name: str


def parse_events(data: bytes) -> list[Event]:
    """Split what read(2) returned on an inotify fd into events."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        raw = data[offset:offset + length]
        offset += length
        name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        events.append(Event(wd, mask, cookie, name))
    return events


class Inotify:
    """An inotify instance: a file descriptor to select on, and its watches."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        self.fd: Optional[int] = fd

    def fileno(self) -> int:
        if self.fd is None:
            raise ValueError("inotify instance is closed")
        return self.fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fileno(), os.fsencode(path), mask)
        if wd < 0:
            raise _os_error(f"watching {path}")
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; one the kernel already dropped (EINVAL) is fine."""
        if self._libc.inotify_rm_watch(self.fileno(), wd) < 0:
            error = ctypes.get_errno()
            if error != errno.EINVAL:
                raise OSError(error, os.strerror(error))

    def read_events(self) -> list[Event]:
        """Every event queued now; [] when there is none."""
        try:
            data = os.read(self.fileno(), 64 * 1024)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _os_error(doing: str) -> OSError:
    error = ctypes.get_errno()
    return OSError(error, f"{doing}: {os.strerror(error)}")
