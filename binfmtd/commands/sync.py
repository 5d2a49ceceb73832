"""`binfmtd sync` and `binfmtd remove`: bring nix.conf's block in line once, or take it out."""

from __future__ import annotations

import sys
from argparse import Namespace
from typing import Optional

from ..apply import Outcome, reconcile_once
from ..asknix import ask_nix
from ..config import Config
from ..emulation.registration import emulate
from ..errors import EXIT_ATTENTION, EXIT_OK
from ..host import Host
from ..nixtool import NixReading
from ..reconcile import emulated_here
from ..report import print_json, removal_summary, sync_summary, to_json, unified_diff, warn
from ..status import gather_report


def sync(args: Namespace, host: Host, config: Config, nix: Optional[NixReading]) -> int:
    """One reconcile; first, register what emulated-systems lists and nothing emulates.
    With --check, change nothing and say whether sync would."""
    if args.check:
        return _check(args, host, config)
    emulated = emulate(emulated_here(config, host.system, host.also_native), host, config,
                       restart=not args.no_restart)
    for result in emulated.results:
        if result.changed or not result.ok:
            print(f"binfmtd: {result.system}: {result.message}", file=sys.stderr)
    outcome = emulated.outcome
    _show_change(args, outcome)
    if args.json:
        now = outcome.now(config, host)
        report = gather_report(now.world, now.plan, host, config, ask_nix(host, config))
        print_json(to_json(report, changed=outcome.written, restart=outcome.restart))
    elif not args.diff:
        print(sync_summary(outcome))
    return EXIT_OK


def _check(args: Namespace, host: Host, config: Config) -> int:
    """sync --check: exit 1 when sync would write nix.conf or register a system."""
    outcome = reconcile_once(host, config, write=False, restart=False)
    _show_change(args, outcome)
    missing = [s for s in emulated_here(config, host.system, host.also_native)
               if s not in outcome.plan.platforms]
    would_change = outcome.plan.text is not None or bool(missing)
    if args.json:
        report = gather_report(outcome.world, outcome.plan, host, config, None)
        print_json(to_json(report, changed=would_change))
    return EXIT_ATTENTION if would_change else EXIT_OK


def _show_change(args: Namespace, outcome: Outcome) -> None:
    if args.diff and outcome.plan.text is not None:
        sys.stdout.write(unified_diff(outcome.world, outcome.plan.text))
    warn(outcome.plan.problems)


def remove(args: Namespace, host: Host, config: Config, nix: Optional[NixReading]) -> int:
    """Take the block out: nix.conf as it was before binfmtd, byte for byte."""
    print(removal_summary(reconcile_once(host, config, write=True,
                                         restart=not args.no_restart, remove=True)))
    return EXIT_OK
