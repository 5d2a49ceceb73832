"""README's Commands section and binfmtd(8) name every command and option the parser has.

The list comes from the real parser, so a new command or option that the docs forget
fails here, and so does a documented command that no longer exists.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from binfmtd.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAN_PAGE = ROOT / "docs" / "binfmtd.8"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("binfmtd's parser has no subcommands")


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """What a synopsis must show: every option string, positional metavar and choice."""
    words: list[str] = []
    for action in parser._actions:
        if action.dest in ("help", "command"):
            continue
        words.extend(action.option_strings)
        if not action.option_strings:
            words.append(str(action.metavar or action.dest))
        words.extend(str(choice) for choice in action.choices or ())
    return words


PARSER = build_parser()
COMMANDS = _subcommands(PARSER)
GLOBAL_WORDS = [w for w in _words(PARSER) if w.startswith("-")]


def _mentions(text: str, word: str) -> bool:
    """`word` as a token: `-v` is not found inside `--verbose`, nor `--json` in `--jsonl`."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def _readme_commands() -> tuple[str, dict[str, str]]:
    """The Commands section's synopsis block: the global lines, and each command's synopsis.

    A line indented 4 spaces is global; 6 spaces starts a command, whose synopsis runs to
    the description column (two spaces or more); the description does not count, so an
    option it mentions is still missing from the synopsis.
    """
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    global_lines = [line for line in section.splitlines() if re.match(r"    \S", line)]
    synopses = {
        match.group(1): re.split(r"\s{2,}", match.group(0).strip())[0]
        for match in re.finditer(r"^      (\w[\w-]*).*$", section, flags=re.MULTILINE)
    }
    return "\n".join(global_lines), synopses


def _man_sections() -> dict[str, str]:
    """binfmtd(8) by `.SH` heading, with roff's `\\-` read as `-`."""
    text = MAN_PAGE.read_text().replace("\\-", "-")
    parts = re.split(r"^\.SH (.+)$", text, flags=re.MULTILINE)
    return {name.strip('"'): body for name, body in zip(parts[1::2], parts[2::2])}


def _man_synopsis() -> tuple[str, dict[str, str]]:
    """SYNOPSIS as the global lines and one entry per `.B binfmtd COMMAND` line."""
    global_lines: list[str] = []
    entries: dict[str, str] = {}
    for chunk in re.split(r"^\.(?:br|PP)$", _man_sections()["SYNOPSIS"], flags=re.MULTILINE):
        match = re.match(r"\s*\.B binfmtd (\w[\w-]*)\s*$", chunk, flags=re.MULTILINE)
        if match:
            entries[match.group(1)] = chunk
        else:
            global_lines.append(chunk)
    return "\n".join(global_lines), entries


def _man_command_entries() -> list[str]:
    """The commands that COMMANDS describes, each a `.TP` tag `.B NAME`."""
    return re.findall(r"^\.TP\n\.B (\w[\w-]*)$", _man_sections()["COMMANDS"], flags=re.MULTILINE)


def test_the_helpers_see_what_the_parser_has() -> None:
    """A positive control for the helpers: they see what the parser really has."""
    assert {"status", "sync", "run", "remove", "register", "unregister", "doctor"} <= set(
        COMMANDS)
    assert {"-v", "--verbose", "--json"} <= set(_words(COMMANDS["status"]))
    assert "SYSTEM" in _words(COMMANDS["unregister"])
    assert "journal" in _words(COMMANDS["run"])
    assert {"--config", "--binfmt-misc", "--nix-conf", "--version"} <= set(GLOBAL_WORDS)


def test_readme_and_man_page_document_exactly_the_parsers_commands() -> None:
    assert sorted(_readme_commands()[1]) == sorted(COMMANDS), "README.md's Commands section"
    assert sorted(_man_synopsis()[1]) == sorted(COMMANDS), "binfmtd(8) SYNOPSIS"
    assert sorted(_man_command_entries()) == sorted(COMMANDS), "binfmtd(8) COMMANDS"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_a_command_is_in_its_synopsis_in_both_docs(command: str) -> None:
    readme = _readme_commands()[1].get(command, "")
    man = _man_synopsis()[1].get(command, "")
    # The global options, which each command takes too, are documented once for all.
    words = [w for w in _words(COMMANDS[command]) if w not in GLOBAL_WORDS]
    assert [w for w in words if not _mentions(readme, w)] == [], f"README.md: {command}"
    assert [w for w in words if not _mentions(man, w)] == [], f"binfmtd(8): {command}"


def test_every_global_option_is_in_both_docs() -> None:
    readme = _readme_commands()[0]
    man = _man_synopsis()[0]
    options = _man_sections()["OPTIONS"]
    assert [w for w in GLOBAL_WORDS if not _mentions(readme, w)] == [], "README.md"
    assert [w for w in GLOBAL_WORDS if not _mentions(man, w)] == [], "binfmtd(8) SYNOPSIS"
    assert [w for w in GLOBAL_WORDS if not _mentions(options, w)] == [], "binfmtd(8) OPTIONS"
