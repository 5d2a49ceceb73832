"""A small build farm: one binfmtd builder, one Nix client, the role keeping them in step.

Two booted Debian 12 containers (tests/support/containers.py: each with a private, empty
binfmt_misc) share one network namespace the test creates (`ip netns add`; nspawn's
--network-namespace-path), with the builder at 10.77.0.1 and the client at 10.77.0.2 on a
loopback inside it: no traffic leaves that namespace. ansible-playbook runs on the host
inside the same namespace (`ip netns exec`) and reaches both sshd's with a key the test
makes; the client's nix-daemon reaches the builder with another (the operator's keys).

- builder: the project's .deb (binfmtd.service follows its binfmt_misc), nix-daemon, qemu
  (qemu-user-static), sshd;
- client: Nix with no emulation declared; the role writes its /etc/nix/machines from the
  builder's `binfmtd builder-line --json` (Nix's default `builders = @/etc/nix/machines`).

A non-root user's aarch64-linux build on the client fails with Nix's own message while the
builder has no aarch64 emulator, and is built on the builder under qemu once it has one and
the role ran; riscv64 follows the same way in and out; a run on an unchanged farm changes
nothing and restarts nothing. Nix 2.8 (bookworm) on both sides is enough for the farm:
its legacy `ssh://` protocol is what every later Nix takes too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support import ansible
from tests.support.containers import Machine, boot, require_nspawn
from tests.support.debian import BOOKWORM, busybox, cached_busybox, required_tree
from tests.support.nix import (  # DAEMON_CONF: sandbox = true, sandbox-fallback = false
    DAEMON_CONF,
    DERIVATION_FILE,
    derivation_args,
    lay_out_builds,
)
from tests.support.parts import require

BUILDER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
USER = "alice"
WORK = f"/home/{USER}/farm"  # the client's: what alice builds, and its builders
NIX_KEY = "/root/.ssh/farm_builder"  # the client's nix-daemon's key for the builder
CHANGE_TIMEOUT = 60.0
BUILD_TIMEOUT = 240.0
SYSTEMS = {"aarch64-linux": "arm64", "riscv64-linux": "riscv64"}
# Nix 2.8 when nothing can build it: "a 'aarch64-linux' with features {} is required ...".
NIX_REFUSES = "(a|Required system:) '{}' with features \\{{\\}}"

PLAY = """\
- name: binfmtd farm
  hosts: all
  gather_facts: false
  roles:
    - role: binfmtd
"""


class Farm(NamedTuple):
    builder: Machine
    client: Machine
    tmp: Path
    netns: str
    venv: Path


class Run(NamedTuple):
    output: str
    recap: dict[str, dict[str, int]]  # host -> ok, changed, failed, ...


# --- the network namespace ------------------------------------------------------------


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A network namespace of the test's own: lo, with the builder's and client's addresses."""
    require(os.geteuid() == 0, "ip netns add needs root")
    require(shutil.which("ip") is not None, "ip not found (apt-get install iproute2)")
    name = f"binfmtd-farm-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        for address in (BUILDER_IP, CLIENT_IP):  # on lo: no link module needed
            _ip("-n", name, "addr", "add", f"{address}/32", "dev", "lo")
        # Root of a container's user namespace does not own this namespace: let its sshd
        # bind port 22 (this namespace only).
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                        "net.ipv4.ip_unprivileged_port_start=0"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


# --- the containers -------------------------------------------------------------------


def _sshd(machine: Machine, address: str, authorized: str) -> None:
    """sshd on `address` only, host keys of its own, `authorized` may log in as root.

    Both containers share one network namespace: whichever sshd started first at boot
    listens on 0.0.0.0:22 and the other's fails, so both are stopped (`_stop_sshd`) before
    either listens on its own address.
    """
    machine.run(["sh", "-ec", "rm -f /etc/ssh/ssh_host_*; ssh-keygen -A -q"])
    machine.write_text("/etc/ssh/sshd_config.d/farm.conf",
                       f"ListenAddress {address}\nPermitRootLogin prohibit-password\n")
    machine.run(["sh", "-c", 'mkdir -p -m 700 /root/.ssh && cat >> /root/.ssh/authorized_keys'],
                input=authorized)
    machine.run(["systemctl", "restart", "ssh.service"])


def _stop_sshd(machine: Machine) -> None:
    """No sshd on 0.0.0.0:22, whichever container's won the race at boot."""
    machine.run(["systemctl", "stop", "ssh.service"])
    machine.run(["systemctl", "reset-failed", "ssh.service"])  # its failed starts at boot


def _setup_builder(builder: Machine, nix_pub: str) -> None:
    builder.mount_binfmt_misc()
    assert builder.binfmt_entries() == [], "the builder's binfmt_misc is not private"
    builder.write_text("/etc/nix/nix.conf", DAEMON_CONF)
    builder.run(["systemctl", "try-restart", "nix-daemon.service"])
    builder.run(["sh", "-c", "cat >> /root/.ssh/authorized_keys"], input=nix_pub)
    builder.run(["dpkg", "-i", "/opt/binfmtd.deb"], timeout=300)
    builder.wait_for(lambda: builder.run(["systemctl", "is-active", "binfmtd"],
                                         check=False).stdout.strip() == "active",
                     CHANGE_TIMEOUT, "binfmtd.service active after dpkg -i")


def _setup_client(client: Machine) -> str:
    """The client: Nix, a user, the sources; returns its nix-daemon's public key."""
    client.mount_binfmt_misc()
    assert client.binfmt_entries() == [], "the client's binfmt_misc is not private"
    client.write_text("/etc/nix/nix.conf", DAEMON_CONF)
    client.run(["systemctl", "try-restart", "nix-daemon.service"])
    client.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", NIX_KEY])
    client.run(["useradd", "--create-home", "--groups", "nix-users", USER])
    lay_out_builds(client, WORK, USER,
                   {system: f"/opt/busybox-{arch}" for system, arch in SYSTEMS.items()})
    return client.read_text(f"{NIX_KEY}.pub")


@pytest.fixture(scope="module")
def farm(netns: str, debian_package: Path, ansible_venv: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    require_nspawn()
    require(shutil.which("ssh") is not None, "ssh not found (apt-get install openssh-client)")
    for arch in SYSTEMS.values():
        busybox(arch)  # fetched into the cache unless there (skipped, in CI failed, if not)
    start = time.monotonic()
    tree = required_tree(BOOKWORM)  # the matrix's bookworm tree: systemd, Nix, qemu, sshd
    print(f"\ntiming: farm tree {time.monotonic() - start:.1f} s", flush=True)
    tmp = tmp_path_factory.mktemp("farm")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ansible",
                    "-f", str(tmp / "ansible_key")], check=True)
    ansible_pub = (tmp / "ansible_key.pub").read_text()
    path = f"/run/netns/{netns}"
    binds = {str(cached_busybox(arch)): f"/opt/busybox-{arch}" for arch in SYSTEMS.values()}
    with boot(tree, binds_ro={str(debian_package): "/opt/binfmtd.deb"}, network_namespace=path,
              name="binfmtd-farm-builder") as builder, \
            boot(tree, binds_ro=binds, network_namespace=path,
                 name="binfmtd-farm-client") as client:
        for machine in (builder, client):
            _stop_sshd(machine)
        _sshd(builder, BUILDER_IP, ansible_pub)
        _sshd(client, CLIENT_IP, ansible_pub)
        _setup_builder(builder, _setup_client(client))
        print(f"timing: farm up {time.monotonic() - start:.1f} s", flush=True)
        yield Farm(builder, client, tmp, netns, ansible_venv)


# --- what the test looks at -----------------------------------------------------------


def playbook(farm: Farm, *args: str) -> Run:
    """ansible-playbook over SSH to both containers, from inside the farm's namespace."""
    tmp = farm.tmp
    (tmp / "inventory").write_text(f"""\
[binfmtd_builders]
builder ansible_host={BUILDER_IP} binfmtd_builder_ssh_key={NIX_KEY}

[clients]
client ansible_host={CLIENT_IP} binfmtd_manage_host=false

[all:vars]
ansible_user=root
ansible_python_interpreter=/usr/bin/python3
ansible_ssh_private_key_file={tmp / 'ansible_key'}
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
binfmtd_install_package=false
binfmtd_manage_service=true
""")
    (tmp / "play.yml").write_text(PLAY)
    env = ansible.environment(tmp, ANSIBLE_PIPELINING="True")
    argv = ["ip", "netns", "exec", farm.netns, str(farm.venv / "bin" / "ansible-playbook"),
            "-i", str(tmp / "inventory"), str(tmp / "play.yml"), *args]
    start = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=tmp, capture_output=True, text=True, timeout=600,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    recap = {host: ansible.recap(rest)
             for host, rest in re.findall(r"^(\w+)\s*:\s*(ok=.*)$", done.stdout, re.M)}
    print(f"ansible-playbook {' '.join(args) or '(apply)'}: {time.monotonic() - start:.1f} s "
          f"changed: builder {recap['builder']['changed']}, client {recap['client']['changed']}",
          flush=True)
    return Run(output, recap)


def builder_systems(farm: Farm) -> list[str]:
    line = json.loads(farm.builder.run(["binfmtd", "builder-line", "--json"]).stdout)
    systems: list[str] = line["systems"]
    return systems


def machines(farm: Farm) -> str:
    return farm.client.read_text("/etc/nix/machines")


def daemon_pid(machine: Machine) -> int:
    return int(machine.run(["systemctl", "show", "-p", "MainPID", "--value",
                            "nix-daemon.service"]).stdout)


def daemon_starts(machine: Machine) -> int:
    """How many times systemd started the client's nix-daemon (its journal)."""
    log = machine.run(["journalctl", "-u", "nix-daemon.service", "-o", "cat", "--no-pager"])
    return sum(1 for line in log.stdout.splitlines() if line.startswith("Started "))


def build(farm: Farm, system: str) -> subprocess.CompletedProcess[str]:
    """alice's build of a `system` derivation on the client, through its nix-daemon."""
    nonce = uuid.uuid4().hex  # a new output path every time: never answered from the store
    start = time.monotonic()
    result = farm.client.run(
        ["nix-build", "--no-out-link", f"{WORK}/{DERIVATION_FILE}",
         *derivation_args(system, nonce)],
        check=False, user=USER, timeout=BUILD_TIMEOUT, env={"NIX_REMOTE": "daemon"})
    print(f"timing: {system} build -> exit {result.returncode} "
          f"{time.monotonic() - start:.1f} s", flush=True)
    return result


def built_on_builder(farm: Farm, system: str, uname: str) -> None:
    result = build(farm, system)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.strip().splitlines()[-1]
    assert farm.client.read_text(out).strip() == uname
    assert farm.builder.run(["test", "-e", out], check=False).returncode == 0, (
        f"{out} was not built on the builder")


def refused(farm: Farm, system: str) -> None:
    result = build(farm, system)
    assert result.returncode != 0
    assert re.search(NIX_REFUSES.format(system), result.stderr), result.stderr[-3000:]


def register(farm: Farm, arch: str) -> str:
    """The builder's own qemu-user-static line for `arch`, registered; returns its name."""
    line = farm.builder.read_text(f"/usr/lib/binfmt.d/qemu-{arch}.conf").strip()
    assert line.startswith(f":qemu-{arch}:M:"), line
    return farm.builder.register(line)


def until_builder_lists(farm: Farm, expected: list[str]) -> None:
    """Wait for binfmtd.service and Nix on the builder: its line lists `expected`."""
    farm.builder.wait_for(lambda: builder_systems(farm) == expected, CHANGE_TIMEOUT,
                          f"the builder's line lists {expected}")


# --- the story ------------------------------------------------------------------------


def test_clients_follow_the_builders_emulators(farm: Farm) -> None:
    started = time.monotonic()
    # Before: no emulator on the builder, so its line offers only its own system.
    assert builder_systems(farm) == ["x86_64-linux"]
    first = playbook(farm)
    assert first.recap["client"]["changed"] > 0 and first.recap["client"]["failed"] == 0
    assert "x86_64-linux" in machines(farm) and "aarch64-linux" not in machines(farm)
    refused(farm, "aarch64-linux")
    pids = [daemon_pid(farm.client)]

    # 1. aarch64 on the builder: the role brings it to the client, the build goes there.
    register(farm, "aarch64")
    until_builder_lists(farm, ["x86_64-linux", "aarch64-linux"])
    run = playbook(farm)
    assert run.recap["client"]["changed"] == 2, run.output  # the file, the restart
    assert "x86_64-linux,aarch64-linux" in machines(farm)
    pids.append(daemon_pid(farm.client))
    built_on_builder(farm, "aarch64-linux", "aarch64")
    # ssh on the client had no known_hosts: it trusted the builder by the line's host key.
    assert farm.client.read_text("/root/.ssh/known_hosts") == ""

    # 2. riscv64: --check says so and touches nothing; the run writes it, one restart.
    register(farm, "riscv64")
    until_builder_lists(farm, ["x86_64-linux", "aarch64-linux", "riscv64-linux"])
    before, starts = machines(farm), daemon_starts(farm.client)
    check = playbook(farm, "--check", "--diff")
    assert check.recap["client"]["changed"] == 2, check.output  # would write, would restart
    assert "+" in check.output and "riscv64-linux" in check.output
    assert machines(farm) == before and daemon_pid(farm.client) == pids[-1]
    run = playbook(farm)
    assert run.recap["client"]["changed"] == 2, run.output  # the file, the restart
    assert "riscv64-linux" in machines(farm)
    pids.append(daemon_pid(farm.client))
    assert daemon_starts(farm.client) == starts + 1, "nix-daemon not restarted exactly once"
    built_on_builder(farm, "riscv64-linux", "riscv64")

    # 3. riscv64 gone from the builder: the client no longer offers it riscv64 work.
    farm.builder.unregister("qemu-riscv64")
    until_builder_lists(farm, ["x86_64-linux", "aarch64-linux"])
    run = playbook(farm)
    assert run.recap["client"]["changed"] == 2, run.output  # the file, the restart
    assert "riscv64-linux" not in machines(farm) and "aarch64-linux" in machines(farm)
    pids.append(daemon_pid(farm.client))
    refused(farm, "riscv64-linux")

    # 4. Nothing changed on the farm: nothing changes, nothing restarts (the runs above,
    # each of which restarted nix-daemon, are the control).
    starts = daemon_starts(farm.client)
    run = playbook(farm)
    assert run.recap["client"]["changed"] == 0 and run.recap["builder"]["changed"] == 0, (
        run.output)
    assert daemon_pid(farm.client) == pids[-1] and daemon_starts(farm.client) == starts
    assert len(set(pids)) == len(pids), f"a run that changed the file did not restart: {pids}"
    print(f"client nix-daemon MainPIDs: {pids}; the story took "
          f"{time.monotonic() - started:.1f} s\nmachines file:\n{machines(farm)}", flush=True)
