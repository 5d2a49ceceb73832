"""binfmtd as a user meets it: the project's .deb in booted Debian 12, 13 and sid, under
three Nix layouts, with a real registration of the tree's own qemu line, with F and without.

Each cell boots its generation's cached tree once (tests/support/containers.py: systemd in a user
namespace of its own, so the container has a private, empty binfmt_misc and nothing here
reads or changes the host's), lays Nix out as an installer would, installs the .deb with
`dpkg -i` (the service starts by itself), and then, for F and for no F:

1. a non-root user's sandboxed aarch64-linux build through nix-daemon fails with Nix's own
   message (no registration: Nix knows no aarch64-linux);
2. the tree's /usr/lib/binfmt.d/qemu-aarch64.conf line is registered; binfmtd writes the
   block and restarts nix-daemon; the same user's build works, and `binfmtd status --json`
   names the Nix it asked and shows Nix's own reading of extra-platforms;
3. the registration is removed; binfmtd takes the block out and restarts nix-daemon; the
   build fails again with Nix's own message.

Layouts: `distro` (Debian's nix-bin and nix-setup-systemd as installed); `upstream` (the
upstream installer's: nix and nix-daemon only under /nix/var/nix/profiles/default/bin,
nix-daemon.service pointing there, nothing of Nix on PATH); `determinate` (nix.conf ends in
`!include nix.custom.conf`, so binfmtd writes nix.custom.conf and never nix.conf).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.support.containers import Machine, boot, require_nspawn
from tests.support.debian import GENERATIONS, Generation, busybox, cached_busybox, required_tree
from tests.support.nix import (  # DAEMON_CONF: sandbox = true, sandbox-fallback = false
    DAEMON_CONF,
    derivation_args,
    lay_out_builds,
)
from tests.support.parts import require

BUSYBOX = cached_busybox("arm64")  # Debian's static arm64 one
SYSTEM = "aarch64-linux"
PROFILE_BIN = "/nix/var/nix/profiles/default/bin"  # the upstream installer's
USER = "alice"
CHANGE_TIMEOUT = 60.0  # a registration to nix.conf and a restarted nix-daemon (0.2 s measured)
BUILD_TIMEOUT = 180.0
# What Nix says when nothing can build aarch64-linux: 2.8 "a 'aarch64-linux' with features
# {} is required to build '...drv', but I am a 'x86_64-linux' ..."; 2.34 "Cannot build
# '...drv'. Reason: platform mismatch. Required system: 'aarch64-linux'".
NO_AARCH64 = re.compile(r"a 'aarch64-linux' with features \{\} is required"
                        r"|Required system: 'aarch64-linux'")

DETERMINATE_INCLUDE = "!include nix.custom.conf\n"
CUSTOM_CONF = "# Written by Determinate's installer: settings of your own go here.\n"

RESTART_INTERVAL = "restart-interval-seconds = 0.5"
LAYOUTS = ("distro", "upstream", "determinate")


class Cell(NamedTuple):
    generation: Generation
    layout: str
    machine: Machine
    line: str  # the tree's own qemu-aarch64 binfmt.d line
    conf: str  # the file binfmtd writes its block to
    derivation: str  # what the user builds (tests/support/nix.py's), in the user's home


CELLS = [(generation, layout) for generation in GENERATIONS for layout in LAYOUTS]


def _cell_id(cell: tuple[Generation, str]) -> str:
    return f"{cell[0].suite}-{cell[1]}"


def _timed(label: str, start: float) -> None:
    print(f"timing: {label}: {time.monotonic() - start:.2f} s", flush=True)


def _tree(generation: Generation) -> Path:
    require_nspawn()
    busybox("arm64")  # fetched into BUSYBOX unless there (skipped, in CI failed, if not)
    start = time.monotonic()
    tree = required_tree(generation)
    _timed(f"{generation.suite} tree", start)
    return tree


def _lay_out_nix(machine: Machine, layout: str) -> str:
    """Arrange Nix as `layout`'s installer does; return the file binfmtd must write."""
    machine.write_text("/etc/nix/nix.conf", DAEMON_CONF)
    conf = "/etc/nix/nix.conf"
    if layout == "upstream":
        machine.move_nix(PROFILE_BIN)
    elif layout == "determinate":
        machine.write_text("/etc/nix/nix.conf", DAEMON_CONF + DETERMINATE_INCLUDE)
        machine.write_text("/etc/nix/nix.custom.conf", CUSTOM_CONF)
        conf = "/etc/nix/nix.custom.conf"
    machine.run(["systemctl", "try-restart", "nix-daemon.service"])
    return conf


def _install_binfmtd(machine: Machine) -> None:
    """`dpkg -i` as a user would; the service starts by itself and must become active."""
    start = time.monotonic()
    machine.run(["dpkg", "-i", "/opt/binfmtd.deb"], timeout=300)
    _await_active(machine, "after dpkg -i")
    _timed("dpkg -i and binfmtd active", start)
    # Four changes a few seconds apart per test: at the default of one nix-daemon restart
    # per 10 s, each cell would wait half a minute for binfmtd's pacing (the pacing has its
    # own tests). Set as a user would, in the shipped config.toml.
    machine.run(["sed", "-i", f"s/^#restart-interval-seconds = .*/{RESTART_INTERVAL}/",
                 "/etc/binfmtd/config.toml"])
    assert RESTART_INTERVAL in machine.read_text("/etc/binfmtd/config.toml")
    machine.run(["systemctl", "restart", "binfmtd"])
    _await_active(machine, "after config.toml changed")


def _await_active(machine: Machine, what: str) -> None:
    """Type=notify: active means binfmtd said READY=1, after its first reconcile."""
    machine.wait_for(lambda: machine.run(["systemctl", "is-active", "binfmtd"],
                                         check=False).stdout.strip() == "active",
                     CHANGE_TIMEOUT, f"binfmtd.service active {what}")


@pytest.fixture(scope="module")
def cell(request: pytest.FixtureRequest, debian_package: Path) -> Iterator[Cell]:
    """One booted container per generation and layout, shared by its F and no-F tests."""
    generation, layout = request.param
    tree = _tree(generation)
    start = time.monotonic()
    binds = {str(BUSYBOX): "/opt/busybox", str(debian_package): "/opt/binfmtd.deb"}
    with boot(tree, binds_ro=binds, name=f"binfmtd-{generation.suite}-{layout}") as machine:
        _timed(f"boot {generation.suite}", start)
        try:
            machine.mount_binfmt_misc()
        except Exception as error:
            require(False, f"no private binfmt_misc in the container (Linux >= 6.7): {error}")
        assert machine.binfmt_entries() == [], "the container's binfmt_misc is not private"
        line = machine.read_text("/usr/lib/binfmt.d/qemu-aarch64.conf").strip()
        assert line.startswith(":qemu-aarch64:M:"), line
        conf = _lay_out_nix(machine, layout)
        machine.run(["useradd", "--create-home", "--groups", "nix-users", USER])
        derivation = lay_out_builds(machine, f"/home/{USER}/matrix", USER,
                                    {SYSTEM: "/opt/busybox"})
        _install_binfmtd(machine)
        _timed(f"cell {generation.suite}-{layout} ready", start)
        yield Cell(generation, layout, machine, line, conf, derivation)


def _build(cell: Cell, nonce: str) -> tuple[int, str]:
    """A non-root user's build through nix-daemon; (exit status, what Nix printed)."""
    machine = cell.machine
    start = time.monotonic()
    result = machine.run(["nix-build", "--no-out-link", cell.derivation,
                          *derivation_args(SYSTEM, nonce)], check=False, user=USER,
                         timeout=BUILD_TIMEOUT,
                         env={"NIX_REMOTE": "daemon", "PATH": f"{PROFILE_BIN}:/usr/bin:/bin"})
    _timed(f"build {nonce} -> exit {result.returncode}", start)
    if result.returncode == 0:
        out = machine.read_text(result.stdout.strip().splitlines()[-1]).strip()
        return 0, out
    return result.returncode, result.stderr


def _invocation(machine: Machine) -> str:
    """nix-daemon.service's current run as systemd numbers it: a restart gives a new one."""
    return machine.run(["systemctl", "show", "--property=InvocationID", "--value",
                        "nix-daemon.service"]).stdout.strip()


def _declares(cell: Cell) -> bool:
    return "aarch64-linux" in cell.machine.read_text(cell.conf)


def _status(machine: Machine) -> dict[str, Any]:
    result = machine.run(["binfmtd", "status", "--json"], check=False)
    assert result.returncode in (0, 1), result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def _await_change(cell: Cell, declared: bool, invocation: str, what: str) -> None:
    """Wait until the block says `declared` and nix-daemon runs anew since `invocation`."""
    start = time.monotonic()
    cell.machine.wait_for(lambda: _declares(cell) is declared, CHANGE_TIMEOUT,
                          f"{cell.conf} {'declares' if declared else 'no longer declares'} "
                          f"aarch64-linux ({what})")
    _timed(f"{what}: {cell.conf} changed", start)
    try:
        cell.machine.wait_for(lambda: _invocation(cell.machine) not in ("", invocation),
                              CHANGE_TIMEOUT, f"binfmtd restarted nix-daemon ({what})")
    except AssertionError as error:
        journal = cell.machine.run(["journalctl", "-o", "short-precise", "--no-pager",
                                    "-n", "60"], check=False).stdout
        raise AssertionError(f"{error}\nthe container's journal:\n{journal}") from None
    _timed(f"{what}: nix-daemon restarted", start)


def _await_settled(cell: Cell) -> None:
    """Nothing registered, nothing declared, and binfmtd sees no restart owed."""
    cell.machine.unregister("qemu-aarch64")

    def settled() -> bool:
        status = _status(cell.machine)
        return (not _declares(cell) and status["in_sync"] is True
                and status["nix_daemon"]["restart_needed"] is False)

    cell.machine.wait_for(settled, CHANGE_TIMEOUT, "no registration, no block, no restart owed")


@pytest.mark.parametrize("flags", ["F", "noF"])
@pytest.mark.parametrize("cell", CELLS, ids=_cell_id, indirect=True, scope="module")
def test_registration_reaches_a_users_build(cell: Cell, flags: str) -> None:
    machine = cell.machine
    line = cell.line if flags == "F" else re.sub(r":([A-Z]*)F([A-Z]*)$", r":\1\2", cell.line)
    assert line.endswith("F") is (flags == "F"), line
    tag = f"{cell.generation.suite}-{cell.layout}-{flags}"
    _await_settled(cell)  # also after an earlier test of this cell failed half-way
    nix_conf_before = machine.read_text("/etc/nix/nix.conf")
    conf_before = machine.read_text(cell.conf)

    status, said = _build(cell, f"{tag}-before")
    assert status != 0 and NO_AARCH64.search(said), said

    invocation = _invocation(machine)  # the failed build started it (socket activation)
    name = machine.register(line)
    try:
        _await_change(cell, True, invocation, "registered")
        status, said = _build(cell, f"{tag}-after")
        assert (status, said) == (0, "aarch64"), said

        reading = _status(machine)
        nix = f"{PROFILE_BIN}/nix" if cell.layout == "upstream" else "/usr/bin/nix"
        assert reading["nix"] == {"path": nix, "version": cell.generation.nix}, reading["nix"]
        service = machine.run(["journalctl", "-u", "binfmtd.service", "-o", "cat",
                               "--no-pager"]).stdout  # the service found the same Nix
        assert f"asks {nix} ({cell.generation.nix})" in service, service[-2000:]
        assert "aarch64-linux" in reading["effective"]["extra-platforms"].split()
        assert reading["in_sync"] is True and reading["problems"] == [], reading["problems"]
        if cell.layout == "determinate":
            assert machine.read_text("/etc/nix/nix.conf") == nix_conf_before
    finally:
        invocation = _invocation(machine)
        machine.unregister(name)
    assert machine.binfmt_entries() == []
    _await_change(cell, False, invocation, "removed")
    assert machine.read_text(cell.conf) == conf_before
    assert "aarch64-linux" not in _status(machine)["effective"]["extra-platforms"].split()

    status, said = _build(cell, f"{tag}-removed")
    assert status != 0 and NO_AARCH64.search(said), said
