"""A nix.conf that Ansible templates, and the binfmtd role beside it (issue 11, item 4).

Without help the two fight: the template drops binfmtd's block on every run, binfmtd puts
it back and restarts nix-daemon, and every run reports "changed". With `!include
binfmtd.conf` at the end of the template, binfmtd writes only that file of its own: the
second run reports changed=0 and nix-daemon keeps its pid.

Real ansible-core and a real nix-daemon, both in a private namespace (its own binfmt_misc,
its own daemon socket): the host's /etc/nix and binfmt_misc are neither read nor changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.ansible import Ansible, role_vars
from tests.support.kernel import DEBIAN_AARCH64_MAGIC, PrivateBinfmt, binfmt_line
from tests.support.nix import NixDaemon
from tests.support.parts import require

AARCH64 = binfmt_line("binfmtd-test-template-aarch64",
                      "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", magic=DEBIAN_AARCH64_MAGIC)
TEMPLATE = """\
# {{ ansible_managed }}
build-users-group = nixbld
sandbox = true
sandbox-fallback = false
substituters =
{% if include_binfmtd %}
!include binfmtd.conf
{% endif %}
"""
PLAY = """\
- name: a templated nix.conf, and the binfmtd role
  hosts: localhost
  gather_facts: false
  pre_tasks:
    - name: Template nix.conf
      ansible.builtin.template:
        src: {template}
        dest: {nix_conf}
        mode: "0644"
  roles:
    - role: binfmtd
"""


@pytest.fixture
def farm(ansible_venv: Path, tmp_path: Path,
         real_binfmt: PrivateBinfmt) -> tuple[Ansible, NixDaemon]:
    require(os.geteuid() == 0, "nix-daemon and binfmt_misc need root")
    for program in ("nix-daemon", "nix-build"):
        require(shutil.which(program), f"{program} not found (apt-get install nix-bin)")
    require(Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists(),
            "qemu-user-static is not installed")
    daemon = NixDaemon(tmp_path / "nix-daemon", real_binfmt)
    daemon.setup()
    daemon.start()
    template = tmp_path / "nix.conf.j2"
    template.write_text(TEMPLATE)
    ansible = Ansible(ansible_venv, tmp_path, role_vars(
        tmp_path, daemon.conf_path, restart=daemon.restart_command,
        binfmtd_restart_interval_seconds=0.1, include_binfmtd=True), real_binfmt)
    ansible.play.write_text(PLAY.format(template=template, nix_conf=daemon.conf_path))
    yield ansible, daemon
    daemon.stop()


def test_a_templated_nix_conf_with_the_include_line_settles_and_nix_daemon_keeps_its_pid(
    farm: tuple[Ansible, NixDaemon],
) -> None:
    ansible, daemon = farm
    ansible.namespace.register(AARCH64)
    own = daemon.conf_path.parent / "binfmtd.conf"
    first_pid = daemon.pid

    first = ansible.playbook()
    assert first.recap["changed"] >= 2 and first.recap["failed"] == 0  # template, sync
    rendered = daemon.conf_path.read_text()
    assert rendered.rstrip().endswith("!include binfmtd.conf")
    assert "BEGIN binfmtd" not in rendered  # the templated file is the template's alone
    assert "aarch64-linux" in own.read_text()
    assert daemon.pid != first_pid  # restarted once, for the new block
    settled_pid, settled = daemon.pid, (rendered, own.read_text())

    second = ansible.playbook()
    assert second.recap["changed"] == 0 and second.recap["failed"] == 0, second.output
    assert daemon.pid == settled_pid
    assert (daemon.conf_path.read_text(), own.read_text()) == settled


def test_without_the_include_line_the_template_and_binfmtd_fight(
    farm: tuple[Ansible, NixDaemon],
) -> None:
    """The control: the same play without the line never settles."""
    ansible, daemon = farm
    ansible.namespace.register(AARCH64)
    without = ["-e", '{"include_binfmtd": false}']
    ansible.playbook(*without)
    assert "aarch64-linux" in daemon.conf_path.read_text()  # binfmtd wrote into the template
    again = ansible.playbook(*without)
    again.expect("Keep nix.conf in step with binfmt_misc", "changed")
    assert again.recap["changed"] >= 2  # the template dropped the block, binfmtd added it
