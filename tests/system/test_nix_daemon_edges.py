"""Where binfmtd meets nix-daemon under a booted systemd, each edge made to happen: a Nix
found only beside the unit's ExecStart, PATH before the default profile, a nix-daemon that
fails to start, and one the admin stopped on purpose.

The container is the system tier's (tests/support/containers.py): systemd in a user namespace of its
own, binfmt_misc its own, the project's .deb installed and running as a service.
"""

from __future__ import annotations

import json

from tests.support.containers import Machine
from tests.system.machine import (
    LOONGARCH64_LINE,
    PLATFORM,
    TEST_ENTRY,
    managed_platforms,
    own_interpreter,
    show,
    wait_for,
)

OWN_FOLDER = "/opt/nix/bin"  # no installer's: only ExecStart says where it is
PROFILE_BIN = "/nix/var/nix/profiles/default/bin"
BROKEN = "/etc/systemd/system/nix-daemon.service.d/broken.conf"


def status(machine: Machine) -> tuple[int, dict]:  # type: ignore[type-arg]
    shown = machine.run(["binfmtd", "status", "--json"], check=False)
    assert shown.returncode in (0, 1), shown.stderr
    return shown.returncode, json.loads(shown.stdout)


def register_loongarch64(machine: Machine) -> None:
    """A registration that changes nix.conf, so binfmtd restarts nix-daemon after it."""
    own_interpreter(machine, LOONGARCH64_LINE.split(":")[6], "qemu-loongarch64-static")
    machine.register(LOONGARCH64_LINE)
    wait_for(f"{PLATFORM} in nix.conf", lambda: managed_platforms(machine) == [PLATFORM] or None)


def test_nix_beside_the_units_execstart_is_found_when_nothing_else_has_it(
    installed: Machine
) -> None:
    """Not on PATH, not in a profile: only nix-daemon.service's ExecStart knows the folder."""
    installed.move_nix(OWN_FOLDER)
    installed.run(["systemctl", "restart", "nix-daemon.service"])
    _, report = status(installed)
    assert report["nix"]["path"] == f"{OWN_FOLDER}/nix", report["nix"]
    assert report["effective"] is not None and report["nix_installed"]


def test_nix_on_path_wins_over_the_unit_and_the_default_profile(installed: Machine) -> None:
    """A Nix first on PATH, another beside the unit's ExecStart (Debian's /usr/bin), a third
    in the default profile (an upstream install): PATH's is the one the admin runs."""
    wrapper = '#!/bin/sh\nexec /usr/bin/nix "$@"\n'
    installed.run(["mkdir", "-p", PROFILE_BIN])
    for folder in (PROFILE_BIN, "/usr/local/bin"):
        installed.write_text(f"{folder}/nix", wrapper, mode="755")
        assert "(Nix)" in installed.run([f"{folder}/nix", "--version"]).stdout  # it works
    _, report = status(installed)
    assert report["nix"]["path"] == "/usr/local/bin/nix", report["nix"]


def test_a_nix_daemon_the_admin_stopped_stays_stopped(service: Machine) -> None:
    """binfmtd restarts nix-daemon only where it runs (try-restart): one stopped on
    purpose is not started by a registration, and status finds nothing wrong with it."""
    service.run(["systemctl", "stop", "nix-daemon.socket", "nix-daemon.service"])
    register_loongarch64(service)
    wait_for("binfmtd's restart step after the write",
             lambda: "pending" not in show(service, "binfmtd.service")["StatusText"] or None,
             timeout=6)
    for unit in ("nix-daemon.service", "nix-daemon.socket"):
        assert show(service, unit)["ActiveState"] == "inactive", unit
    code, report = status(service)
    assert code == 0 and report["nix_daemon"]["pids"] == [], report["nix_daemon"]


def test_a_nix_daemon_that_fails_to_start_is_reported_retried_and_recovers(
    service: Machine
) -> None:
    """The restart after a change fails (the unit cannot start): binfmtd says so in its
    status line and in `binfmtd status`, backs off, and is well again once the admin has
    fixed the unit and started it, as its message says."""
    service.write_text(BROKEN, "[Service]\nExecStartPre=/bin/false\n")
    service.run(["systemctl", "daemon-reload"])
    register_loongarch64(service)
    wait_for("binfmtd reports the failed restart", lambda: "restart failed 1x" in show(
        service, "binfmtd.service")["StatusText"] or None, timeout=6)
    code, report = status(service)
    assert code == 1 and "nix-daemon.service (exit-code) failed" in report["nix_daemon"][
        "failed"], report["nix_daemon"]
    wait_for("binfmtd retries after its back-off", lambda: "restart failed 2x" in show(
        service, "binfmtd.service")["StatusText"] or None, timeout=6)
    service.run(["rm", BROKEN])
    service.run(["systemctl", "daemon-reload"])
    service.run(["systemctl", "reset-failed", "nix-daemon.service", "nix-daemon.socket"])
    service.run(["systemctl", "start", "nix-daemon.socket"])
    wait_for("binfmtd's next retry succeeds", lambda: "restart failed" not in show(
        service, "binfmtd.service")["StatusText"] or None, timeout=12)
    assert show(service, "nix-daemon.socket")["ActiveState"] == "active"  # starts on demand
    assert status(service)[0] == 0
    assert TEST_ENTRY in service.binfmt_entries()
