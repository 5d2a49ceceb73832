"""Talk to systemd: sd_notify(3) and native journal entries.

python3-systemd (what the .deb and the RPM depend on) is used where it is installed:
systemd.daemon.notify and systemd.journal.send. Without it (a pip install), the built-in
versions below speak the same two datagram protocols, so the daemon never needs it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Optional

JOURNAL_SOCKET = "/run/systemd/journal/socket"
NOTIFY_TIMEOUT_SECONDS = 2.0


def _systemd(module: str) -> Optional[Any]:
    """python3-systemd's `module`, None where it is not installed."""
    import importlib

    try:
        return importlib.import_module(f"systemd.{module}")
    except ImportError:
        return None


def sd_notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET; False when there is none."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    daemon = _systemd("daemon")
    if daemon is not None and environ is os.environ:
        return bool(daemon.notify(state))
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
    """Write one structured journal entry (MESSAGE=, PRIORITY=, MESSAGE_ID=, any FIELD=)."""
    journal = _systemd("journal") if path == JOURNAL_SOCKET else None
    if journal is None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(encode_journal_fields(fields), path)
        return
    rest = {k: v for k, v in fields.items() if k != "MESSAGE"}
    journal.send(fields.get("MESSAGE", ""), **rest)
