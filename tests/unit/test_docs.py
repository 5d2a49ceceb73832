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


# --- README for users first; docs/ linked and in step ------------------------------------

DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS, *sorted((ROOT / "packaging").glob("*/README.md"))]
FIRST_SCREEN = 60  # lines: what a newcomer sees before scrolling far


def test_readme_is_short_and_its_first_screen_is_for_users() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    first = "\n".join(lines[:FIRST_SCREEN])
    for shown in ("apt-get install ./dist/", "dnf install ./dist/", "binfmtd doctor"):
        assert shown in first, shown
    for hidden in ("make test", "pytest", "mutant", "make bench"):
        assert hidden not in first, hidden


def _links(path: Path) -> list[str]:
    """The relative targets of a Markdown file's links (not web addresses, not anchors)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_the_helper_finds_links() -> None:
    """A positive control: README links into docs/ (each of design, farm, RELIABILITY,
    development), so an empty list below means nothing was read."""
    assert {"docs/design.md", "docs/farm.md", "docs/RELIABILITY.md",
            "docs/development.md"} <= set(_links(README))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    missing = [t for t in _links(path)
               if not (path.parent / t.split("#", 1)[0]).resolve().exists()]
    assert missing == []


@pytest.mark.parametrize("path", [*MARKDOWN, MAN_PAGE], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_the_docs_name_exists(path: Path) -> None:
    """`tests/x/test_y.py::test_z` in prose is a claim that the test proves something."""
    missing = []
    for where, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", path.read_text()):
        module = ROOT / where
        if not module.exists() or (name and not re.search(
                rf"^(async )?def {name}\b", module.read_text(), flags=re.MULTILINE)):
            missing.append(f"{where}::{name}" if name else where)
    assert missing == []


def test_the_man_page_has_the_sections_a_service_is_expected_to_have() -> None:
    assert {"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "ENVIRONMENT",
            "SIGNALS", "EXIT STATUS", "FILES", "SEE ALSO"} <= set(_man_sections())


def test_the_man_page_names_every_variable_binfmtd_reads() -> None:
    """Each name the code reads from the environment is in ENVIRONMENT."""
    code = "\n".join(p.read_text() for p in (ROOT / "binfmtd").rglob("*.py"))
    read = set(re.findall(r"environ\.get\(\"([A-Z_]+)\"", code))
    read |= set(re.findall(r"\"(BINFMTD_[A-Z_]+)\",\s+DEFAULT_", code))  # host.py's paths
    assert {"NO_COLOR", "NOTIFY_SOCKET", "BINFMTD_NIX_CONF", "BINFMTD_BINFMT_D"} <= read
    environment = _man_sections()["ENVIRONMENT"].replace("\\_", "_")
    read.discard("NIX_CONF_DIR")  # nix-daemon's, read from /proc, not binfmtd's own
    assert sorted(v for v in read if not _mentions(environment, v)) == []


def test_exit_statuses_agree_in_help_readme_and_man_page() -> None:
    from binfmtd.errors import EXIT_ATTENTION, EXIT_ERROR, EXIT_OK

    codes = {EXIT_OK, EXIT_ATTENTION, EXIT_ERROR}
    assert codes == {0, 1, 2}
    man = set(re.findall(r"^\.B (\d)$", _man_sections()["EXIT STATUS"], flags=re.MULTILINE))
    readme = set(re.findall(r"^\| (\d) \|", README.read_text(), flags=re.MULTILINE))
    helped = set(re.findall(r"^\s+(\d)\s", PARSER.format_help(), flags=re.MULTILINE))
    assert {str(c) for c in codes} == man == readme == helped


def test_every_config_key_is_in_the_readme_the_man_page_and_the_default_file() -> None:
    from binfmtd.config import KEYS

    files = _man_sections()["FILES"]
    readme = README.read_text().split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    shipped = (ROOT / "packaging" / "config.toml").read_text()
    for key in KEYS:
        assert _mentions(files, key), f"binfmtd(8) FILES: {key}"
        assert _mentions(readme, key), f"README.md Configuration: {key}"
        assert _mentions(shipped, key), f"packaging/config.toml: {key}"


def test_every_session_the_docs_show_is_run_or_said_why_not() -> None:
    """tests/system/test_docs_story.py runs every `$ ` step but those in NOT_RUN; an entry
    there that the docs no longer show goes."""
    from tests.support.sessions import NOT_RUN, every_step

    commands = [step.command for step in every_step()]
    assert {"sudo binfmtd register aarch64-linux", "sudo binfmtd doctor",
            'cat "$(nix-build --no-out-link hello.nix)"'} <= set(commands)
    assert set(NOT_RUN) <= set(commands), set(NOT_RUN) - set(commands)
    assert len(set(commands) - set(NOT_RUN)) >= 10


def test_a_shown_session_must_be_in_the_output_in_order() -> None:
    from tests.support.sessions import shows

    output = "aarch64-linux\n  [ok]   runs       a 132-byte program\nall good\n"
    assert shows(output, ("aarch64-linux", "  [ok]   runs       a … program", "all good"))
    assert not shows(output, ("all good", "aarch64-linux"))  # the order counts
    assert not shows(output, ("  [ok]   runs",))  # a whole line, not its start
    assert not shows(output, ("riscv64-linux",))
