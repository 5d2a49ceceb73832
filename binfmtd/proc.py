"""The one way binfmtd runs a program: an argv list, never a shell, always a timeout.

On the standard library's subprocess, which does for binfmtd what a program run by a root
daemon needs: stdin is /dev/null, the signals Python ignores (SIGPIPE, SIGXFSZ) are the
default again in the program, the program inherits no descriptor but its three (closed in
the child only), the timeout covers the whole run (a program that closes its output and
goes on running is still ended at it), and a program is killed and reaped whatever
interrupts the wait. This module adds the one-line errors.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, NamedTuple, Optional

from .errors import BinfmtdError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


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
        try:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env)
        except OSError as error:  # not installed, EACCES, ENOEXEC...
            said = "not installed" if isinstance(error, FileNotFoundError) else error.strerror
            raise BinfmtdError(f"cannot run {self.argv[0]}: {said}") from error
        self._result: Optional[Completed] = None

    def wait(self, *, check: bool = True) -> Completed:
        """Its output once it ended; failures become one BinfmtdError line."""
        if self._result is None:
            try:
                stdout, stderr = self._process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                raise BinfmtdError(f"{' '.join(self.argv)} did not finish within "
                                   f"{self.timeout:g} s") from None
            except BaseException:  # interrupted: the program must not outlive the wait
                self.stop()
                raise
            self._result = Completed(self.argv, self._process.returncode,
                                     _text(stdout), _text(stderr))
        result = self._result
        if check and result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            detail = said[-1] if said else "no output"
            raise BinfmtdError(f"{' '.join(self.argv)} failed (exit {result.returncode}): "
                               f"{detail}")
        return result

    def stop(self) -> None:
        """End it if it still runs, and reap it: for output nobody is going to read."""
        if self._process.returncode is None:
            self._process.kill()
            self._process.wait()
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()


def _text(output: bytes) -> str:
    return output.decode("utf-8", "replace")


def start_program(argv: Sequence[str], *, timeout: float = 30,
                  env: Optional[Mapping[str, str]] = None) -> Running:
    """Start argv with its output captured; `.wait()` collects it within `timeout` seconds."""
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
