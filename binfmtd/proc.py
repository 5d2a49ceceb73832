"""The one way binfmtd runs a program: an argv list, never a shell, always a timeout.

Built on os.posix_spawn and poll rather than on subprocess: importing subprocess (and
threading, selectors and signal's enums with it) cost `binfmtd status` a tenth of its time.
What subprocess did for binfmtd, this does too: stdin is /dev/null, the signals that
Python ignores (SIGPIPE, SIGXFSZ) are the default again in the program, and it inherits no
descriptor but its three.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from typing import TYPE_CHECKING, NamedTuple, Optional

from .errors import BinfmtdError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

CHUNK = 65536


class Completed(NamedTuple):
    """What a program said, and how it ended (returncode -N: killed by signal N)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Running:
    """A program under way: status starts `nix show-config` and reads meanwhile."""

    def __init__(self, argv: Sequence[str], timeout: float,
                 env: Optional[Mapping[str, str]]) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        _close_on_exec_beyond_three()
        stdout, stdout_end = os.pipe()
        stderr, stderr_end = os.pipe()
        try:
            self._pid: Optional[int] = os.posix_spawnp(
                self.argv[0], self.argv, os.environ if env is None else env,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_DUP2, stdout_end, 1),
                              (os.POSIX_SPAWN_DUP2, stderr_end, 2)],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as error:
            os.close(stdout)
            os.close(stderr)
            said = "not installed" if isinstance(error, FileNotFoundError) else error.strerror
            raise BinfmtdError(f"cannot run {argv[0]}: {said}") from error  # EACCES, ENOEXEC...
        finally:
            os.close(stdout_end)
            os.close(stderr_end)
        self._stdout, self._stderr = stdout, stderr
        self._read: dict[int, list[bytes]] = {stdout: [], stderr: []}
        self._open = {stdout, stderr}  # the pipes the program has not closed yet
        self._result: Optional[Completed] = None

    def wait(self, *, check: bool = True) -> Completed:
        """Its output once it ended; failures become one BinfmtdError line."""
        if self._result is None:
            if not self._read_all(deadline=time.monotonic() + self.timeout):
                self.stop()
                raise BinfmtdError(f"{' '.join(self.argv)} did not finish within "
                                   f"{self.timeout:g} s")
            self._result = Completed(self.argv, self._reap(), self._text(self._stdout),
                                     self._text(self._stderr))
        result = self._result
        if check and result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            detail = said[-1] if said else "no output"
            raise BinfmtdError(f"{' '.join(self.argv)} failed (exit {result.returncode}): "
                               f"{detail}")
        return result

    def stop(self) -> None:
        """End it if it still runs, and reap it: for output nobody is going to read."""
        if self._pid is not None:
            os.kill(self._pid, signal.SIGKILL)
            for fd in self._open:
                os.close(fd)
            self._open.clear()
            self._reap()

    def _read_all(self, deadline: float) -> bool:
        """Read both pipes until the program has closed them; False at the deadline.
        Both at once: a program blocked writing one would never close the other."""
        poller = select.poll()
        for fd in self._open:
            poller.register(fd, select.POLLIN)
        while self._open:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for fd, _ in poller.poll(left * 1000):
                chunk = os.read(fd, CHUNK)
                if chunk:
                    self._read[fd].append(chunk)
                else:
                    poller.unregister(fd)
                    os.close(fd)
                    self._open.discard(fd)
        return True

    def _text(self, fd: int) -> str:
        return b"".join(self._read[fd]).decode("utf-8", "replace")

    def _reap(self) -> int:
        """Its exit status; -N where signal N ended it."""
        assert self._pid is not None
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        return os.waitstatus_to_exitcode(status)


def _close_on_exec_beyond_three() -> None:
    """What subprocess's close_fds does in its child: Python opens its own descriptors
    close-on-exec, but ones handed to binfmtd (by a shell, by Ansible) may not be."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # listdir's own descriptor, closed by now
                os.set_inheritable(int(name), False)


def start_program(argv: Sequence[str], *, timeout: float = 30,
                  env: Optional[Mapping[str, str]] = None) -> Running:
    """Start argv with its output captured; `.wait()` collects it."""
    return Running(argv, timeout, env)


def run_program(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    env: Optional[Mapping[str, str]] = None,
) -> Completed:
    """Run argv and capture its output; failures become one BinfmtdError line."""
    return start_program(argv, timeout=timeout, env=env).wait(check=check)
