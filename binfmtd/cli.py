"""binfmtd's command line: status, sync, run, remove (the contract is in README.md)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable, Optional

from . import __version__
from .errors import BinfmtdError

if TYPE_CHECKING:  # main() asks Nix first: argparse, pathlib and the core come after
    import argparse
    from collections.abc import Sequence
    from pathlib import Path

    from .apply import Outcome, World
    from .config import Config, Host
    from .nixtool import NixReading
    from .reconcile import Plan

EXIT_OK, EXIT_ATTENTION, EXIT_ERROR = 0, 1, 2


GLOBAL_OPTIONS_WITH_VALUES = ("--config", "--binfmt-misc", "--nix-conf")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line. With `command`, only that command's own options are built:
    building all nine costs `binfmtd status` more than reading binfmt_misc does.
    Without it (help, a mistake, the docs test), every command's."""
    import argparse
    import functools
    from pathlib import Path

    # argparse's formatter makes argparse import shutil (and zlib, bz2 and lzma with it)
    # to ask the terminal's width, for every argument added; given the width, it does not.
    formatter = functools.partial(argparse.HelpFormatter, width=_terminal_columns() - 2)
    parser = argparse.ArgumentParser(
        prog="binfmtd", formatter_class=formatter,
        description="Keep Nix's extra platforms and sandbox paths in step with binfmt_misc.",
    )
    parser.add_argument("--version", action="version", version=f"binfmtd {__version__}")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="config.toml (default /etc/binfmtd/config.toml, optional; "
                             "env BINFMTD_CONFIG)")
    parser.add_argument("--binfmt-misc", type=Path, metavar="DIR",
                        help="binfmt_misc folder (default /proc/sys/fs/binfmt_misc; "
                             "env BINFMTD_BINFMT_MISC)")
    parser.add_argument("--nix-conf", type=Path, metavar="PATH",
                        help="nix.conf (default /etc/nix/nix.conf; env BINFMTD_NIX_CONF)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_options) in COMMAND_OPTIONS.items():
        if command is None or name == command:
            add_options(commands.add_parser(name, help=summary, formatter_class=formatter))
    return parser


def _terminal_columns() -> int:
    """What shutil.get_terminal_size says: COLUMNS, else the terminal's, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(1).columns or 80
    except OSError:  # standard output is not a terminal
        return 80


def command_in(argv: Sequence[str]) -> Optional[str]:
    """The command named in argv, when it is plainly one (else None: build them all)."""
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help"):
            return None
        if word in GLOBAL_OPTIONS_WITH_VALUES:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMAND_OPTIONS else None
    return None


def _status_options(status: argparse.ArgumentParser) -> None:
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("-v", "--verbose", action="store_true",
                        help="show each handler Nix has no system for on its own line")


def _sync_options(sync: argparse.ArgumentParser) -> None:
    sync.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 if sync would change nix.conf")
    sync.add_argument("--diff", action="store_true", help="print a unified diff of the change")
    sync.add_argument("--json", action="store_true", help="print one JSON object")
    _no_restart(sync)


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--no-restart", action="store_true", help="never restart nix-daemon")
    run.add_argument("--log-format", choices=("auto", "console", "json", "journal"),
                     default="auto", help="auto: the journal under systemd, else console")


def _register_options(register: argparse.ArgumentParser) -> None:
    register.add_argument("systems", nargs="*", metavar="SYSTEM")
    _no_restart(register)


def _unregister_options(unregister: argparse.ArgumentParser) -> None:
    unregister.add_argument("systems", nargs="+", metavar="SYSTEM")
    _no_restart(unregister)


def _json_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="print one JSON object")


def _builder_options(builder: argparse.ArgumentParser) -> None:
    builder.add_argument("--uri", metavar="URI",
                         help="how clients reach it (default ssh://root@HOSTNAME)")
    builder.add_argument("--ssh-key", metavar="PATH",
                         help="the client's private key for it (default: ssh's own)")
    builder.add_argument("--jobs", type=_positive, metavar="N",
                         help="builds at once (default: Nix's max-jobs here)")
    builder.add_argument("--speed", type=_positive, default=1, metavar="N",
                         help="speed factor against other builders (default 1)")
    builder.add_argument("--mandatory-feature", action="append", default=[],
                         metavar="FEATURE", help="take only builds that require it (repeat)")
    _json_option(builder)


def _no_restart(command: argparse.ArgumentParser) -> None:
    command.add_argument("--no-restart", action="store_true", help="do not restart nix-daemon")


COMMAND_OPTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "status": ("what is registered and what Nix is told", _status_options),
    "sync": ("bring nix.conf in line once, then exit", _sync_options),
    "run": ("the daemon, in the foreground (for systemd)", _run_options),
    "register": ("register a static emulator for each system (default: emulated-systems "
                 "from config.toml), then sync", _register_options),
    "unregister": ("remove what register made, then sync", _unregister_options),
    "doctor": ("prove that each platform really builds", _json_option),
    "builder-line": ("this machine's line for Nix clients' /etc/nix/machines",
                     _builder_options),
    "remove": ("take binfmtd's block out of nix.conf", _no_restart),
}


DEFAULT_CONFIG = "/etc/binfmtd/config.toml"
DEFAULT_BINFMT_MISC = "/proc/sys/fs/binfmt_misc"
DEFAULT_NIX_CONF = "/etc/nix/nix.conf"
DEFAULT_BINFMT_D = "/etc/binfmt.d"


def _positive(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def host_from(args: argparse.Namespace) -> Host:
    """Paths from options, else BINFMTD_* variables, else the defaults; each checked to be
    what it should be (a folder, a file) and absolute, as the shell meant a relative one."""
    from .config import Host
    from .files import check_file, check_folder
    from .platforms import host_system

    binfmt_misc, binfmt_misc_from = _path(args.binfmt_misc, "--binfmt-misc",
                                          "BINFMTD_BINFMT_MISC", DEFAULT_BINFMT_MISC)
    nix_conf, nix_conf_from = _path(args.nix_conf, "--nix-conf", "BINFMTD_NIX_CONF",
                                    DEFAULT_NIX_CONF)
    config, config_from = _path(args.config, "--config", "BINFMTD_CONFIG", DEFAULT_CONFIG)
    binfmt_d, binfmt_d_from = _path(None, "", "BINFMTD_BINFMT_D", DEFAULT_BINFMT_D)
    check_folder(binfmt_misc, _hint(binfmt_misc_from, "binfmt_misc's folder",
                                    DEFAULT_BINFMT_MISC), must_exist=bool(binfmt_misc_from))
    # A nix.conf may be missing (sync makes it), but Nix reads no file of another name.
    check_file(nix_conf, _hint(nix_conf_from, "the nix.conf Nix reads", DEFAULT_NIX_CONF),
               must_exist=bool(nix_conf_from) and nix_conf.name != "nix.conf")
    check_file(config, _hint(config_from, "binfmtd's config.toml", DEFAULT_CONFIG),
               must_exist=bool(config_from), pipe_ok=True)
    check_folder(binfmt_d, _hint(binfmt_d_from, "the folder of binfmt.d lines",
                                 DEFAULT_BINFMT_D), must_exist=False)
    return Host(system=host_system(os.uname().machine), binfmt_misc=binfmt_misc,
                nix_conf=nix_conf, config=config, config_required=bool(config_from),
                binfmt_d=binfmt_d)


def _path(given: Optional[Path], option: str, variable: str,
          default: str) -> tuple[Path, str]:
    """The absolute path an option or variable names, else the default, and which named it
    ("" for the default)."""
    from pathlib import Path

    if given is not None and str(given):
        return Path(os.path.abspath(given)), option
    if os.environ.get(variable):
        return Path(os.path.abspath(os.environ[variable])), variable
    return Path(default), ""


def _hint(source: str, names: str, default: str) -> str:
    """What belongs at a path, and where it was named, for an error about it."""
    named = f"{source} names {names}" if source else f"{names} is here by default"
    return f"{named} (default {default})"


def _from_env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = command_in(words)
    early = _ask_nix_first(words) if command == "status" else None
    try:
        return _run(words, command, early)
    finally:
        if early is not None:
            early.close()


def _ask_nix_first(words: Sequence[str]) -> Optional[NixReading]:
    """`status`: Nix's reading of the nix.conf it will most likely be asked about,
    started before the command line is parsed, so that Nix's ~30 ms run beside binfmtd's
    own start-up. A guess: status.ask_nix uses it only for the very file the command
    line names. Not started where an option that starts like --nix-conf is given."""
    if any(word.startswith("--n") for word in words):
        return None
    from .nixtool import read_in_place

    try:
        return read_in_place(os.path.abspath(_from_env("BINFMTD_NIX_CONF", DEFAULT_NIX_CONF)))
    except BinfmtdError:  # Nix cannot run: status meets it again and says so
        return None


def _run(words: Sequence[str], command: Optional[str], early: Optional[NixReading]) -> int:
    from .config import read_config

    args = build_parser(command).parse_args(words)
    try:
        host = host_from(args)
        config = read_config(host.config, required=host.config_required)
        if args.command == "status":
            return cmd_status(args, host, config, early)
        return COMMANDS[args.command](args, host, config)
    except BinfmtdError as error:
        print(f"binfmtd: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: its traceback, and never exit 1, which means "out of sync"
        import traceback

        traceback.print_exc()
        print("binfmtd: internal error (a bug in binfmtd; please report it with the "
              "traceback above)", file=sys.stderr)
        return EXIT_ERROR


def cmd_status(args: argparse.Namespace, host: Host, config: Config,
               early: Optional[NixReading] = None) -> int:
    from .status import ask_nix

    reading = ask_nix(host, config, early)  # Nix reads nix.conf while binfmtd imports and reads
    from .apply import read_and_plan
    from .report import to_json, to_text
    from .status import gather_report

    looked = read_and_plan(host, config)
    report = gather_report(looked.world, looked.plan, host, config, reading)
    if args.json:
        print_json(to_json(report))
    else:
        print(to_text(report, verbose=args.verbose))
    return EXIT_OK if report.healthy else EXIT_ATTENTION


def cmd_sync(args: argparse.Namespace, host: Host, config: Config) -> int:
    from .apply import read_and_plan, reconcile_once
    from .report import to_json
    from .status import ask_nix, gather_report

    if not args.check:
        _register_missing(host, config)
    outcome = reconcile_once(host, config, write=not args.check, restart=not args.no_restart)
    world, planned = outcome.world, outcome.plan
    missing = _missing_systems(host, config, planned)
    if args.diff and planned.text is not None:
        sys.stdout.write(unified_diff(world, planned.text))
    _warn_problems(planned.problems)
    if args.check:
        would_change = planned.text is not None or bool(missing)
        if args.json:
            report = gather_report(world, planned, host, config, reading=None)
            print_json(to_json(report, changed=would_change))
        return EXIT_ATTENTION if would_change else EXIT_OK
    if args.json:
        reading = ask_nix(host, config)
        after = read_and_plan(host, config)
        report = gather_report(after.world, after.plan, host, config, reading)
        print_json(to_json(report, changed=outcome.written, restart=outcome.restart))
    elif not args.diff:
        print(_sync_summary(outcome))
    return EXIT_OK


def _missing_systems(host: Host, config: Config, planned: Plan) -> list[str]:
    """emulated-systems that no working handler emulates (and the host does not run)."""
    from .reconcile import emulated_here

    return [s for s in emulated_here(config, host.system) if s not in planned.platforms]


def _register_missing(host: Host, config: Config) -> None:
    """emulated-systems: register what is listed there and not emulated yet."""
    if not config.emulated_systems:
        return
    from .apply import read_and_plan
    from .emulation.registration import register_system

    planned = read_and_plan(host, config).plan
    for system in _missing_systems(host, config, planned):
        outcome = register_system(system, planned, host, config)
        print(f"binfmtd: {system}: {outcome.message}", file=sys.stderr)


def _sync_summary(outcome: Outcome) -> str:
    managed = outcome.world.managed
    declared = " ".join(outcome.plan.platforms) or "nothing"
    if not outcome.written:
        return f"{managed} already in sync (declares {declared})"
    said = f"; nix-daemon {outcome.restart}" if outcome.restart else ""
    return f"{managed} updated: declares {declared}{said}"


def cmd_run(args: argparse.Namespace, host: Host, config: Config) -> int:
    from .daemon.log import configure_logging
    from .daemon.loop import run_daemon

    configure_logging(args.log_format)
    return run_daemon(host, config, restart=not args.no_restart)


def cmd_register(args: argparse.Namespace, host: Host, config: Config) -> int:
    from .apply import read_and_plan
    from .emulation.registration import check_registrable, register_system

    for system in args.systems:  # all of them before any is registered
        check_registrable(system, host.system)
    systems = tuple(args.systems) or config.emulated_systems
    if not systems:
        raise BinfmtdError("name the systems to register, or list them in emulated-systems")
    outcomes = []
    for system in systems:
        outcome = register_system(system, read_and_plan(host, config).plan, host, config)
        print(f"{system}: {outcome.message}")
        outcomes.append(outcome)
    _sync_after_registering(host, config, restart=not args.no_restart)
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_ATTENTION


def cmd_unregister(args: argparse.Namespace, host: Host, config: Config) -> int:
    from .emulation.registration import unregister_system

    for system in args.systems:
        print(f"{system}: {unregister_system(system, host, config).message}")
    _sync_after_registering(host, config, restart=not args.no_restart)
    return EXIT_OK


def _sync_after_registering(host: Host, config: Config, *, restart: bool) -> None:
    """After (un)registering, nix.conf follows at once, as after `binfmtd sync`."""
    from .apply import reconcile_once

    print(_sync_summary(reconcile_once(host, config, write=True, restart=restart)))


def cmd_doctor(args: argparse.Namespace, host: Host, config: Config) -> int:
    from .emulation import doctor
    from .apply import read_and_plan
    from .status import ask_nix, gather_report

    reading = ask_nix(host, config)
    looked = read_and_plan(host, config)
    report = gather_report(looked.world, looked.plan, host, config, reading)
    from .reconcile import emulated_here

    broken = {v.systems[0] for v in looked.plan.verdicts
              if v.problems and v.systems and not v.captures_host}
    systems = tuple(sorted({*looked.plan.platforms, *emulated_here(config, host.system),
                            *broken}))
    diagnoses = doctor.diagnose(report, systems, as_root=os.geteuid() == 0)
    if args.json:
        print_json(doctor.to_json(diagnoses))
    else:
        print(doctor.to_text(diagnoses))
    return EXIT_OK if all(d.ok for d in diagnoses) else EXIT_ATTENTION


def cmd_builder_line(args: argparse.Namespace, host: Host, config: Config) -> int:
    from .builder import BuilderOptions, read_builder_line
    from .nixtool import read_install_hint
    from .status import ask_nix

    reading = ask_nix(host, config)
    if reading is None:
        raise BinfmtdError(f"Nix is not installed, so this machine builds nothing: "
                           f"{read_install_hint()}")
    from .apply import read_and_plan

    declared = read_and_plan(host, config).plan.declared_platforms
    options = BuilderOptions(uri=args.uri, ssh_key=args.ssh_key, max_jobs=args.jobs,
                             speed_factor=args.speed,
                             mandatory_features=tuple(args.mandatory_feature))
    line = read_builder_line(host.system, declared, reading.result(), options)
    if args.json:
        print_json(line.to_json())
    else:
        print(line.render())
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, host: Host, config: Config) -> int:
    from .apply import reconcile_once

    outcome = reconcile_once(host, config, write=True, restart=not args.no_restart,
                             remove=True)
    managed = outcome.world.managed
    if outcome.world.managed_text is None:
        print(f"{managed} does not exist: nothing to remove")
    elif not outcome.written:
        print(f"{managed} has no binfmtd block: nothing to remove")
    else:
        said = f"; nix-daemon {outcome.restart}" if outcome.restart else ""
        print(f"{managed}: binfmtd block removed{said}")
    return EXIT_OK


def unified_diff(world: World, new_text: str) -> str:
    old = world.managed_text or ""
    name = str(world.managed)
    import difflib

    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new_text.splitlines(keepends=True),
        fromfile=name, tofile=f"{name} (binfmtd)",
    ))


def print_json(value: object) -> None:
    """--json: one object, indented (json is imported only by the commands that print it)."""
    import json

    print(json.dumps(value, indent=2))


def _warn_problems(problems: Sequence[object]) -> None:
    for problem in problems:
        print(f"binfmtd: warning: {problem}", file=sys.stderr)


COMMANDS = {"status": cmd_status, "sync": cmd_sync, "run": cmd_run, "remove": cmd_remove,
            "register": cmd_register, "unregister": cmd_unregister, "doctor": cmd_doctor,
            "builder-line": cmd_builder_line}
