"""The one exception type: it means "stop this command", never "a handler is odd"."""

from __future__ import annotations


class BinfmtdError(Exception):
    """A condition the user must fix; cli prints its message as one line and exits 2."""
