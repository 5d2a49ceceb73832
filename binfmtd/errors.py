"""The one exception type: it means "stop this command", never "a handler is odd"; and what
every command shares of the command-line contract: its exit statuses, --json's version."""

from __future__ import annotations

EXIT_OK = 0  # done; in sync, no problem
EXIT_ATTENTION = 1  # out of sync, a problem, a stale nix-daemon; sync --check: would change
EXIT_ERROR = 2  # an error: one line on stderr
# The "version" of every --json object (binfmtd/output.schema.json): raised when a key
# changes its meaning or goes away, not when one is added.
JSON_VERSION = 1


class BinfmtdError(Exception):
    """A condition the user must fix; cli prints its message as one line and exits 2.

    `cause` is the part that stays the same while details change (a refusal's message
    lists the values to declare, which follow every registration): the daemon logs a
    failure again only when its cause changes.
    """

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause if cause is not None else message
