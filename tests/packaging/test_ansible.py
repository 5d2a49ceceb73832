"""packaging/ansible: the binfmtd role, run by real ansible-core (from PyPI) on localhost.

ansible-playbook runs in a private namespace (tests/support/kernel.py) whose binfmt_misc
is a real kernel instance of its own, holding only the handlers the test registers (sparc64
and m68k); config.toml and nix.conf are in a temporary folder. The host's binfmt_misc and
/etc/nix are neither read nor changed (tests/packaging/conftest.py checks). It proves the
configuration management contract: the first run reports a change, the second none, and
`--check` reports what would change while writing nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.kernel import BINFMT_MISC, PrivateBinfmt, binfmt_line
from tests.support.parts import REPO, require

ANSIBLE_DIR = REPO / "packaging" / "ansible"
ROLES = ANSIBLE_DIR / "roles"
CACHE = Path("/var/cache/binfmtd-tests")
ANSIBLE_SPEC = "ansible-core>=2.14"
STAMP = ".binfmtd-tests-installed"


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

TEST_PLAY = """\
- name: binfmtd role under test
  hosts: localhost
  gather_facts: false
  roles:
    - role: binfmtd
"""


def binfmtd_command() -> Path:
    """The project venv's binfmtd: beside the interpreter running the tests, else .venv."""
    for candidate in (Path(sys.executable).parent / "binfmtd", REPO / ".venv" / "bin" / "binfmtd"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    require(False, "no binfmtd in the project venv (make venv)")
    raise AssertionError("unreachable")


def _cache_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with contextlib.suppress(OSError):
        CACHE.mkdir(parents=True, exist_ok=True)
    if CACHE.is_dir() and os.access(CACHE, os.W_OK):
        return CACHE
    return tmp_path_factory.mktemp("ansible-cache")


def _works(venv: Path) -> bool:
    program = venv / "bin" / "ansible-playbook"
    if not (venv / STAMP).exists() or not program.exists():
        return False
    probe = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                           env={**os.environ, "LC_ALL": "C.UTF-8"}, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def ansible_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ansible-core from PyPI, built once (pip: 5-20 s) and kept in CACHE."""
    base = _cache_base(tmp_path_factory)
    venv = base / "ansible-venv"
    with (base / "ansible-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs build it once
        if not _works(venv):
            shutil.rmtree(venv, ignore_errors=True)
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", ANSIBLE_SPEC],
                capture_output=True, text=True, timeout=900, check=False)
            if pip.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
            require(pip.returncode == 0,
                    f"pip cannot install {ANSIBLE_SPEC}: {pip.stderr.strip()[-600:]}")
            (venv / STAMP).write_text(ANSIBLE_SPEC + "\n")
            print(f"\nansible venv built in {time.monotonic() - started:.1f} s at {venv}")
    return venv


@dataclass
class Run:
    args: tuple[str, ...]
    output: str
    seconds: float
    recap: dict[str, int]

    def task(self, name: str) -> str:
        """How the role's task `name` ended: ok, changed, skipping, fatal, failed."""
        for block in self.output.split("\nTASK [")[1:]:
            if block.startswith(f"binfmtd : {name}]"):
                found = re.search(r"^(ok|changed|skipping|fatal|failed):", block, re.M)
                assert found, block
                return found.group(1)
        raise AssertionError(f"task {name!r} not in the output:\n{self.output}")

    def expect(self, name: str, status: str) -> None:
        assert self.task(name) == status, f"{name}: not {status}\n{self.output}"


class Ansible:
    """ansible-playbook on localhost (connection local) inside `namespace`, with nothing
    from ~ or /etc."""

    def __init__(self, venv: Path, tmp: Path, extra_vars: dict[str, object],
                 namespace: PrivateBinfmt) -> None:
        self.venv = venv
        self.tmp = tmp
        self.namespace = namespace
        python = venv / "bin" / "python"
        self.inventory = tmp / "inventory"
        self.inventory.write_text(
            f"localhost ansible_connection=local ansible_python_interpreter={python}\n")
        self.play = tmp / "play.yml"
        self.play.write_text(TEST_PLAY)
        self.vars = tmp / "vars.json"
        self.vars.write_text(json.dumps(extra_vars))
        (tmp / "ansible.cfg").write_text("")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        self.env.update(
            ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),  # not ./ansible.cfg, ~ or /etc/ansible
            ANSIBLE_HOME=str(tmp / "ansible-home"),
            ANSIBLE_ROLES_PATH=str(ROLES),
            ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
            ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_RETRY_FILES_ENABLED="False",
            ANSIBLE_STDOUT_CALLBACK="default",
            LC_ALL="C.UTF-8",  # ansible-core refuses a non-UTF-8 locale
        )

    def command(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = self.namespace.argv([str(self.venv / "bin" / program), *args], cwd=str(self.tmp))
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=600,
                              check=False)

    def playbook(self, *args: str) -> Run:
        started = time.monotonic()
        done = self.command("ansible-playbook", "-i", str(self.inventory), str(self.play),
                            "-e", f"@{self.vars}", *args)
        seconds = time.monotonic() - started
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        line = re.search(r"^PLAY RECAP \*+\n(localhost\s*:.*)$", done.stdout, re.M)
        assert line, output
        recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}
        run = Run(args, output, seconds, recap)
        shown = " ".join(a if len(a) < 40 else a[:36] + "...}" for a in args) or "(apply)"
        print(f"\nansible-playbook {shown}: {seconds:.1f} s\n"
              f"  {' '.join(line.group(1).split())}")
        return run


@pytest.fixture
def ansible(ansible_venv: Path, tmp_path: Path, real_binfmt: PrivateBinfmt) -> Ansible:
    """The role's variables: the venv's binfmtd, paths in tmp_path, binfmt_misc as seen
    inside the namespace (its own instance)."""
    return Ansible(ansible_venv, tmp_path, {
        "binfmtd_install_package": False,
        "binfmtd_command": str(binfmtd_command()),
        "binfmtd_manage_service": False,  # no systemd here; the service is tests/system's
        "binfmtd_config_path": str(tmp_path / "etc" / "binfmtd" / "config.toml"),
        "binfmtd_nix_conf": str(tmp_path / "nix" / "nix.conf"),
        "binfmtd_binfmt_misc": BINFMT_MISC,
        "binfmtd_restart": False,
    }, real_binfmt)


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
    run.expect("Check whether nix.conf is in step with binfmt_misc", "changed")
    run.expect("Sync nix.conf with binfmt_misc", "skipping")
    assert not config.exists()
    assert snapshot(nix_conf) == fresh

    # First run: config.toml written, the block added after every byte of the file.
    run = ansible.playbook()
    assert run.recap["changed"] > 0 and run.recap["failed"] == 0
    run.expect("Sync nix.conf with binfmt_misc", "changed")
    run.expect("Check whether nix.conf is in step with binfmt_misc", "ok")
    text = nix_conf.read_text()
    assert text.startswith("sandbox = true\n")
    assert "# BEGIN binfmtd managed block" in text and "sparc64-linux" in text.split("BEGIN")[1]
    assert "restart = false" in config.read_text()
    synced, configured = snapshot(nix_conf), snapshot(config)

    # Second run: nothing to do, nothing written.
    run = ansible.playbook()
    assert run.recap["changed"] == 0 and run.recap["failed"] == 0
    run.expect("Sync nix.conf with binfmt_misc", "skipping")
    assert snapshot(nix_conf) == synced
    assert snapshot(config) == configured

    # A new emulator: --check reports the change and leaves nix.conf byte for byte.
    ansible.namespace.register(M68K)
    run = ansible.playbook("--check", "--diff")
    assert run.recap["changed"] == 1 and run.recap["failed"] == 0
    run.expect("Check whether nix.conf is in step with binfmt_misc", "changed")
    run.expect("Sync nix.conf with binfmt_misc", "skipping")
    assert snapshot(nix_conf) == synced
    assert snapshot(config) == configured

    # --check answers for the config.toml the play would write, not the one on disk:
    # ignoring m68k-linux too makes nix.conf in step again, though config.toml would change.
    ignore = json.dumps({"binfmtd_ignore_platforms": ["m68k-linux"]})
    run = ansible.playbook("--check", "--diff", "-e", ignore)
    run.expect("Write config.toml", "changed")
    run.expect("Check whether nix.conf is in step with binfmt_misc", "ok")
    assert snapshot(nix_conf) == synced
    assert snapshot(config) == configured

    # Applied: the new platform is declared.
    run = ansible.playbook()
    assert run.recap["changed"] > 0 and run.recap["failed"] == 0
    assert "m68k-linux" in nix_conf.read_text().split("BEGIN")[1]
    print(f"\nnix.conf after the last run:\n{nix_conf.read_text()}")


def test_example_playbook_passes_the_syntax_check(ansible: Ansible) -> None:
    done = ansible.command("ansible-playbook", "--syntax-check", "-i", str(ansible.inventory),
                           str(ANSIBLE_DIR / "site.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
