"""binfmtd.service in a booted systemd: the unit file, sd_notify, the journal, nix-daemon.

The container has a binfmt_misc of its own (tests/booted.py: systemd in a user namespace
of its own), empty when mounted: a handler registered there is the emulator being
installed, and what binfmtd declares is exactly what the test registered.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pytest
from machine import TIMINGS, install_binfmtd

from tests.booted import Machine

NIX_CONF = "/etc/nix/nix.conf"
EXPOSURE_LIMIT = 2.5
# Debian's qemu-user-static line for loongarch64 WITHOUT the F flag, its interpreter a copy
# of qemu that only this test makes: binfmtd must then declare that very path as a sandbox
# path.
TEST_ENTRY = "binfmtd-service-loongarch64"
PLATFORM = "loongarch64-linux"
INTERPRETER = f"/opt/{TEST_ENTRY}/qemu-loongarch64"
LOONGARCH64_MAGIC_MASK = (
    r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x02\x01:"
    r"\xff\xff\xff\xff\xff\xff\xff\xfc\x00\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
)
LOONGARCH64_LINE = f":{TEST_ENTRY}:M::{LOONGARCH64_MAGIC_MASK}:{INTERPRETER}:OP"
# The default allows one nix-daemon restart per 10 s; the test's second change follows
# its first within a second, and waiting 10 s would prove nothing more. (binfmtd still
# keeps 3.3 s between restarts: systemd's start limit for nix-daemon.service.)
CONFIG = "restart-interval-seconds = 1\n"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], Optional[T]], timeout: float = 3.0) -> T:
    """Poll `probe` until it returns something other than None; record how long it took."""
    start = time.monotonic()
    while True:
        value = probe()
        seconds = time.monotonic() - start
        if value is not None:
            TIMINGS.append((what, seconds))
            print(f"timing: {what}: {seconds:.3f} s", flush=True)
            return value
        if seconds > timeout:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


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


@pytest.fixture
def installed(binfmt_machine: Machine, debian_package: Path) -> Machine:
    """binfmtd installed from its .deb, with CONFIG; not running; binfmt_misc empty."""
    install_binfmtd(binfmt_machine, debian_package)
    binfmt_machine.write_text("/etc/binfmtd/config.toml", CONFIG)
    return binfmt_machine


@pytest.fixture
def service(installed: Machine) -> Machine:
    """binfmtd enabled and started, with a running nix-daemon whose restarts show."""
    installed.run(["systemctl", "start", "nix-daemon.service"])
    installed.run(["systemctl", "enable", "--now", "binfmtd.service"])
    return installed


def test_unit_file_verifies(installed: Machine) -> None:
    result = installed.run(
        ["systemd-analyze", "verify", "/lib/systemd/system/binfmtd.service"], check=False
    )
    output = result.stdout + result.stderr
    about_us = [line for line in output.splitlines() if "binfmtd" in line]
    assert result.returncode == 0 and not about_us, output


def test_security_exposure(installed: Machine) -> None:
    start = time.monotonic()
    result = installed.run(["systemd-analyze", "security", "--no-pager", "binfmtd.service"])
    found = re.search(r"Overall exposure level for binfmtd\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout
    score = float(found.group(1))
    print(f"systemd-analyze security binfmtd.service: exposure {score}")
    TIMINGS.append((f"systemd-analyze security: exposure {score}", time.monotonic() - start))
    assert score <= EXPOSURE_LIMIT, result.stdout


def test_enable_now_reaches_active_and_says_what_is_emulated(installed: Machine) -> None:
    installed.register(installed.read_text("/usr/lib/binfmt.d/qemu-aarch64.conf").strip())
    installed.run(["systemctl", "enable", "--now", "binfmtd.service"])
    props = show(installed, "binfmtd.service")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    status = props["StatusText"]
    assert emulated(status) == ["aarch64-linux"], props
    assert "waiting for binfmt_misc" not in status and "error" not in status, props
    enabled = installed.run(["systemctl", "is-enabled", "binfmtd.service"]).stdout.strip()
    assert enabled == "enabled"


def test_binfmt_misc_mounted_after_start_is_seen(machine: Machine,
                                                debian_package: Path) -> None:
    """The daemon waits for a late mount; the unit's sandbox must let the mount reach it."""
    install_binfmtd(machine, debian_package)
    # Masked, so that starting binfmtd (Wants= it) does not mount binfmt_misc first.
    machine.run(["systemctl", "mask", "proc-sys-fs-binfmt_misc.mount"])
    machine.run(["systemctl", "start", "binfmtd.service"])
    status = show(machine, "binfmtd.service")["StatusText"]
    assert "waiting for binfmt_misc to be mounted" in status, status
    machine.mount_binfmt_misc()  # the container's own

    def status_once_mounted() -> Optional[str]:
        status = show(machine, "binfmtd.service")["StatusText"]
        return None if "waiting for binfmt_misc" in status else status

    seen = wait_for("binfmtd sees binfmt_misc mounted after it started", status_once_mounted)
    assert emulated(seen) == [], seen
    assert journal_event(machine, "binfmt_misc.mounted") is not None, seen


def test_registration_updates_nix_conf_and_restarts_nix_daemon(service: Machine) -> None:
    """A registration in binfmt_misc reaches nix.conf, nix-daemon and the status; its
    removal takes it out again."""
    own_interpreter(service, INTERPRETER, "qemu-loongarch64-static")
    assert sandbox_paths(service) == [] and managed_platforms(service) == []  # control below
    assert emulated(show(service, "binfmtd.service")["StatusText"]) == []
    first_pid = main_pid(service, "nix-daemon.service")
    assert first_pid != 0

    name = service.register(LOONGARCH64_LINE)
    try:
        wait_for(f"{INTERPRETER} in nix.conf after registration",
                 lambda: INTERPRETER in sandbox_paths(service) or None)
        assert (managed_platforms(service), sandbox_paths(service)) == ([PLATFORM], [INTERPRETER])
        second_pid = wait_for(
            "nix-daemon restarted after registration", lambda: new_nix_daemon(service, first_pid),
            timeout=6)
        shown = handler(service, TEST_ENTRY)
        assert shown is not None
        assert (shown["platform"], shown["interpreter"], shown["problems"]) == (
            PLATFORM, INTERPRETER, []), shown
        status = show(service, "binfmtd.service")["StatusText"]
        assert emulated(status) == [PLATFORM], status
        written = wait_for(
            f"journal entry nixconf.written with {INTERPRETER}",
            lambda: journal_event(service, "nixconf.written", SANDBOX_PATHS=INTERPRETER),
        )
        assert PLATFORM in str(written["PLATFORMS"]), written
        assert written["PATH"] == NIX_CONF and written["SYSLOG_IDENTIFIER"] == "binfmtd"
        assert written["_SYSTEMD_UNIT"] == "binfmtd.service", written
    finally:
        service.unregister(name)

    wait_for(f"{INTERPRETER} out of nix.conf after removal",
             lambda: INTERPRETER not in sandbox_paths(service) or None)
    # binfmtd spaces restarts to stay under systemd's start limit (3.3 s with the defaults)
    wait_for("nix-daemon restarted after removal", lambda: new_nix_daemon(service, second_pid),
             timeout=6)
    assert handler(service, TEST_ENTRY) is None
    assert managed_platforms(service) == []
    props = show(service, "binfmtd.service")
    assert emulated(props["StatusText"]) == [], props
    assert (props["ActiveState"], props["NRestarts"]) == ("active", "0"), props


def test_journal_has_structured_fields(service: Machine) -> None:
    ready = wait_for("journal entry daemon.ready", lambda: journal_event(service, "daemon.ready"))
    assert ready["SYSLOG_IDENTIFIER"] == "binfmtd" and ready["PRIORITY"] == "6", ready
    assert "PLATFORMS" in ready and str(ready["MESSAGE"]).startswith("daemon.ready"), ready
    assert ready["_SYSTEMD_UNIT"] == "binfmtd.service", ready


def test_reload_keeps_it_active(service: Machine) -> None:
    pid = main_pid(service, "binfmtd.service")
    service.run(["systemctl", "reload", "binfmtd.service"])
    wait_for("journal entry config.reloaded", lambda: journal_event(service, "config.reloaded"))
    props = show(service, "binfmtd.service")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert int(props["MainPID"]) == pid, props


def test_stop_ends_with_success(service: Machine) -> None:
    service.run(["systemctl", "stop", "binfmtd.service"])
    props = show(service, "binfmtd.service")
    assert (props["ActiveState"], props["SubState"]) == ("inactive", "dead"), props
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), props
    failed = service.run(["systemctl", "is-failed", "binfmtd.service"], check=False)
    assert failed.stdout.strip() == "inactive", failed
    assert journal_event(service, "daemon.stopped") is not None
