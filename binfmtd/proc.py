"""The one way binfmtd runs a program: an argv list, never a shell, always a timeout."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Optional

from .errors import BinfmtdError


class Running:
    """A program under way: status starts `nix show-config` and reads meanwhile."""

    def __init__(self, argv: Sequence[str], timeout: float,
                 env: Optional[Mapping[str, str]]) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        try:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, errors="replace",
                env=None if env is None else dict(env),
            )
        except FileNotFoundError as error:
            raise BinfmtdError(f"cannot run {argv[0]}: not installed") from error
        except OSError as error:  # EACCES, ENOEXEC, ETXTBSY...
            raise BinfmtdError(f"cannot run {argv[0]}: {error.strerror}") from error

    def wait(self, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Its output once it ended; failures become one BinfmtdError line."""
        try:
            stdout, stderr = self._process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as error:
            self._process.kill()
            self._process.communicate()
            raise BinfmtdError(f"{' '.join(self.argv)} did not finish within "
                               f"{self.timeout:g} s") from error
        result = subprocess.CompletedProcess(self.argv, self._process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            detail = said[-1] if said else "no output"
            raise BinfmtdError(f"{' '.join(self.argv)} failed (exit {result.returncode}): "
                               f"{detail}")
        return result


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
) -> subprocess.CompletedProcess[str]:
    """Run argv and capture its output; failures become one BinfmtdError line."""
    return start_program(argv, timeout=timeout, env=env).wait(check=check)
