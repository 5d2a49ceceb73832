"""binfmtd.service in a booted systemd: the unit file, sd_notify, the journal, nix-daemon.

The container has a binfmt_misc of its own (tests/support/containers.py: systemd in a user namespace
of its own), empty when mounted: a handler registered there is the emulator being
installed, and what binfmtd declares is exactly what the test registered.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

from binfmtd.daemon.log import EVENTS
from tests.support.containers import Machine
from tests.system.machine import (
    INTERPRETER,
    LOONGARCH64_LINE,
    NIX_CONF,
    PLATFORM,
    TEST_ENTRY,
    TIMINGS,
    emulated,
    handler,
    install_binfmtd,
    journal_event,
    main_pid,
    managed_platforms,
    new_nix_daemon,
    own_interpreter,
    sandbox_paths,
    show,
    wait_for,
)

EXPOSURE_LIMIT = 2.5


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
            lambda: journal_event(service, "nixconf.written",
                                  BINFMTD_SANDBOX_PATHS=INTERPRETER),
        )
        assert PLATFORM in str(written["BINFMTD_PLATFORMS"]), written
        assert written["BINFMTD_PATH"] == NIX_CONF and written["SYSLOG_IDENTIFIER"] == "binfmtd"
        assert written["_SYSTEMD_UNIT"] == "binfmtd.service", written
        # A person reads MESSAGE; MESSAGE_ID finds every entry of the kind.
        assert written["MESSAGE"] == (f"declared {PLATFORM} in {NIX_CONF} "
                                      f"(sandbox paths: {INTERPRETER})"), written
        assert written["MESSAGE_ID"] == EVENTS["nixconf.written"].message_id, written
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
    assert ready["MESSAGE_ID"] == EVENTS["daemon.ready"].message_id, ready
    assert str(ready["MESSAGE"]).startswith("ready: declares "), ready
    assert "/usr/bin/nix" in str(ready["MESSAGE"]), ready
    assert ready["_SYSTEMD_UNIT"] == "binfmtd.service", ready
    # binfmtd's own fields are all prefixed, so none shadows a journal field (PATH=).
    own = {key for key in ready if not key.startswith(("_", "__"))} - {
        "MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE",
        "CODE_FUNC", "SYSLOG_FACILITY", "SYSLOG_PID", "SYSLOG_TIMESTAMP"}
    assert own and all(key.startswith("BINFMTD_") for key in own), sorted(own)
    assert {"BINFMTD_EVENT", "BINFMTD_PLATFORMS", "BINFMTD_NIX"} <= own, sorted(own)


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
