"""Logging, set up once by `binfmtd run`: journal entries, console lines or JSON.

Modules call `get_logger()` and log stable event names with fields:
`log.info("nixconf.written", path=..., platforms=...)`. EVENTS gives each event its
journal MESSAGE_ID (`journalctl MESSAGE_ID=...` finds every entry of a kind) and the
sentence its MESSAGE reads as; in the journal every field is prefixed BINFMTD_.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, NamedTuple

import structlog

from .notify import journal_send

# syslog priorities for journald's PRIORITY= field
PRIORITIES = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}


class Event(NamedTuple):
    """A kind of log entry: its journal MESSAGE_ID, and its MESSAGE as a format string
    over the entry's fields."""

    message_id: str
    says: str


EVENTS: dict[str, Event] = {
    "daemon.ready": Event("e96851b81d69488aa5c2b35b1b586772",
                          "ready: declares {platforms}; asks {nix} ({nix_version})"),
    "daemon.stopped": Event("ac72566efa444be18148f0b1e9cf53d6", "stopped"),
    "nixconf.written": Event("ce31da2d2d1245b3a504a56db6c3e2c4",
                             "declared {platforms} in {path} (sandbox paths: {sandbox_paths})"),
    "nixdaemon.restarted": Event("4f25d70c1d2d4b57b1d6b194d2030b9a",
                                 "nix-daemon: {how}"),
    "nixdaemon.restart_failed": Event("f751c8f6a96a454e9d0ab8dda2cd7c3b",
                                      "nix-daemon restart failed: {error}; trying again in "
                                      "{retry_in} s"),
    "restart.paced": Event("ccc9ef263d884bb6baaa07cf595a3870",
                           "nix-daemon restarts at least {seconds} s apart: {reason}"),
    "reconcile.failed": Event("ff51806a174348618a5394fa1c77db5c",
                              "nix.conf not brought in line: {error}; trying again {retry}"),
    "problem": Event("76ff57f70cb94c4da112126039230505", "problem: {problem}"),
    "problem.resolved": Event("efc684cf9dfb47f1b0b6f1388435697d", "resolved: {problem}"),
    "config.reloaded": Event("7b130c0617c8447fb8dce4401dc427bf", "reloaded {path}"),
    "config.rejected": Event("027f9a29a6cd43fab53637545768d8c8",
                             "new config refused, {keeping} kept: {error}"),
    "binfmt_misc.mounted": Event("9d5995456f4d42ccaccbd0c3af02b919",
                                 "binfmt_misc mounted at {path}"),
    "binfmt_misc.unwatched": Event("a33139f3cf2a42a9bdc4013624e8925d",
                                   "binfmt_misc at {path} is {reason}"),
    "inotify.overflow": Event("14a8fd20c03d4f6281486a351894e57e",
                              "more events than the kernel queues: reading everything again"),
    "watch.failed": Event("1976aef480704b5ba40de093fd331c9b", "cannot watch {path}: {error}"),
    "notify.failed": Event("ea37660ca9cd4a909e6c79d657b91b8a",
                           "cannot tell systemd how things stand: {error}"),
}


def get_logger() -> Any:
    return structlog.get_logger("binfmtd")


def pick_format(requested: str, environ: Mapping[str, str] = os.environ) -> str:
    """auto: the journal when systemd started us with a journal stream, else console."""
    if requested != "auto":
        return requested
    return "journal" if environ.get("JOURNAL_STREAM") else "console"


def use_colour(stream: Any, environ: Mapping[str, str] = os.environ) -> bool:
    """Colours only on a terminal, and never where NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not environ.get("NO_COLOR")


def configure_logging(requested: str) -> None:
    chosen = pick_format(requested)
    processors: list[Any] = [structlog.processors.add_log_level]
    if chosen == "console":
        processors.append(_join_sequences)  # the journal's fields and MESSAGE do their own
    if chosen == "journal":
        processors.append(JournalRenderer())
        logger_factory: Any = structlog.ReturnLoggerFactory()
    elif chosen == "json":
        processors += [structlog.processors.TimeStamper(fmt="iso"),
                       structlog.processors.JSONRenderer(sort_keys=True)]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors += [structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                       structlog.dev.ConsoleRenderer(colors=use_colour(sys.stderr))]
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(processors=processors, logger_factory=logger_factory,
                        cache_logger_on_first_use=True)


def journal_fields(event_dict: MutableMapping[str, Any]) -> dict[str, str]:
    """One journal entry: a MESSAGE a person reads, a MESSAGE_ID per kind of event, and
    each field searchable as BINFMTD_<NAME>."""
    name = str(event_dict.pop("event", ""))
    level = str(event_dict.pop("level", "info"))
    values = {key: _text(value) for key, value in event_dict.items()}
    event = EVENTS.get(name)
    fields = {
        "MESSAGE": readable(event.says, event_dict) if event else name,
        "PRIORITY": PRIORITIES.get(level, "6"),
        "SYSLOG_IDENTIFIER": "binfmtd",
        "BINFMTD_EVENT": name,
    }
    if event:
        fields["MESSAGE_ID"] = event.message_id
    for key, value in values.items():
        fields["BINFMTD_" + key.upper().replace("-", "_")] = value
    return fields


def readable(says: str, values: Mapping[str, Any]) -> str:
    """The event's sentence with its fields, a list read as "a, b" and an empty one as
    "nothing"; a field it names but did not get reads '-'."""
    said = {key: ", ".join(map(str, value)) or "nothing"
            if isinstance(value, (list, tuple, set, frozenset)) else str(value)
            for key, value in values.items()}
    return says.format_map(_Dashes(said))


class _Dashes(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "-"


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
