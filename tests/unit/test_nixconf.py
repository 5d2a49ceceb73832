"""The nix.conf editor: every byte outside the block survives sync and remove."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binfmtd.nixconf import (
    BEGIN_MARKER,
    END_MARKER,
    NIX_WHITESPACE,
    BrokenBlock,
    find_block,
    render_block,
    settings_after_block,
    unsafe_path_reason,
    with_block,
    without_block,
)

BLOCK = render_block(["aarch64-linux", "riscv64-linux"], ["/usr/bin/qemu-riscv64-static"])
OTHER_BLOCK = render_block(["s390x-linux"], [])

# Text as users write nix.conf: settings, comments, CRLF, tabs, odd bytes, no final newline.
LINE = st.one_of(
    st.sampled_from([
        "sandbox = true", "extra-platforms = i686-linux", "trusted-users = root @wheel",
        "# a comment", "", "   ", "\t", "!include nix.custom.conf", "platforms=x",
        "substituters = https://cache.example", "# BEGIN something else",
    ]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
)
NIX_CONF = st.builds(
    lambda lines, sep, tail: sep.join(lines) + tail,
    st.lists(LINE, max_size=12),
    st.sampled_from(["\n", "\r\n"]),
    st.sampled_from(["", "\n", "\r\n", "\n\n"]),
).filter(lambda text: "binfmtd managed block" not in text)


@settings(max_examples=1000)
@given(NIX_CONF)
def test_sync_then_remove_gives_the_file_back_byte_for_byte(original: str) -> None:
    synced = with_block(original, BLOCK)
    assert without_block(synced) == original


@settings(max_examples=500)
@given(NIX_CONF)
def test_sync_is_idempotent_and_keeps_the_block_last(original: str) -> None:
    once = with_block(original, BLOCK)
    assert with_block(once, BLOCK) == once
    assert once.endswith(END_MARKER + "\n")
    assert once.startswith(original)


# --- every byte outside the block survives, wherever the block is ------------------------

# Lines an admin's nix.conf holds, near the block's own: settings, comments, includes,
# indents, things that look like markers and are not, odd whitespace and Unicode.
FILE_LINE = st.one_of(
    st.sampled_from([
        "sandbox = true", "max-jobs = 8", "# my settings", "", "  ", "\t# indented",
        "include extra.conf", "!include nix.custom.conf", "  include ./conf.d/more.conf",
        "extra-platforms = i686-linux", "# BEGIN binfmtd managed block",
        f"{BEGIN_MARKER} (old)", f"#{END_MARKER}", "trusted-users = root @wheel",
    ]),
    st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)),
            max_size=30),
)
PLATFORMS = st.lists(st.sampled_from(["aarch64-linux", "riscv64-linux", "s390x-linux"]),
                     min_size=1, unique=True)


class Placed(NamedTuple):
    """A nix.conf with (or without) a block, and the file it must give back without it."""

    text: str
    expected: str  # every byte outside the block; at the end, the newline before it is its
    platforms: tuple[str, ...]  # what the block in `text` declares
    kinds: frozenset[str]


@st.composite
def placed_blocks(draw: st.DrawFn, where: str) -> Placed:
    """A file of admin's lines with the block `where`: at the end (as binfmtd wrote it, or
    pasted there by hand), at the start, in the middle, or nowhere; indented or not, CRLF or
    not, with or without a final newline and an include line."""
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = draw(st.lists(FILE_LINE, min_size=0 if where in ("none", "end") else 2,
                          max_size=8))
    kinds = {where, *(["crlf"] if eol == "\r\n" else [])}
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))),
                     draw(st.sampled_from(["include extra.conf", "!include nix.custom.conf",
                                           "  include ./conf.d/more.conf # local"])))
    if any(NIX_WHITESPACE.split(line.strip())[0] in ("include", "!include") for line in lines):
        kinds.add("includes")
    if where in ("start", "middle") and not lines[-1]:
        lines[-1] = "max-jobs = 8"  # something follows the block, even without a newline
    lines = [line + eol for line in lines]
    final_newline = draw(st.booleans())
    if not final_newline and lines and where != "end":
        lines[-1] = lines[-1][:-len(eol)]
    if where == "none":
        text = "".join(lines)
        return Placed(text, text, (), frozenset(kinds | ({"no final newline"}
                                                         if text and not final_newline
                                                         else set())))
    platforms = tuple(sorted(draw(PLATFORMS)))
    indent = draw(st.sampled_from(["", "  ", "\t"]))
    block = "".join(indent + line + "\n"
                    for line in (render_block(platforms, ()) or "").splitlines())
    kinds |= {"indented"} if indent else set()
    if where == "end":
        before = "".join(lines)
        if before and draw(st.booleans()):  # binfmtd's own: a newline of its own before it
            before += "\n"
        if not final_newline:  # the block itself without a final newline
            block = block[:-1]
            kinds.add("no final newline")
        return Placed(before + block, before[:-1] if before else "", platforms,
                      frozenset(kinds))
    kinds |= set() if final_newline else {"no final newline"}
    at = 0 if where == "start" else draw(st.integers(1, len(lines) - 1))
    before, after = "".join(lines[:at]), "".join(lines[at:])
    return Placed(before + block + after, before + after, platforms, frozenset(kinds))


PLACEMENTS = ("none", "end", "start", "middle")
PLACEMENT_EXAMPLES = 200  # for each placement
# Each property is drawn about half the time; a tenth is the floor below which the
# strategy no longer makes the files the property is about.
MIN_SHARE = 0.10
PROPERTY_KINDS = ("no final newline", "includes", "indented", "crlf")


@pytest.mark.parametrize("where", PLACEMENTS)
def test_every_byte_outside_the_block_survives_sync_and_remove(where: str) -> None:
    """Wherever the block is, sync gives the file without it plus the new block at the end,
    and remove gives the file without it; nothing of the admin's lines is lost or glued."""
    kinds: Counter[str] = Counter()

    # derandomize: the same examples every run, so the shares below are a figure, not luck
    @settings(max_examples=PLACEMENT_EXAMPLES, database=None, derandomize=True)
    @given(placed_blocks(where))
    def check(placed: Placed) -> None:
        kinds.update(placed.kinds)
        found = find_block(placed.text)
        assert (found.platforms if found else ()) == placed.platforms
        assert without_block(placed.text) == placed.expected
        synced = with_block(placed.text, BLOCK)
        assert synced == placed.expected + ("\n" if placed.expected else "") + (BLOCK or "")
        assert with_block(synced, BLOCK) == synced
        assert without_block(synced) == placed.expected

    check()
    assert kinds[where] == PLACEMENT_EXAMPLES, kinds  # hypothesis ran them all
    wanted = [k for k in PROPERTY_KINDS if not (where == "none" and k == "indented")]
    shares = {kind: kinds[kind] / PLACEMENT_EXAMPLES for kind in wanted}
    print(f"block {where}: shares of generated files:",
          {k: f"{v:.0%}" for k, v in shares.items()})
    assert all(share >= MIN_SHARE for share in shares.values()), shares


def test_a_block_moved_between_two_lines_leaves_them_on_their_own_lines() -> None:
    """The admin's report: the block moved by hand between a comment and a setting."""
    moved = f"# my settings\n{BLOCK}max-jobs = 8\n"
    assert with_block(moved, BLOCK) == f"# my settings\nmax-jobs = 8\n\n{BLOCK}"
    assert without_block(moved) == "# my settings\nmax-jobs = 8\n"


def test_the_block_declares_with_extra_extra_platforms_and_optional_paths() -> None:
    assert BLOCK is not None
    lines = BLOCK.splitlines()
    assert lines[0] == BEGIN_MARKER and lines[-1] == END_MARKER
    assert "extra-extra-platforms = aarch64-linux riscv64-linux" in lines
    assert "extra-sandbox-paths = /usr/bin/qemu-riscv64-static?" in lines
    assert not any(line.startswith("extra-platforms") for line in lines)


def test_nothing_to_declare_means_no_block_at_all() -> None:
    assert render_block([], []) is None
    assert with_block("sandbox = true\n", None) == "sandbox = true\n"
    synced = with_block("sandbox = true\n", BLOCK)
    assert with_block(synced, None) == "sandbox = true\n"


@pytest.mark.parametrize(
    ("original", "synced_prefix"),
    [
        ("", ""),
        ("a = 1", "a = 1\n"),
        ("a = 1\n", "a = 1\n\n"),
        ("a = 1\r\n", "a = 1\r\n\n"),
    ],
)
def test_where_the_block_starts(original: str, synced_prefix: str) -> None:
    assert with_block(original, BLOCK) == synced_prefix + (BLOCK or "")


def test_find_block_reads_back_what_was_declared() -> None:
    block = find_block(with_block("x = 1\n", BLOCK))
    assert block is not None
    assert block.platforms == ("aarch64-linux", "riscv64-linux")
    assert block.sandbox_paths == ("/usr/bin/qemu-riscv64-static",)


@pytest.mark.parametrize(
    "damaged",
    [
        f"a = 1\n{BEGIN_MARKER}\nextra-extra-platforms = x\n",  # BEGIN without END
        f"a = 1\n{END_MARKER}\n",  # END without BEGIN
        f"{END_MARKER}\n{BEGIN_MARKER}\n",  # in the wrong order
        f"{BLOCK}{BLOCK}",  # two blocks
        f"{BEGIN_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",  # nested
    ],
)
def test_a_damaged_block_is_refused_not_guessed(damaged: str) -> None:
    with pytest.raises(BrokenBlock, match="by hand"):
        with_block(damaged, BLOCK)
    with pytest.raises(BrokenBlock):
        without_block(damaged)


def test_markers_with_crlf_are_still_found() -> None:
    crlf = (with_block("a = 1\r\n", BLOCK) or "").replace("\n", "\r\n")
    assert find_block(crlf) is not None


def test_settings_after_the_block_that_override_it_are_found() -> None:
    text = with_block("a = 1\n", BLOCK) + "# fine\nextra-platforms = x86_64-linux\nkeep = 1\n"
    overriding = settings_after_block(text, find_block(text))
    assert [(s.key, s.value) for s in overriding] == [("extra-platforms", "x86_64-linux")]
    assert overriding[0].line == text.count("\n") - 1
    last = with_block("a = 1\n", BLOCK) + "# only a comment\n\n"
    assert settings_after_block(last, find_block(last)) == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/usr/bin/qemu-aarch64-static", None),
        ("/opt/emu/bin/qemu+x_1.2", None),
        ("relative/qemu", "absolute"),
        ("/opt/my emu/qemu", "' '"),
        ("/opt/emu\ntrusted-users = evil", "'\\n'"),
        ("/opt/a=b", "'='"),
        ("/opt/a#b", "'#'"),
        ("/opt/a\tb", "'\\t'"),
        ("/opt/a\x1bb", "'\\x1b'"),
    ],
)
def test_unsafe_paths_are_named(path: str, reason: str | None) -> None:
    found = unsafe_path_reason(path)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


# --- and Nix itself reads every setting but binfmtd's the same after sync --------------

# Settings Nix 2.8 to 2.34 all take, includes of a file that is there and of one that is not.
NIX_LINE = st.sampled_from([
    "max-jobs = 8", "cores = 3", "sandbox = false", "connect-timeout = 7", "# a comment", "",
    "  keep-outputs = true", "include extra.conf", "!include absent.conf",
    "extra-platforms = i686-linux", "trusted-users = root @wheel", "\tfallback = true",
])
MANAGED_SETTINGS = ("extra-platforms", "sandbox-paths")
NIX_EXAMPLES = 20  # two `nix show-config` runs each, about 60 ms


def nix_reads(nix: str, folder: Path, text: str) -> dict[str, str]:
    """What Nix derives from `text` as the nix.conf in `folder` (no user files)."""
    (folder / "nix.conf").write_text(text)
    shown = subprocess.run([nix, "--extra-experimental-features", "nix-command", "show-config"],
                           env={**os.environ, "NIX_CONF_DIR": str(folder),
                                "NIX_USER_CONF_FILES": "/dev/null"},
                           capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(line.split(" = ", 1) for line in shown.splitlines() if " = " in line)


def test_nix_reads_every_setting_but_binfmtds_the_same_after_sync(
    nix: str, tmp_path: Path
) -> None:
    (tmp_path / "extra.conf").write_text("builders-use-substitutes = true\n")
    moved: Counter[str] = Counter()

    @settings(max_examples=NIX_EXAMPLES, database=None, derandomize=True)
    @given(st.lists(NIX_LINE, min_size=2, max_size=6), st.sampled_from(["start", "middle", "end"]),
           st.booleans())
    def check(lines: list[str], where: str, final_newline: bool) -> None:
        at = {"start": 0, "middle": len(lines) // 2, "end": len(lines)}[where]
        moved[where] += 1
        text = "\n".join([*lines[:at], *(OTHER_BLOCK or "").splitlines(), *lines[at:]])
        text += "\n" if final_newline else ""
        before = nix_reads(nix, tmp_path, text)
        after = nix_reads(nix, tmp_path, with_block(text, BLOCK))
        for key in MANAGED_SETTINGS:
            before.pop(key), after.pop(key)
        assert after == before

    check()
    assert moved["middle"] >= NIX_EXAMPLES // 10, moved
