"""packaging/ansible: the binfmtd role, run by real ansible-core (from PyPI) on localhost.

ansible-playbook runs in a private namespace (tests/support/kernel.py) whose binfmt_misc
is a real kernel instance of its own, holding only the handlers the test registers (sparc64
and m68k); config.toml and nix.conf are in a temporary folder. The host's binfmt_misc and
/etc/nix are neither read nor changed (tests/packaging/conftest.py checks). It proves the
configuration management contract: the first run reports a change, the second none, and
`--check` reports what would change while writing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from binfmtd.config import KEYS
from tests.support.ansible import ANSIBLE_DIR, Ansible, role_vars
from tests.support.kernel import PrivateBinfmt, binfmt_line
from tests.support.parts import require


def _hex(text: str) -> str:
    return "".join(f"\\x{text[i:i + 2]}" for i in range(0, len(text), 2))


# Debian 12's qemu-user-static lines for sparc64 and m68k (tests/data/binfmt_misc/debian).
SPARC64 = binfmt_line(
    "binfmtd-test-ansible-sparc64", "/usr/libexec/qemu-binfmt/sparc64-binfmt-P",
    magic=_hex("7f454c460202010000000000000000000002002b"),
    mask=_hex("fffffffffffffffcfffffffffffffffffffeffff"))
M68K = binfmt_line(
    "binfmtd-test-ansible-m68k", "/usr/libexec/qemu-binfmt/m68k-binfmt-P",
    magic=_hex("7f454c4601020100000000000000000000020004"),
    mask=_hex("ffffffffffffff00fffffffffffffffffffeffff"))


@pytest.fixture
def ansible(ansible_venv: Path, tmp_path: Path, real_binfmt: PrivateBinfmt) -> Ansible:
    """The role's variables: the venv's binfmtd, paths in tmp_path, binfmt_misc as seen
    inside the namespace (its own instance), no restart."""
    return Ansible(ansible_venv, tmp_path,
                   role_vars(tmp_path, tmp_path / "nix" / "nix.conf", restart=False), real_binfmt)


SYNC = "Keep nix.conf in step with binfmt_misc"


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_role_changes_once_then_nothing_and_check_mode_writes_nothing(ansible: Ansible) -> None:
    config = ansible.tmp / "etc" / "binfmtd" / "config.toml"
    nix_conf = ansible.tmp / "nix" / "nix.conf"
    nix_conf.parent.mkdir()
    nix_conf.write_text("sandbox = true\n")
    for interpreter in ("sparc64", "m68k"):  # the F flag opens it at registration
        require(Path(f"/usr/libexec/qemu-binfmt/{interpreter}-binfmt-P").exists(),
                "qemu-user-static is not installed (apt-get install qemu-user-static)")
    assert ansible.namespace.entries() == []  # the namespace's own binfmt_misc
    ansible.namespace.register(SPARC64)
    fresh = snapshot(nix_conf)

    # --check on a host without config.toml: reports the change, writes nothing.
    run = ansible.playbook("--check")
    assert run.recap["changed"] > 0 and run.recap["failed"] == 0
    run.expect("Write config.toml", "changed")
    run.expect(SYNC, "changed")
    assert not config.exists()
    assert snapshot(nix_conf) == fresh

    # First run: config.toml written, the block added after every byte of the file.
    run = ansible.playbook()
    assert run.recap["changed"] > 0 and run.recap["failed"] == 0
    run.expect(SYNC, "changed")
    text = nix_conf.read_text()
    assert text.startswith("sandbox = true\n")
    assert "# BEGIN binfmtd managed block" in text and "sparc64-linux" in text.split("BEGIN")[1]
    assert "restart = false" in config.read_text()
    # The template writes every key binfmtd knows, and binfmtd reads the file it wrote.
    written = tomllib.loads(config.read_text())
    assert set(written) == set(KEYS), set(written) ^ set(KEYS)
    synced, configured = snapshot(nix_conf), snapshot(config)

    # Second run: nothing to do, nothing written.
    run = ansible.playbook()
    assert run.recap["changed"] == 0 and run.recap["failed"] == 0
    run.expect(SYNC, "ok")
    assert snapshot(nix_conf) == synced
    assert snapshot(config) == configured

    # A new emulator: --check reports the change, --diff shows it, nix.conf is untouched.
    ansible.namespace.register(M68K)
    run = ansible.playbook("--check", "--diff")
    assert run.recap["changed"] == 1 and run.recap["failed"] == 0
    run.expect(SYNC, "changed")
    assert "-extra-extra-platforms = sparc64-linux\n+extra-extra-platforms = m68k-linux " \
           "sparc64-linux" in run.output, run.output
    assert snapshot(nix_conf) == synced
    assert snapshot(config) == configured

    # --check answers for the config.toml the play would write, not the one on disk:
    # ignoring m68k-linux too makes nix.conf in step again, though config.toml would change.
    ignore = json.dumps({"binfmtd_ignore_platforms": ["m68k-linux"]})
    run = ansible.playbook("--check", "--diff", "-e", ignore)
    run.expect("Write config.toml", "changed")
    run.expect(SYNC, "ok")
    assert snapshot(nix_conf) == synced
    assert snapshot(config) == configured

    # Applied: the new platform is declared.
    run = ansible.playbook()
    assert run.recap["changed"] > 0 and run.recap["failed"] == 0
    assert "m68k-linux" in nix_conf.read_text().split("BEGIN")[1]
    print(f"\nnix.conf after the last run:\n{nix_conf.read_text()}")


def test_a_variable_of_the_wrong_kind_stops_the_role_before_it_runs(ansible: Ansible) -> None:
    """meta/argument_specs.yml: every variable is checked before any task runs."""
    run = ansible.playbook("-e", json.dumps({"binfmtd_declare_i686": "maybe"}), check=False)
    assert run.recap.get("failed") == 1, run.output
    assert "binfmtd_declare_i686" in run.output and "bool" in run.output, run.output
    assert "Write config.toml" not in run.output  # stopped before the first task


def test_example_playbook_passes_the_syntax_check(ansible: Ansible) -> None:
    done = ansible.command("ansible-playbook", "--syntax-check", "-i", str(ansible.inventory),
                           str(ANSIBLE_DIR / "site.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
