"""`binfmtd register`, `unregister` and `doctor`: binfmtd's own emulators, and proof that
each platform builds."""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Optional

from ..apply import read_and_plan, reconcile_once
from ..config import Config
from ..emulation.doctor import Evidence, diagnose
from ..emulation.doctor import to_json as doctor_json
from ..emulation.doctor import to_text as doctor_text
from ..emulation.registration import check_registrable, emulate, unregister_system
from ..errors import EXIT_ATTENTION, EXIT_OK, BinfmtdError
from ..host import Host
from ..nixtool import NixReading
from ..reconcile import emulated_here
from ..report import print_json, sync_summary
from ..status import gather_report


def register(args: Namespace, host: Host, config: Config, nix: Optional[NixReading]) -> int:
    """Register an emulator for each system named (else emulated-systems), then sync."""
    for system in args.systems:  # every name is checked before anything is registered
        check_registrable(system, host)
    systems = tuple(args.systems) or config.emulated_systems
    if not systems:
        raise BinfmtdError("name the systems to register, or list them in emulated-systems")
    emulated = emulate(systems, host, config, restart=not args.no_restart)
    for result in emulated.results:
        print(f"{result.system}: {result.message}")
    print(sync_summary(emulated.outcome))
    return EXIT_OK if all(r.ok for r in emulated.results) else EXIT_ATTENTION


def unregister(args: Namespace, host: Host, config: Config,
               nix: Optional[NixReading]) -> int:
    """Remove what register made for each system, and nothing else; then sync."""
    for system in args.systems:
        print(f"{system}: {unregister_system(system, host, config).message}")
    print(sync_summary(reconcile_once(host, config, write=True,
                                      restart=not args.no_restart)))
    return EXIT_OK


def doctor(args: Namespace, host: Host, config: Config, nix: Optional[NixReading]) -> int:
    """Prove, system by system, that a sandboxed Nix build would run."""
    looked = read_and_plan(host, config)
    report = gather_report(looked.world, looked.plan, host, config, nix)
    broken = {v.systems[0] for v in looked.plan.verdicts
              if v.problems and v.systems and not v.captures_host}
    wanted = emulated_here(config, host.system, host.also_native)
    systems = tuple(sorted({*looked.plan.platforms, *wanted, *broken}))
    seen = Evidence(report.plan, report.effective, report.daemon_pids, report.stale_pids)
    diagnoses = diagnose(seen, systems, as_root=os.geteuid() == 0)
    if args.json:
        print_json(doctor_json(diagnoses))
    else:
        print(doctor_text(diagnoses))
    return EXIT_OK if all(d.ok for d in diagnoses) else EXIT_ATTENTION
