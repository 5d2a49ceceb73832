"""The command line builds only the named command's options; it must read every command
line exactly as the full parser does."""

from __future__ import annotations

import pytest

from binfmtd.cli import build_parser, command_in

COMMAND_LINES = [
    ["status"],
    ["status", "--json", "-v"],
    ["--config", "/etc/c.toml", "--nix-conf", "/tmp/n/nix.conf", "sync", "--check", "--json"],
    ["--config", "sync", "status"],  # a global option's value that names a command
    ["run", "--log-format", "json", "--no-restart"],
    ["register", "aarch64-linux", "riscv64-linux"],
    ["unregister", "aarch64-linux"],
    ["doctor", "--json"],
    ["builder-line", "--uri", "ssh://b", "--jobs", "4", "--mandatory-feature", "kvm"],
    ["--binfmt-misc", "/x", "remove", "--no-restart"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda argv: " ".join(argv))
def test_the_partial_parser_reads_a_command_line_as_the_full_one(argv: list[str]) -> None:
    assert vars(build_parser(command_in(argv)).parse_args(argv)) == vars(
        build_parser().parse_args(argv))


def test_the_command_is_found_after_global_options_and_their_values() -> None:
    assert command_in(["--config", "sync", "status"]) == "status"
    assert command_in(["--nix-conf", "/x", "builder-line"]) == "builder-line"
    assert command_in(["statsu"]) is None  # a typo: the full parser says what is valid
    assert command_in(["--help", "status"]) is None
    assert command_in([]) is None


def test_help_and_mistakes_still_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser(command_in(["statsu"])).parse_args(["statsu"])
    said = capsys.readouterr().err
    assert all(name in said for name in ("status", "sync", "builder-line", "remove")), said
