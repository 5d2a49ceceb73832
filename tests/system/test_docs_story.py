"""Every command README.md and docs/ show, run as shown in a booted Debian 12 with the
project's .deb, checked against what the document says it prints (tests/support/sessions.py).

One machine runs the documents in order, as a new user would: README's install, register,
doctor and first build, then what the other documents show on top of it, ending with the
package's removal. `sudo` commands run as root, the others as a user in nix-users through
nix-daemon. The container has no network: `get-busybox` runs on the host and its file is
copied in, and nix.conf gets `substituters =` (Nix would ask cache.nixos.org); nothing else
of Debian's nix.conf changes (sandbox = false, as Debian ships it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.containers import Machine
from tests.support.debian import host_debian_mirror
from tests.support.parts import REPO
from tests.support.sessions import NOT_RUN, Step, every_step, shows
from tests.support.waiting import until

USER = "alice"
# Commands that only look, and how long to look again until they show what is said.
LOOKS = ("systemctl status", "sudo journalctl")
LOOK_TIMEOUT = 15.0
CHECKOUT = f"/home/{USER}/binfmtd"  # where the user cloned the repository



def test_every_session_of_the_docs_does_what_it_says(binfmt_machine: Machine,
                                                      debian_package: Path,
                                                      tmp_path: Path) -> None:
    machine = binfmt_machine
    machine.run(["useradd", "--create-home", "--groups", "nix-users", USER])
    machine.run(["sh", "-c", "echo 'substituters =' >> /etc/nix/nix.conf"])
    machine.copy_in(REPO / "docs" / "examples", f"{CHECKOUT}/docs/examples")
    cwd = CHECKOUT
    ran = []
    for step in every_step():
        if step.command in NOT_RUN:
            continue
        if step.command == "make deb":
            machine.copy_in(debian_package, f"{CHECKOUT}/dist/{debian_package.name}")
            machine.run(["chown", "-R", f"{USER}:{USER}", CHECKOUT])
            continue
        if step.command.startswith("cd "):
            cwd = os.path.normpath(os.path.join(cwd, step.command[3:]))
            continue
        output = (_get_busybox(machine, step, cwd, tmp_path) if "get-busybox" in step.command
                  else _run(machine, step, cwd))
        assert shows(output, step.shown), (step, output)
        ran.append(step.command)
    assert "sudo binfmtd doctor" in ran and len(ran) >= 8, ran  # the story was told


def _run(machine: Machine, step: Step, cwd: str) -> str:
    """The step's output; a step that only looks is asked again, as a person would, until
    it shows what the document says or the deadline passes (the daemon takes a moment)."""
    def once() -> str:
        root = "sudo " in step.command  # no sudo in the machine: root runs it whole
        done = machine.run(["sh", "-c", step.command.replace("sudo ", "")], cwd=cwd,
                           user=None if root else USER, check=False, timeout=300)
        assert done.returncode == 0, (step, done.stdout, done.stderr)
        return done.stdout + done.stderr

    if not step.command.startswith(LOOKS):
        return once()
    outputs = [once()]
    until(lambda: shows(outputs[-1], step.shown) or outputs.append(once()),
          timeout=LOOK_TIMEOUT)
    return outputs[-1]


def _get_busybox(machine: Machine, step: Step, cwd: str, tmp_path: Path) -> str:
    """The script on the host (the machine has no network), in a copy of the folder; its
    file then goes where the script put it, in the machine's checkout."""
    folder = tmp_path / "hello"
    shutil.copytree(REPO / "docs" / "examples" / "hello", folder)
    done = subprocess.run(["sh", "-c", step.command], cwd=folder, capture_output=True,
                          text=True, timeout=600, check=False,
                          env={**os.environ, "DEBIAN_MIRROR": host_debian_mirror()})
    assert done.returncode == 0, (step, done.stdout, done.stderr)
    arch = step.command.split()[-1]
    machine.copy_in(folder / arch, f"{cwd}/{arch}")
    machine.run(["chown", "-R", f"{USER}:{USER}", cwd])
    return done.stdout + done.stderr
