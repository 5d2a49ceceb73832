"""Whatever text a /proc entry holds, parsing never raises and never yields a multi-line path."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from binfmtd.binfmt import Handler, MalformedEntry, parse_entry

GOOD = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n"
        "magic 7f454c460201010000000000000000000200b700\n"
        "mask ffffffffffffff00fffffffffffffffffeffffff\n")


@settings(max_examples=2000)
@given(st.text(max_size=400))
def test_any_text(text: str) -> None:
    entry = parse_entry("fuzz", text)
    assert isinstance(entry, (Handler, MalformedEntry))
    if isinstance(entry, Handler):
        assert "\n" not in entry.interpreter


@settings(max_examples=2000)
@given(st.integers(0, len(GOOD)), st.text(max_size=40))
def test_a_real_entry_with_text_spliced_in(at: int, inserted: str) -> None:
    entry = parse_entry("fuzz", GOOD[:at] + inserted + GOOD[at:])
    if isinstance(entry, Handler):
        assert "\n" not in entry.interpreter
        assert entry.flags <= frozenset("POCF")
