"""Run a program the way the Nix sandbox would: in a fresh mount namespace whose root
holds only the program, /proc, a few devices, and the paths nix.conf lets builds see.

A handler without the F flag makes the kernel open its interpreter at exec time, inside
this root; so a missing sandbox path shows here exactly as it would in a Nix build.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import NamedTuple, Optional

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
PROGRAM = "/binfmtd-doctor"


class SandboxRun(NamedTuple):
    """The outcome: an exit status, or why the program could not start."""

    status: Optional[int]
    error: Optional[str]


def run_sandboxed(program: bytes, visible: Sequence[str]) -> SandboxRun:
    """Exec `program` in a private root that shows only `visible` (missing ones skipped)."""
    root = tempfile.mkdtemp(prefix="binfmtd-doctor-")
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # the child never returns
            os.close(read_end)
            _child(root, program, visible, write_end)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.read().decode("utf-8", "replace")
        _, wait_status = os.waitpid(pid, 0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if said:
        return SandboxRun(None, said)
    return SandboxRun(os.waitstatus_to_exitcode(wait_status), None)


def _child(root: str, program: bytes, visible: Sequence[str], report_fd: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _check(libc.unshare(CLONE_NEWNS), "unshare")
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate")
        _check(libc.mount(b"tmpfs", root.encode(), b"tmpfs", 0, b"size=16m,mode=755"), "tmpfs")
        for path in (*DEVICES, *visible):
            _bind(libc, root, path)
        os.makedirs(root + "/proc")
        _check(libc.mount(b"proc", (root + "/proc").encode(), b"proc", 0, None), "proc")
        with open(root + PROGRAM, "wb") as out:
            out.write(program)
        os.chmod(root + PROGRAM, 0o755)
        os.chroot(root)
        os.chdir("/")
        os.execv(PROGRAM, [PROGRAM])  # the report pipe is close-on-exec: EOF means started
    except OSError as error:
        os.write(report_fd, (error.strerror or str(error)).encode())
    finally:
        os._exit(127)


def _bind(libc: ctypes.CDLL, root: str, path: str) -> None:
    if not os.path.exists(path):
        return  # like a sandbox path with `?`
    target = root + os.path.normpath(path)
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _check(libc.mount(path.encode(), target.encode(), None, MS_BIND | MS_REC, None),
           f"bind {path}")


def _check(result: int, doing: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{doing}: {os.strerror(error)}")
