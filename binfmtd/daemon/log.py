"""Logging, set up once by `binfmtd run`: journal fields, console lines or JSON.

Modules call `get_logger()` and log stable event names with fields:
`log.info("nixconf.written", path=..., platforms=...)`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from .notify import journal_send

# syslog priorities for journald's PRIORITY= field
PRIORITIES = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}


def get_logger() -> Any:
    return structlog.get_logger("binfmtd")


def pick_format(requested: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """auto: the journal when systemd started us with a journal stream, else console."""
    if requested != "auto":
        return requested
    return "journal" if environ.get("JOURNAL_STREAM") else "console"


def configure_logging(requested: str) -> None:
    chosen = pick_format(requested)
    processors: list[Any] = [structlog.processors.add_log_level]
    if chosen != "json":
        processors.append(_join_sequences)
    if chosen == "journal":
        processors.append(JournalRenderer())
        logger_factory: Any = structlog.ReturnLoggerFactory()
    elif chosen == "json":
        processors += [structlog.processors.TimeStamper(fmt="iso"),
                       structlog.processors.JSONRenderer(sort_keys=True)]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors += [structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                       structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(processors=processors, logger_factory=logger_factory,
                        cache_logger_on_first_use=True)


def journal_fields(event_dict: MutableMapping[str, Any]) -> dict[str, str]:
    """One journal entry: MESSAGE reads well in `journalctl`, each field is searchable."""
    event = str(event_dict.pop("event", ""))
    level = str(event_dict.pop("level", "info"))
    details = " ".join(f"{k}={_text(v)}" for k, v in event_dict.items())
    fields = {
        "MESSAGE": f"{event} {details}".strip(),
        "PRIORITY": PRIORITIES.get(level, "6"),
        "SYSLOG_IDENTIFIER": "binfmtd",
        "BINFMTD_EVENT": event,
    }
    for key, value in event_dict.items():
        fields[key.upper().replace("-", "_")] = _text(value)
    return fields


def _join_sequences(_logger: Any, _name: str,
                    event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """platforms=aarch64-linux riscv64-linux reads better than a Python tuple."""
    for key, value in event_dict.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            event_dict[key] = _text(value)
    return event_dict


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        return " ".join(str(v) for v in value)
    return str(value)


class JournalRenderer:
    """A structlog processor that writes the entry to the journal itself."""

    def __call__(self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
        fields = journal_fields(event_dict)
        try:
            journal_send(fields)
        except OSError:  # no journal socket: keep the line on stderr for systemd to catch
            print(fields["MESSAGE"], file=sys.stderr, flush=True)
        return ""
