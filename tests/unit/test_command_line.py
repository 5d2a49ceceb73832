"""The command line: global options before or after the command mean the same; every
command in the table has a function; --help says what each command does and the exit codes."""

from __future__ import annotations

import importlib

import pytest

from binfmtd.cli import COMMANDS, build_parser

GLOBALS = ["--config", "/etc/c.toml", "--nix-conf", "/tmp/n/nix.conf", "--binfmt-misc", "/x"]
COMMAND_LINES = [
    ["status", "--json", "-v"],
    ["sync", "--check", "--json"],
    ["run", "--log-format", "json", "--no-restart"],
    ["register", "aarch64-linux", "riscv64-linux"],
    ["unregister", "aarch64-linux"],
    ["doctor", "--json"],
    ["builder-line", "--uri", "ssh://b", "--jobs", "4", "--mandatory-feature", "kvm"],
    ["remove", "--no-restart"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda argv: argv[0])
def test_global_options_before_or_after_the_command_mean_the_same(argv: list[str]) -> None:
    before = vars(build_parser().parse_args([*GLOBALS, *argv]))
    after = vars(build_parser().parse_args([*argv, *GLOBALS]))
    assert before == after
    assert (before["config"], before["nix_conf"], before["binfmt_misc"]) == (
        "/etc/c.toml", "/tmp/n/nix.conf", "/x")


def test_an_option_after_the_command_wins_over_one_before_it() -> None:
    args = build_parser().parse_args(["--nix-conf", "/a/nix.conf", "status",
                                      "--nix-conf", "/b/nix.conf"])
    assert args.nix_conf == "/b/nix.conf"
    assert not hasattr(build_parser().parse_args(["status"]), "nix_conf")  # not given: unset


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_a_function_and_a_line_in_help(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, function = COMMANDS[name].body.split(":")
    assert callable(getattr(importlib.import_module(f"binfmtd.commands.{module}"), function))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    main_help = capsys.readouterr().out
    assert COMMANDS[name].summary.split()[0] in main_help and "exit status:" in main_help
    with pytest.raises(SystemExit):
        build_parser().parse_args([name, "--help"])
    own_help = capsys.readouterr().out
    assert " ".join(COMMANDS[name].summary.split()) in " ".join(own_help.split())
    assert "2  an error" in own_help


def test_a_mistake_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["statsu"])
    said = capsys.readouterr().err
    assert all(name in said for name in COMMANDS), said
