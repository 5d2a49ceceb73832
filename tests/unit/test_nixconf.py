"""The nix.conf editor: every byte outside the block survives sync and remove."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binfmtd.nixconf import (
    BEGIN_MARKER,
    END_MARKER,
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


@settings(max_examples=500)
@given(NIX_CONF, NIX_CONF)
def test_a_block_in_the_middle_is_moved_last_and_text_after_it_kept(
    before: str, after: str
) -> None:
    middle = with_block(before, BLOCK) + after
    fixed = with_block(middle, OTHER_BLOCK)
    assert fixed.endswith(OTHER_BLOCK or "")
    assert without_block(fixed) == without_block(middle)


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
