"""Talk to systemd: sd_notify(3) and native journal entries.

systemd-python is used where it is installed; without it, the built-in versions below
speak the same two datagram protocols, so the daemon never depends on it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
NOTIFY_TIMEOUT_SECONDS = 2.0


def sd_notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET; False when there is none."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # A receiver that stops reading must not stall the daemon: give up after a while.
        sock.settimeout(NOTIFY_TIMEOUT_SECONDS)
        sock.connect(address)
        sock.sendall(state.encode("utf-8", "surrogateescape"))
    return True


def encode_journal_fields(fields: Mapping[str, str]) -> bytes:
    """The journal's native format: KEY=value lines; values with newlines length-prefixed."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "surrogateescape")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_send(fields: Mapping[str, str], path: str = JOURNAL_SOCKET) -> None:
    """Write one structured journal entry (MESSAGE=, PRIORITY=, and any FIELD=)."""
    try:
        from systemd import journal  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(encode_journal_fields(fields), path)
        return
    rest = {k: v for k, v in fields.items() if k != "MESSAGE"}
    journal.send(fields.get("MESSAGE", ""), **rest)
