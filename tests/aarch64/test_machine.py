"""binfmtd on an aarch64 machine: Debian trixie for arm64 booted in qemu-system-aarch64, the
project's .deb installed with dpkg -i and its service started by itself at boot, Debian's
Nix with sandbox = true, builds by a non-root user through nix-daemon.

One boot runs the whole plan (tests/aarch64/plan.py); every test reads what the machine
reported for its steps and judges it here. A second, short boot on a CPU without AArch32
answers the 32-bit question the other way.
"""
from __future__ import annotations

from typing import Any

import pytest

from tests.aarch64.plan import DISPATCHED, LAYOUTS, QEMU_X86_64, Layout
from tests.support.armvm import Report
from tests.support.kernel import entry_name
from tests.support.nix import not_declared

SYSTEMS = {"x86_64-linux": "x86_64", "i686-linux": "i686"}  # system -> what uname -m says
ARM32 = ("armv7l-linux", "armv6l-linux")


def _status(report: Report, step: str) -> dict[str, Any]:
    result = report.result(step)
    assert result.get("json") is not None, result
    status: dict[str, Any] = result["json"]
    return status


def _failed_for(result: dict[str, Any], system: str) -> None:
    """The build failed with Nix's own message: nothing can build for `system`."""
    assert result.get("exit") not in (0, None), result
    assert not_declared(system) in result["stderr"], result["stderr"]


def _built(result: dict[str, Any], system: str) -> None:
    assert result.get("exit") == 0, result
    assert result["output"] == f"{SYSTEMS[system]}\n", result


def _held(report: Report, step: str) -> dict[str, Any]:
    result = report.result(step)
    assert result.get("held") is True, result
    return result


def test_the_machine_is_aarch64_and_the_service_started_at_boot(with_aarch32: Report) -> None:
    facts = with_aarch32.result("facts")
    assert facts["machine"] == "aarch64", facts
    assert (facts["enabled"], facts["binfmtd"]) == ("enabled", "active"), facts
    assert facts["entries"] == [], "something registered at boot: the plan would prove nothing"
    assert facts["nix"].endswith("2.26.3"), facts


# --- what the CPU runs by itself ------------------------------------------------------------


def test_a_cpu_with_aarch32_declares_arm32_natively(with_aarch32: Report) -> None:
    """-cpu max has AArch32 at EL0: the kernel grants the 32-bit personality, so binfmtd
    tells Nix the machine builds armv7l-linux and armv6l-linux without an emulator."""
    status = _status(with_aarch32, "status-boot")
    assert set(ARM32) <= set(status["wanted_platforms"]), status["wanted_platforms"]
    assert set(ARM32) <= set(status["effective"]["extra-platforms"].split()), status["effective"]
    assert status["in_sync"] is True, status["problems"]


def test_a_cpu_without_aarch32_does_not(without_aarch32: Report) -> None:
    """-cpu a64fx is AArch64 only: the personality is refused, and nothing 32-bit is
    declared (the control is the test above, same image, other CPU)."""
    facts = without_aarch32.result("facts")
    assert facts["machine"] == "aarch64" and facts["binfmtd"] == "active", facts
    status = _status(without_aarch32, "status-boot")
    assert not set(ARM32) & set(status["wanted_platforms"]), status["wanted_platforms"]
    assert not set(ARM32) & set(status["effective"]["extra-platforms"].split())
    assert status["in_sync"] is True, status["problems"]


# --- the story, through Debian's arm64 qemu-user lines -------------------------------------


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_build_for_x86_fails_before_binfmtd_knows_an_emulator(
        with_aarch32: Report, system: str) -> None:
    _failed_for(with_aarch32.result(f"{system}-before"), system)


@pytest.mark.parametrize("system", SYSTEMS)
def test_the_service_follows_debians_line_and_the_build_works(
        with_aarch32: Report, system: str) -> None:
    declared = _held(with_aarch32, f"{system}-declared")
    print(f"{system}: declared and nix-daemon restarted after {declared['seconds']} s")
    _built(with_aarch32.result(f"{system}-after"), system)
    status = _status(with_aarch32, f"{system}-status")
    assert system in status["effective"]["extra-platforms"].split()
    assert status["in_sync"] is True and status["nix_daemon"]["restart_needed"] is False


@pytest.mark.parametrize("system", SYSTEMS)
def test_the_build_fails_again_once_the_entry_is_removed(
        with_aarch32: Report, system: str) -> None:
    _held(with_aarch32, f"{system}-undeclared")
    _failed_for(with_aarch32.result(f"{system}-removed"), system)


# --- the registrations aarch64 users have ------------------------------------------------


def _handlers(status: dict[str, Any], case: Layout) -> list[dict[str, Any]]:
    names = {entry_name(line) for line in case.lines}
    return [h for h in status["handlers"] if h["name"] in names]


@pytest.mark.parametrize("case", LAYOUTS, ids=[case.name for case in LAYOUTS])
def test_each_layout_declares_its_systems_with_the_sandbox_paths_it_needs(
        with_aarch32: Report, case: Layout) -> None:
    block = _held(with_aarch32, f"{case.name}-declared")["block"]
    status = _status(with_aarch32, f"{case.name}-status")
    handlers = _handlers(status, case)
    assert sorted(p for h in handlers for p in h["platforms"]) == sorted(case.systems), handlers
    assert set(case.systems) <= set(status["effective"]["extra-platforms"].split())
    registered = case.link or case.emulator
    for handler in handlers:
        assert handler["interpreter"] == registered and handler["problems"] == [], handler
        if "F" in handler["flags"]:  # the kernel holds the static emulator open
            assert handler["sandbox_paths"] == [], handler
        else:  # the sandbox must see it
            assert handler["sandbox_paths"] == [registered], handler
            assert f"{registered}?" in block.split(), block
    assert status["in_sync"] is True, status["problems"]


@pytest.mark.parametrize("case", [c for c in LAYOUTS if c.build], ids=lambda case: case.name)
def test_a_build_works_through_the_layout(with_aarch32: Report, case: Layout) -> None:
    _built(with_aarch32.result(f"{case.name}-build"), "x86_64-linux")


@pytest.mark.parametrize("case", LAYOUTS, ids=[case.name for case in LAYOUTS])
def test_each_layout_removed_is_undeclared(with_aarch32: Report, case: Layout) -> None:
    _held(with_aarch32, f"{case.name}-undeclared")


# --- Fedora Asahi's binfmt-dispatcher ----------------------------------------------------


def test_status_explains_a_dispatcher_and_points_at_doctor(with_aarch32: Report) -> None:
    status = _status(with_aarch32, "dispatcher-status")
    handler, = [h for h in status["handlers"] if h["name"] == "binfmt-dispatcher-x86_64"]
    assert handler["platforms"] == ["x86_64-linux"], handler
    assert "binfmt-dispatcher" in (handler["note"] or ""), handler
    assert "sandbox-paths" in handler["note"] and "doctor" in handler["note"], handler


def test_a_dispatcher_builds_only_once_sandbox_paths_names_what_it_runs(
        with_aarch32: Report) -> None:
    blind = with_aarch32.result("dispatcher-build-blind")
    assert blind["exit"] not in (0, None), blind  # declared, but qemu is not in the sandbox
    assert not_declared("x86_64-linux") not in blind["stderr"], blind["stderr"]
    assert with_aarch32.result("dispatcher-config")["exit"] == 0
    block = _held(with_aarch32, "dispatcher-paths")["block"]
    assert f"{DISPATCHED}?" in block.split() and f"{QEMU_X86_64}?" in block.split(), block
    _built(with_aarch32.result("dispatcher-build"), "x86_64-linux")
    _held(with_aarch32, "dispatcher-undeclared")
