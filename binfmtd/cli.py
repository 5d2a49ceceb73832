"""binfmtd's command line: the parser, one table of commands, and main's error boundary.

The contract is in README.md and binfmtd(8). Each command's work is a function in
binfmtd/commands/, imported only when that command runs: `binfmtd status` loads nothing of
the daemon or of emulation. A command that reads Nix's view of nix.conf has it started as
soon as the paths are known, so that Nix runs beside the rest of binfmtd's start-up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Callable, NamedTuple, Optional

from . import __version__
from .asknix import ask_nix
from .config import read_config
from .errors import EXIT_ERROR, BinfmtdError
from .host import DEFAULT_BINFMT_MISC, DEFAULT_CONFIG, DEFAULT_NIX_CONF, Named, find_host

EXIT_STATUS = """exit status:
  0  done; in sync, no problem
  1  status: out of sync, a problem, or nix-daemon has not read nix.conf;
     sync --check: sync would change something; register, doctor: a system failed
  2  an error, said in one line on stderr"""


class Command(NamedTuple):
    """One command: its line in --help, its options, and the function that does it."""

    summary: str
    options: Callable[[argparse.ArgumentParser], None]
    body: str  # "module:function" in binfmtd.commands
    reads_nix: bool = False  # start Nix's reading of nix.conf before the body is imported


def _status_options(status: argparse.ArgumentParser) -> None:
    _json(status)
    status.add_argument("-v", "--verbose", action="store_true",
                        help="show each handler Nix has no system for on its own line")


def _sync_options(sync: argparse.ArgumentParser) -> None:
    sync.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 if sync would change nix.conf")
    sync.add_argument("--diff", action="store_true", help="print a unified diff of the change")
    _json(sync)
    _no_restart(sync)


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--no-restart", action="store_true", help="never restart nix-daemon")
    run.add_argument("--log-format", choices=("auto", "console", "json", "journal"),
                     default="auto", help="auto: the journal under systemd, else console")


def _register_options(register: argparse.ArgumentParser) -> None:
    register.add_argument("systems", nargs="*", metavar="SYSTEM",
                          help="a Nix system such as aarch64-linux (default: emulated-systems)")
    _no_restart(register)


def _unregister_options(unregister: argparse.ArgumentParser) -> None:
    unregister.add_argument("systems", nargs="+", metavar="SYSTEM",
                            help="a Nix system binfmtd registered, such as aarch64-linux")
    _no_restart(unregister)


def _builder_options(builder: argparse.ArgumentParser) -> None:
    builder.add_argument("--uri", type=_word, metavar="URI",
                         help="how clients reach it (default ssh://root@HOSTNAME)")
    builder.add_argument("--ssh-key", type=_word, metavar="PATH",
                         help="the client's private key for it (default: ssh's own)")
    builder.add_argument("--jobs", type=_positive, metavar="N",
                         help="builds at once (default: Nix's max-jobs here)")
    builder.add_argument("--speed", type=_positive, default=1, metavar="N",
                         help="speed factor against other builders (default 1)")
    builder.add_argument("--mandatory-feature", action="append", default=[], type=_word,
                         metavar="FEATURE", help="take only builds that require it (repeat)")
    _json(builder)


def _json(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="print one JSON object")


def _no_restart(command: argparse.ArgumentParser) -> None:
    command.add_argument("--no-restart", action="store_true", help="do not restart nix-daemon")


COMMANDS: dict[str, Command] = {
    "status": Command("show what is registered, what Nix is told, and whether nix-daemon "
                      "has read it", _status_options, "status:status", reads_nix=True),
    "sync": Command("bring nix.conf in line once, then exit", _sync_options, "sync:sync"),
    "run": Command("the daemon, in the foreground (for systemd)", _run_options, "run:run"),
    "register": Command("register a static emulator for each system, then sync",
                        _register_options, "emulation:register"),
    "unregister": Command("remove what register made, and nothing else, then sync",
                          _unregister_options, "emulation:unregister"),
    "doctor": Command("prove that each platform really builds", _json, "emulation:doctor",
                      reads_nix=True),
    "builder-line": Command("print this machine's line for Nix clients' /etc/nix/machines",
                            _builder_options, "status:builder_line", reads_nix=True),
    "remove": Command("take binfmtd's block out of nix.conf", _no_restart, "sync:remove"),
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. The global options are taken before or after the command."""
    global_options = _global_options()
    parser = argparse.ArgumentParser(
        prog="binfmtd", epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Keep Nix's extra platforms and sandbox paths in step with binfmt_misc.",
        parents=[global_options])
    parser.add_argument("--version", action="version", version=f"binfmtd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.summary, description=command.summary,
                                  epilog=EXIT_STATUS, parents=[global_options],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        command.options(sub)
    return parser


def _global_options() -> argparse.ArgumentParser:
    """--config, --binfmt-misc, --nix-conf, before the command or after it. Absent unless
    given (SUPPRESS), so that one given after the command is not undone by the top-level
    parser's default, nor the reverse."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="PATH",
                        help=f"config.toml (default {DEFAULT_CONFIG}, optional; "
                             "env BINFMTD_CONFIG)")
    parser.add_argument("--binfmt-misc", metavar="DIR",
                        help=f"binfmt_misc folder (default {DEFAULT_BINFMT_MISC}; "
                             "env BINFMTD_BINFMT_MISC)")
    parser.add_argument("--nix-conf", metavar="PATH",
                        help=f"nix.conf (default {DEFAULT_NIX_CONF}; env BINFMTD_NIX_CONF)")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _word(text: str) -> str:
    """A field of the machines file: Nix splits its lines on whitespace."""
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} must be one word: the machines file "
                                         "splits its fields on whitespace")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, find the paths, read config.toml, run the command; every error one line,
    exit 2 (a bug too: its traceback first, never exit 1, which means "out of sync")."""
    args = build_parser().parse_args(argv)
    try:
        host = find_host(Named(getattr(args, "binfmt_misc", None),
                               getattr(args, "nix_conf", None), getattr(args, "config", None)))
        config = read_config(host.config, required=host.config_required)
        command = COMMANDS[args.command]
        nix = ask_nix(host, config) if command.reads_nix else None
        try:
            return _body(command)(args, host, config, nix)
        finally:
            if nix is not None:
                nix.close()
    except BinfmtdError as error:
        print(f"binfmtd: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        print("binfmtd: internal error (a bug in binfmtd; please report it with the "
              "traceback above)", file=sys.stderr)
        return EXIT_ERROR


def _body(command: Command) -> Callable[..., int]:
    """The command's function, its module imported now: what other commands need is not."""
    module, function = command.body.split(":")
    body: Callable[..., int] = getattr(importlib.import_module(f"binfmtd.commands.{module}"),
                                       function)
    return body
