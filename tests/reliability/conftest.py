"""The reliability tier drives the same real `binfmtd run` harness as the daemon tier."""

from __future__ import annotations

from tests.daemon.conftest import daemon

__all__ = ["daemon"]
