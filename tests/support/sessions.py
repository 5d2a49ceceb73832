"""The shell sessions README.md and docs/ show: each `$ command` line, and the lines under
it that it says it prints. tests/system/test_docs_story.py runs them in a booted Debian;
tests/unit/test_docs.py checks that every one is run there or named as not run, with why.

A session is a block indented four spaces whose first line starts with `$ `. A shown line
may hold `…`, which stands for any text (a store hash, a key); the shown lines must appear
in the output in order, others may come between them.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from tests.support.parts import REPO

# The documents whose sessions are run, in the order the story runs them in one machine:
# README's install and first build, then what the other documents show on top of it.
DOCUMENTS = ("README.md", "docs/farm.md", "docs/design.md", "docs/development.md")

# What no test runs, and why (tests/unit/test_docs.py keeps this list to what the docs show).
NOT_RUN = {
    "make rpm": "the packaging tier builds it (tests/packaging/test_rpm.py)",
    "sudo dnf install ./dist/binfmtd-0.1.0-1.noarch.rpm": "no Fedora here",
    "sudo systemctl enable --now binfmtd": "Fedora's step; the .deb enables it by itself",
    "pipx install .": "run on the host (tests/packaging/test_pipx.py): the machine has no network",
}


class Step(NamedTuple):
    document: str
    command: str  # without the `$ `
    shown: tuple[str, ...]  # what the document says it prints


def steps(document: str) -> list[Step]:
    """Every `$ ` line of `document`'s sessions, in order, with the lines shown under it."""
    found: list[Step] = []
    for block in re.findall(r"(?:^    .*\n?)+", (REPO / document).read_text(), re.MULTILINE):
        lines = [line[4:] for line in block.splitlines()]
        if not lines or not lines[0].startswith("$ "):
            continue
        for line in lines:
            if line.startswith("$ "):
                found.append(Step(document, line[2:], ()))
            elif line.strip():
                last = found[-1]
                found[-1] = last._replace(shown=(*last.shown, line.rstrip()))
    return found


def every_step() -> list[Step]:
    return [step for document in DOCUMENTS for step in steps(document)]


def shows(output: str, shown: tuple[str, ...]) -> bool:
    """Whether `output` holds the `shown` lines in order (`…` standing for any text)."""
    lines = iter(line.rstrip() for line in output.splitlines())
    for want in shown:
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("…")) + r"\Z")
        if not any(pattern.match(line) for line in lines):
            return False
    return True
