"""Run a program the way the Nix sandbox would: in a fresh mount namespace whose root
holds only the program, /proc, a few devices, and the paths nix.conf lets builds see.

A handler without the F flag makes the kernel open its interpreter at exec time, inside
this root; so a missing sandbox path shows here exactly as it would in a Nix build.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import time
from collections.abc import Sequence
from typing import NamedTuple, Optional

from ..files import remove_folder, temp_folder

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
PROGRAM = "/binfmtd-doctor"


class SandboxRun(NamedTuple):
    """The outcome: an exit status, or why the program could not start."""

    status: Optional[int]
    error: Optional[str]


def run_sandboxed(program: bytes, visible: Sequence[str], timeout: float = 30.0) -> SandboxRun:
    """Exec `program` in a private root that shows only `visible` (missing ones skipped);
    a program that has not ended within `timeout` seconds is killed, as is one whose wait
    is interrupted, and always reaped."""
    root = temp_folder("doctor")
    read_end, write_end = os.pipe()
    pid: Optional[int] = None
    try:
        pid = os.fork()
        if pid == 0:  # the child never returns
            os.close(read_end)
            _child(root, program, visible, write_end)
        os.close(write_end)
        write_end = -1
        outcome = _outcome(pid, read_end, time.monotonic() + timeout)
        if outcome is None:
            return SandboxRun(None, f"did not finish within {timeout:g} s")
        pid = None  # reaped
        return outcome
    finally:
        if pid:
            _kill_and_reap(pid)
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        remove_folder(root)


def _outcome(pid: int, report_fd: int, deadline: float) -> Optional[SandboxRun]:
    """What the child reported (why it could not start) or how the program ended, once it
    has ended and been reaped; None at the deadline, the child still there."""
    said = b""
    process_fd = os.pidfd_open(pid)
    try:
        waiting = select.poll()
        waiting.register(report_fd, select.POLLIN)
        waiting.register(process_fd, select.POLLIN)
        ended = False
        while not ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for fd, _ in waiting.poll(left * 1000):
                if fd == process_fd:
                    ended = True
                else:
                    chunk = os.read(report_fd, 4096)
                    said += chunk
                    if not chunk:  # EOF: exec succeeded (close-on-exec) or the report is in
                        waiting.unregister(report_fd)
    finally:
        os.close(process_fd)
    _, wait_status = os.waitpid(pid, 0)
    if said:
        return SandboxRun(None, said.decode("utf-8", "replace"))
    return SandboxRun(os.waitstatus_to_exitcode(wait_status), None)


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


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
