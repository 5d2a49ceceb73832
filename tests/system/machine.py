"""What the system tests share besides tests/support/containers.py: booting, timings,
installing the .deb, and looking at the service, nix.conf and the journal in the container."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, NoReturn, Optional, TypeVar

import pytest

from tests.support.containers import BootFailed, CommandFailed, Machine, boot
from tests.support.kernel import LOONGARCH64_MAGIC, LOONGARCH64_MASK, binfmt_line
from tests.support.parts import require
from tests.support.waiting import until

TIMINGS: list[tuple[str, float]] = []  # printed at the end of the pytest run (conftest.py)


def unavailable(reason: str) -> NoReturn:
    """Skip outside CI; in CI (CI=true) fail with the reason, without a traceback."""
    require(False, f"system test infrastructure unavailable: {reason}")
    raise AssertionError("require() raises")


@contextlib.contextmanager
def booted(tree: Path, binds_ro: dict[str, str] | None = None) -> Iterator[Machine]:
    """A container booted from `tree` (an overlay over it), powered off afterwards."""
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            machine = stack.enter_context(boot(tree, binds_ro=binds_ro))
        except BootFailed as error:
            unavailable(f"systemd-nspawn cannot boot {tree}: {error}")
        TIMINGS.append(("boot", time.monotonic() - start))
        yield machine


def own_binfmt_misc(machine: Machine) -> Machine:
    """Mount the container's private binfmt_misc and check it starts empty."""
    try:
        machine.mount_binfmt_misc()
    except CommandFailed as error:  # a kernel older than 6.7: say so, do not crash
        unavailable(f"no private binfmt_misc in the container (Linux >= 6.7): {error}")
    assert machine.binfmt_entries() == [], "the container's binfmt_misc is not its own"
    return machine


def install_binfmtd(machine: Machine, deb: os.PathLike[str]) -> None:
    """Install the project's .deb into the container as a user would (dpkg -i; its
    dependencies are in the tree), enabled but not started, so that a test configures it
    first: a policy-rc.d that says 101 is Debian's way to install without starting."""
    machine.copy_in(Path(deb), "/tmp/binfmtd.deb")
    machine.write_text("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode="755")
    try:
        machine.run(["dpkg", "-i", "/tmp/binfmtd.deb"])
    finally:
        machine.run(["rm", "-f", "/usr/sbin/policy-rc.d"])


# --- looking at the service, nix.conf and the journal ------------------------------------

NIX_CONF = "/etc/nix/nix.conf"
# Debian's qemu-user-static line for loongarch64 WITHOUT the F flag, its interpreter a copy
# of qemu that only this test makes: binfmtd must then declare that very path as a sandbox
# path.
TEST_ENTRY = "binfmtd-service-loongarch64"
PLATFORM = "loongarch64-linux"
INTERPRETER = f"/opt/{TEST_ENTRY}/qemu-loongarch64"
LOONGARCH64_LINE = binfmt_line(TEST_ENTRY, INTERPRETER, "OP", LOONGARCH64_MAGIC, LOONGARCH64_MASK)
# The default allows one nix-daemon restart per 10 s; the test's second change follows
# its first within a second, and waiting 10 s would prove nothing more. (binfmtd still
# keeps 3.3 s between restarts: systemd's start limit for nix-daemon.service.)
CONFIG = "restart-interval-seconds = 1\n"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], Optional[T]], timeout: float = 3.0) -> T:
    """Poll `probe` until it returns something other than None; record how long it took."""
    start = time.monotonic()
    value = until(probe, timeout, interval=0.05)
    if value is None:
        pytest.fail(f"not within {timeout:.0f} s: {what}")
    seconds = time.monotonic() - start
    TIMINGS.append((what, seconds))
    print(f"timing: {what}: {seconds:.3f} s", flush=True)
    return value


def show(machine: Machine, unit: str) -> dict[str, str]:
    """The properties of `unit` that these tests look at."""
    props = "ActiveState,SubState,Result,StatusText,MainPID,ExecMainStatus,NRestarts"
    out = machine.run(["systemctl", "show", "-p", props, unit]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def managed(machine: Machine, key: str) -> list[str]:
    """The words of `key`'s line in the managed block of the container's nix.conf."""
    text = machine.run(["cat", NIX_CONF]).stdout
    block = re.search(r"# BEGIN binfmtd managed block.*?# END binfmtd managed block", text, re.S)
    line = re.search(rf"^{re.escape(key)} = (.*)$", block.group(0), re.M) if block else None
    return line.group(1).split() if line else []


def managed_platforms(machine: Machine) -> list[str]:
    """The platforms the managed block in the container's nix.conf declares."""
    return managed(machine, "extra-extra-platforms")


def sandbox_paths(machine: Machine) -> list[str]:
    """The sandbox paths the managed block declares, without their trailing `?`."""
    return [path.rstrip("?") for path in managed(machine, "extra-sandbox-paths")]


def own_interpreter(machine: Machine, path: str, emulator: str) -> str:
    """Copy the tree's static `emulator` to `path` in the container, a file that no
    handler but the test's own can name; return `path`."""
    machine.run(["mkdir", "-p", str(Path(path).parent)])
    machine.run(["cp", f"/usr/bin/{emulator}", path])
    return path


def handler(machine: Machine, name: str) -> Optional[dict[str, object]]:
    """The handler `name` as `binfmtd status --json` in the container reports it."""
    shown = machine.run(["binfmtd", "status", "--json"], check=False)
    assert shown.returncode in (0, 1), shown.stderr
    found = [h for h in json.loads(shown.stdout)["handlers"] if h["name"] == name]
    return found[0] if found else None


def journal(machine: Machine) -> list[dict[str, object]]:
    out = machine.run(["journalctl", "-u", "binfmtd", "-o", "json", "--no-pager"])
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def journal_event(machine: Machine, event: str, **fields: str) -> Optional[dict[str, object]]:
    """The last binfmtd journal entry with BINFMTD_EVENT=event whose fields contain `fields`."""
    for entry in reversed(journal(machine)):
        if entry.get("BINFMTD_EVENT") == event and all(
            value in str(entry.get(key, "")) for key, value in fields.items()
        ):
            return entry
    return None


def emulated(status: str) -> Optional[list[str]]:
    """The platforms binfmtd's StatusText names, None when it does not read as binfmtd's.

    "nothing emulated" or "2 emulated: a-linux b-linux", maybe followed by "; nix-daemon
    restart pending" and the like.
    """
    first = status.split("; ")[0]
    if first == "nothing emulated":
        return []
    found = re.fullmatch(r"(\d+) emulated: ([a-z0-9_]+-linux(?: [a-z0-9_]+-linux)*)", first)
    platforms = found.group(2).split() if found else []
    return platforms if found and int(found.group(1)) == len(platforms) else None


def main_pid(machine: Machine, unit: str) -> int:
    return int(show(machine, unit)["MainPID"])


def new_nix_daemon(machine: Machine, old_pid: int) -> Optional[int]:
    """nix-daemon's MainPID once it is running under another PID than `old_pid`."""
    pid = main_pid(machine, "nix-daemon.service")
    return pid if pid not in (0, old_pid) else None
