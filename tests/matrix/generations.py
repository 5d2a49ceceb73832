"""The Debian generations the matrix tier proves binfmtd in, and what each tree holds.

Run this file to build (or find) the trees without pytest, all at once, and print how long
each took: `.venv/bin/python -m tests.matrix.generations [SUITE...]` (default: every one).
The test run itself starts it in the background (tests/conftest.py), so that a fresh
machine's debootstraps overlap the tiers that need no tree.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from tests.booted import debian_tree, is_built

# Every generation: a booted systemd, Nix with Debian's socket-activated daemon, and what
# the project's .deb depends on and recommends (dpkg -i installs nothing by itself).
COMMON = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libdbi-perl",  # without it nix-bin does not configure (../shared/FACTS.md)
    "nix-bin",
    "nix-setup-systemd",
    "python3",
    "python3-psutil",
    "python3-structlog",
    "python3-systemd",
    "procps",
)


class Generation(NamedTuple):
    suite: str
    nix: str  # the version the distro's nix-bin reports, asserted by the test
    packages: tuple[str, ...]


GENERATIONS = (
    # bookworm's qemu-user-static ships /usr/lib/binfmt.d/qemu-aarch64.conf. Its tree is
    # also the system, packaging and farm tiers' (BOOKWORM below): one tree for a fresh
    # machine to build, not four. man-db: `systemd-analyze verify` and `man -w` read the
    # unit's man page; openssh-server: the farm's builder.
    Generation("bookworm", "2.8.0", (*COMMON, "qemu-user-static", "man-db", "openssh-server")),
    # From trixie on the binfmt.d lines come with qemu-user-binfmt.
    Generation("trixie", "2.26.3", (*COMMON, "qemu-user", "qemu-user-binfmt")),
    Generation("sid", "2.34.8", (*COMMON, "qemu-user", "qemu-user-binfmt")),
)

BOOKWORM = GENERATIONS[0]


def build(generation: Generation) -> str:
    cached = is_built(generation.suite, generation.packages)
    start = time.monotonic()
    path = debian_tree(generation.suite, generation.packages)
    return (f"{generation.suite}: {path} {'cached' if cached else 'built'} "
            f"in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    wanted = [g for g in GENERATIONS if g.suite in sys.argv[1:] or len(sys.argv) == 1]
    with ThreadPoolExecutor(len(wanted) or 1) as pool:  # debootstrap mostly waits on I/O
        for said in pool.map(build, wanted):
            print(said, flush=True)
