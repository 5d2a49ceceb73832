"""Real ansible-core (from PyPI, in a venv of its own) and the project's role, as the
packaging and farm tiers run them: nothing from ~, /etc/ansible or ./ansible.cfg."""

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

from tests.support.kernel import BINFMT_MISC, PrivateBinfmt
from tests.support.parts import CACHE, REPO, require

ANSIBLE_DIR = REPO / "packaging" / "ansible"
ROLES = ANSIBLE_DIR / "roles"
ANSIBLE_SPEC = "ansible-core>=2.14"
STAMP = ".binfmtd-tests-installed"

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


def role_vars(tmp: Path, nix_conf: Path, restart: object, **more: object) -> dict[str, object]:
    """The role's variables for a run inside a private namespace: the venv's binfmtd,
    config.toml in `tmp`, binfmt_misc as seen inside (its own instance); no package to
    install and no service to manage (no systemd there; the service is tests/system's)."""
    return {
        "binfmtd_install_package": False,
        "binfmtd_command": str(binfmtd_command()),
        "binfmtd_manage_service": False,
        "binfmtd_config_path": str(tmp / "etc" / "binfmtd" / "config.toml"),
        "binfmtd_nix_conf": str(nix_conf),
        "binfmtd_binfmt_misc": BINFMT_MISC,
        "binfmtd_restart": restart,
        **more,
    }


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


def environment(tmp: Path, **settings: str) -> dict[str, str]:
    """ansible-playbook's environment: the project's roles, an empty ansible.cfg in `tmp`
    (not ./ansible.cfg, ~ or /etc/ansible), its home and temp folders there, plain output;
    `settings` on top."""
    (tmp / "ansible.cfg").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp / "ansible-home"),
        ANSIBLE_ROLES_PATH=str(ROLES),
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_STDOUT_CALLBACK="default",
        LC_ALL="C.UTF-8",  # ansible-core refuses a non-UTF-8 locale
        **settings,
    )
    return env


def recap(line: str) -> dict[str, int]:
    """A host's counts (ok, changed, failed, ...) from its line of the PLAY RECAP."""
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


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
        self.env = environment(tmp, ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"),
                               ANSIBLE_HOST_KEY_CHECKING="False")

    def command(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = self.namespace.argv([str(self.venv / "bin" / program), *args], cwd=str(self.tmp))
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=600,
                              check=False)

    def playbook(self, *args: str, check: bool = True) -> Run:
        """ansible-playbook with `args`; with `check`, it must succeed."""
        started = time.monotonic()
        done = self.command("ansible-playbook", "-i", str(self.inventory), str(self.play),
                            "-e", f"@{self.vars}", *args)
        seconds = time.monotonic() - started
        output = done.stdout + done.stderr
        assert done.returncode == 0 or not check, output
        line = re.search(r"^PLAY RECAP \*+\n(localhost\s*:.*)$", done.stdout, re.M)
        assert line, output
        run = Run(args, output, seconds, recap(line.group(1)))
        shown = " ".join(a if len(a) < 40 else a[:36] + "...}" for a in args) or "(apply)"
        print(f"\nansible-playbook {shown}: {seconds:.1f} s\n"
              f"  {' '.join(line.group(1).split())}")
        return run
