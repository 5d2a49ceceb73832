"""What the packaging and farm tiers must leave on the host as they found it.

Those tiers work in namespaces of their own, yet a mistake there could still reach the
host's binfmt_misc: systemd's shutdown writes -1 to /proc/sys/fs/binfmt_misc/status when
binfmt_misc is mounted read-write in a container that shares the host's instance, which
removes every handler of the host (measured: 29 of Debian's qemu handlers gone at one
poweroff). A host with no handlers would never show that, so the check registers a handler
of its own first, the sentinel, and fails when it is gone: a positive control for "the
host's binfmt_misc is as it was". (tests/system needs no guard: its containers boot in a
user namespace of their own, tests/support/containers.py, and never see the host's
instance.)

What is compared: the host's own entries (every name not starting with binfmtd-test-),
exactly, and the sentinel, whose name carries the test process's pid. Entries named
binfmtd-test-* belong to test runs, maybe others sharing this machine (a second run of the
same tier included), which come and go on their own; they are not the host's.

The sentinel matches files named *.binfmtd-sentinel only and has no F flag, so its
interpreter (which does not exist) is never opened, and binfmtd sees no ELF machine in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support import kernel

BINFMT_MISC = Path(kernel.BINFMT_MISC)
HOST_NIX = Path("/etc/nix")
TEST_PREFIX = "binfmtd-test-"


@contextlib.contextmanager
def mounted_host_binfmt_misc() -> Iterator[Path]:
    """The host's binfmt_misc, mounted for as long as this lasts if it was not mounted."""
    mounted_here = not (BINFMT_MISC / "register").exists()
    if mounted_here:
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MISC)],
                       check=True)
    try:
        yield BINFMT_MISC
    finally:
        if mounted_here:
            subprocess.run(["umount", str(BINFMT_MISC)], check=False)


def unregister_host(name: str) -> None:
    """Remove the host's entry `name` if it is there; only ever one of the tests' own."""
    assert name.startswith(TEST_PREFIX), name
    entry = BINFMT_MISC / name
    if entry.exists():
        entry.write_text("-1")


def register_host(line: str) -> str:
    """Write one line to the host's register file in one write(2); return the name."""
    unregister_host(kernel.entry_name(line))  # left over by an interrupted run
    return kernel.register_line(BINFMT_MISC, line)


def nix_files() -> dict[str, str] | None:
    """Every path under /etc/nix with the sha256 of its bytes (None: no /etc/nix)."""
    if not HOST_NIX.is_dir():
        return None
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(HOST_NIX.rglob("*"))}


def binfmt_entries() -> dict[str, str]:
    """The host's own binfmt_misc entries, and `status`, with their text."""
    return {p.name: p.read_text() for p in sorted(BINFMT_MISC.iterdir())
            if p.name != "register" and not p.name.startswith(TEST_PREFIX)}


@contextlib.contextmanager
def host_kept(prefix: str) -> Iterator[None]:
    """Fail when the host's /etc/nix or its own binfmt_misc entries differ afterwards, or
    when the sentinel (`prefix`sentinel-<pid>) registered before is gone."""
    sentinel = f"{prefix}sentinel-{os.getpid()}"
    with mounted_host_binfmt_misc():
        register_host(f":{sentinel}:E::binfmtd-sentinel::/nonexistent/binfmtd-sentinel:")
        try:
            nix, entries = nix_files(), binfmt_entries()
            yield
            kept = (BINFMT_MISC / sentinel).exists()
            nix_after, entries_after = nix_files(), binfmt_entries()
        finally:
            unregister_host(sentinel)
        assert kept, "the host's binfmt_misc was flushed: all handlers gone"
        assert entries_after == entries, (
            f"the host's binfmt_misc changed: {diff(entries, entries_after)}")
        assert nix_after == nix, f"the host's /etc/nix changed: {diff(nix or {}, nix_after or {})}"


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    """Which names went, came or changed."""
    gone = sorted(set(before) - set(after))
    came = sorted(set(after) - set(before))
    changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
    return f"gone {gone}, new {came}, changed {changed}"
