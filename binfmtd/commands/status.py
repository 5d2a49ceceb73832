"""`binfmtd status` and `binfmtd builder-line`: what this machine emulates and tells Nix,
read and shown, nothing changed."""

from __future__ import annotations

from argparse import Namespace
from typing import Optional

from ..apply import read_and_plan
from ..builder import BuilderOptions, read_builder_line
from ..config import Config
from ..errors import EXIT_ATTENTION, EXIT_OK, JSON_VERSION, BinfmtdError
from ..host import Host
from ..nixtool import NixReading, read_nix_install_hint
from ..report import print_json, to_json, to_text
from ..status import gather_report


def status(args: Namespace, host: Host, config: Config, nix: Optional[NixReading]) -> int:
    """Every handler, what nix.conf declares, what Nix reads, and nix-daemon's state."""
    looked = read_and_plan(host, config)  # while Nix reads nix.conf beside it
    report = gather_report(looked.world, looked.plan, host, config, nix)
    if args.json:
        print_json(to_json(report))
    else:
        print(to_text(report, verbose=args.verbose))
    return EXIT_OK if report.healthy else EXIT_ATTENTION


def builder_line(args: Namespace, host: Host, config: Config,
                 nix: Optional[NixReading]) -> int:
    """This machine's line for Nix clients' /etc/nix/machines."""
    if nix is None:
        raise BinfmtdError("Nix is not installed, so this machine builds nothing: "
                           f"{read_nix_install_hint()}")
    declared = read_and_plan(host, config).plan.declared_platforms
    options = BuilderOptions(uri=args.uri, ssh_key=args.ssh_key, max_jobs=args.jobs,
                             speed_factor=args.speed,
                             mandatory_features=tuple(args.mandatory_feature))
    line = read_builder_line(host.system, declared, nix.result(), options)
    if args.json:
        print_json({"version": JSON_VERSION, **line.to_json()})
    else:
        print(line.render())
    return EXIT_OK
