"""Edit nix.conf: find, render and replace binfmtd's managed block, and nothing else.

binfmtd writes its block at the end of the file, after a newline of its own, so that
taking it out restores the bytes before it exactly, including whether the file ended
with a newline:

    <the user's file, untouched>\n
    # BEGIN binfmtd managed block: edits inside are overwritten
    ...
    # END binfmtd managed block\n

A block found anywhere else (moved by hand, a template that appends after it) is just
its own lines, BEGIN to END: the lines on each side of it stay as they are, each on its
own line. Everything here is pure: text in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Optional

BEGIN_MARKER = "# BEGIN binfmtd managed block: edits inside are overwritten"
END_MARKER = "# END binfmtd managed block"
WHY_EXTRA_EXTRA = (
    "# extra-extra-platforms appends to extra-platforms; "
    "a plain extra-platforms line would replace Nix's defaults"
)
PLATFORMS_KEY = "extra-extra-platforms"
SANDBOX_PATHS_KEY = "extra-sandbox-paths"
# Settings that, written after the block, would replace what it declares.
OVERRIDING_KEYS = frozenset(
    {"platforms", "extra-platforms", "sandbox-paths", "include", "!include"}
)
INCLUDE_KEYS = ("include", "!include")  # !include: a missing file is no error
# What Nix's tokenizer splits a line on (Python's own split() knows many more spaces).
NIX_WHITESPACE = re.compile(r"[ \t\r]+")
# Nix splits values on whitespace and reads `#` as a comment and `=` in a sandbox
# path as target=source: a path with any of them cannot be written faithfully.
UNSAFE_PATH = re.compile(r"[\s=#\"'\\\x00-\x1f\x7f]")


class BrokenBlock(ValueError):
    """The file's binfmtd markers are not one well-formed block; nobody may edit it."""


class Block(NamedTuple):
    """Where the managed block lies in a file, and what it declares."""

    start: int  # offset of the BEGIN line; at the end of the file, of binfmtd's newline
    end: int  # offset just past the END line
    platforms: tuple[str, ...]
    sandbox_paths: tuple[str, ...]


class Setting(NamedTuple):
    """One `key = value` line of a nix.conf, as Nix would read it."""

    line: int  # 1-based
    key: str
    value: str


def unsafe_path_reason(path: str) -> Optional[str]:
    """Why a path cannot go into a Nix setting, or None when it can."""
    if not path.startswith("/"):
        return "is not an absolute path"
    found = UNSAFE_PATH.search(path)
    if found:
        return f"contains {found.group()!r}, which Nix would misread in nix.conf"
    return None


def render_block(platforms: Sequence[str], sandbox_paths: Sequence[str]) -> Optional[str]:
    """The block's lines for these declarations; None when there is nothing to declare."""
    if not platforms and not sandbox_paths:
        return None
    lines = [BEGIN_MARKER, WHY_EXTRA_EXTRA]
    if platforms:
        lines.append(f"{PLATFORMS_KEY} = {' '.join(platforms)}")
    if sandbox_paths:
        lines.append(f"{SANDBOX_PATHS_KEY} = {' '.join(p + '?' for p in sandbox_paths)}")
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def find_block(text: str) -> Optional[Block]:
    """The managed block in `text`, None if there is none; BrokenBlock if it is damaged."""
    begins = _marker_offsets(text, BEGIN_MARKER)
    ends = _marker_offsets(text, END_MARKER)
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise BrokenBlock(
            f"has {len(begins)} BEGIN and {len(ends)} END binfmtd marker lines where one "
            "block is expected: remove the damaged block by hand, then run binfmtd sync"
        )
    begin, end_line = begins[0], ends[0]
    newline = text.find("\n", end_line)
    end = len(text) if newline < 0 else newline + 1
    # Last in the file, the block owns the newline binfmtd put before it (replace_block);
    # anywhere else only its lines: the lines around it must not be glued together.
    start = begin - 1 if end == len(text) and begin > 0 else begin
    inside = parse_settings(text[begin:end])
    platforms = _values(inside, PLATFORMS_KEY)
    sandbox = tuple(p[:-1] if p.endswith("?") else p for p in _values(inside, SANDBOX_PATHS_KEY))
    return Block(start, end, platforms, sandbox)


def _marker_offsets(text: str, marker: str) -> list[int]:
    """Offsets of the lines that are the marker, as Nix reads them: a comment, whatever
    whitespace (an indent, a CR) is around it."""
    pattern = re.compile(rf"^[ \t]*{re.escape(marker)}[ \t\r]*$", re.MULTILINE)
    return [found.start() for found in pattern.finditer(text)]


def _values(settings: Iterable[Setting], key: str) -> tuple[str, ...]:
    return tuple(word for s in settings if s.key == key for word in s.value.split())


def without_block(text: str) -> str:
    """The file as it was before binfmtd added its block."""
    return replace_block(text, find_block(text), None)


def with_block(text: str, block_text: Optional[str]) -> str:
    """The file with the managed block replaced by `block_text` at its end."""
    return replace_block(text, find_block(text), block_text)


def replace_block(text: str, found: Optional[Block], block_text: Optional[str]) -> str:
    """`text` without its block `found` (find_block's answer), `block_text` at the end."""
    user_text = text if found is None else text[:found.start] + text[found.end:]
    if block_text is None:
        return user_text
    separator = "\n" if user_text else ""
    return user_text + separator + block_text


def parse_settings(text: str) -> list[Setting]:
    """The settings and include lines of a nix.conf, read as Nix reads them: `#` starts a
    comment, words are split on whitespace, a setting is `KEY = VALUE...` (the `=` a word of
    its own) and an include names exactly one file. A line Nix would reject is left out:
    Nix says what is wrong with it when the file is validated."""
    settings = []
    for number, raw in enumerate(text.split("\n"), start=1):
        words = NIX_WHITESPACE.split(raw.split("#", 1)[0].strip(" \t\r"))
        if words[0] in INCLUDE_KEYS and len(words) == 2:
            settings.append(Setting(number, words[0], words[1]))
        elif len(words) >= 2 and words[1] == "=" and words[0] not in INCLUDE_KEYS:
            settings.append(Setting(number, words[0], " ".join(words[2:])))
    return settings


def settings_after_block(text: str, found: Optional[Block]) -> list[Setting]:
    """Lines after the block `found` that replace what it declares (it must be last)."""
    if found is None:
        return []
    offset_lines = text[:found.end].count("\n")
    after = parse_settings(text[found.end:])
    return [
        Setting(s.line + offset_lines, s.key, s.value)
        for s in after if s.key in OVERRIDING_KEYS
    ]


def included_files(text: str) -> list[str]:
    """The files that `include`/`!include` lines name, in order."""
    return [s.value for s in parse_settings(text) if s.key in INCLUDE_KEYS]
