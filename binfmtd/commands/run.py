"""`binfmtd run`: the daemon, in the foreground, as systemd starts it."""

from __future__ import annotations

from argparse import Namespace
from typing import Optional

from ..config import Config
from ..daemon.log import configure_logging
from ..daemon.loop import run_daemon
from ..host import Host
from ..nixtool import NixReading


def run(args: Namespace, host: Host, config: Config, nix: Optional[NixReading]) -> int:
    configure_logging(args.log_format)
    return run_daemon(host, config, restart=not args.no_restart)
