"""The one way binfmtd runs a program: an argv list, never a shell, always a timeout."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Optional

from .errors import BinfmtdError


def run_program(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    env: Optional[Mapping[str, str]] = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv and capture its output; failures become one BinfmtdError line."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, errors="replace",
            timeout=timeout, env=None if env is None else dict(env), check=False,
        )
    except FileNotFoundError as error:
        raise BinfmtdError(f"cannot run {argv[0]}: not installed") from error
    except OSError as error:  # EACCES, ENOEXEC, ETXTBSY...
        raise BinfmtdError(f"cannot run {argv[0]}: {error.strerror}") from error
    except subprocess.TimeoutExpired as error:
        raise BinfmtdError(f"{' '.join(argv)} did not finish within {timeout:g} s") from error
    if check and result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        detail = said[-1] if said else "no output"
        raise BinfmtdError(f"{' '.join(argv)} failed (exit {result.returncode}): {detail}")
    return result
