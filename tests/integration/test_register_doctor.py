"""`binfmtd register`, `unregister` and `doctor` on the real kernel's binfmt_misc.

binfmtd runs inside a private namespace (tests/support/kernel.py), as it would on a
machine: doctor runs each generated program there, under the handler it registered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.kernel import PrivateBinfmt, binfmt_line
from tests.support.parts import require

PREFIX = "binfmtd-test-reg-"
DOCTOR_SYSTEMS = ["aarch64-linux", "armv7l-linux", "riscv64-linux", "powerpc64le-linux",
                  "s390x-linux"]


class Setup:
    def __init__(self, root: Path, binfmt: PrivateBinfmt) -> None:
        self.root = root
        self.binfmt = binfmt
        self.binfmt_d = root / "binfmt.d"
        self.binfmt_d.mkdir()
        self.nix_conf = root / "nix.conf"
        self.nix_conf.write_text("sandbox = true\n")
        self.config = root / "config.toml"
        self.config.write_text(f'registration-prefix = "{PREFIX}"\nrestart = false\n')

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """binfmtd inside the namespace, at the usual /proc/sys/fs/binfmt_misc."""
        env = {**os.environ, "BINFMTD_NIX_CONF": str(self.nix_conf),
               "BINFMTD_CONFIG": str(self.config), "BINFMTD_BINFMT_D": str(self.binfmt_d)}
        env.pop("BINFMTD_BINFMT_MISC", None)
        return self.binfmt.run([sys.executable, "-m", "binfmtd", *args], env=env)


@pytest.fixture
def setup(tmp_path: Path, real_binfmt: PrivateBinfmt) -> Setup:
    require(Path("/usr/libexec/qemu-binfmt").is_dir(), "qemu-user-static is not installed")
    return Setup(tmp_path, real_binfmt)


def test_register_doctor_unregister_leaves_the_machine_as_it_was(setup: Setup) -> None:
    assert setup.binfmt.entries() == []  # a private instance starts empty
    registered = setup.run("register", *DOCTOR_SYSTEMS)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    for system in DOCTOR_SYSTEMS:
        entry = (setup.binfmt.binfmt_misc / f"{PREFIX}{system}").read_text()
        assert entry.startswith("enabled\n") and "flags: POF" in entry
        line = (setup.binfmt_d / f"{PREFIX}{system}.conf").read_text()
        assert f":{PREFIX}{system}:M::" in line
    assert "extra-extra-platforms = " in setup.nix_conf.read_text()

    doctor = setup.run("doctor", "--json")
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 0, doctor.stdout
    checked = {p["system"]: p for p in report["platforms"]}
    for system in DOCTOR_SYSTEMS:
        checks = {c["name"]: c["ok"] for c in checked[system]["checks"]}
        assert checks == {"handler": True, "runs": True, "sandbox": True, "nix.conf": True,
                          "nix-daemon": True}, (system, checked[system])

    again = setup.run("register", "aarch64-linux")
    assert "already emulated by" in again.stdout

    removed = setup.run("unregister", *DOCTOR_SYSTEMS)
    assert removed.returncode == 0, removed.stderr
    assert setup.binfmt.entries() == []
    assert list(setup.binfmt_d.iterdir()) == []
    assert setup.nix_conf.read_text() == "sandbox = true\n"


def test_doctor_finds_a_missing_sandbox_path_and_sync_mends_it(
    setup: Setup, real_binfmt: PrivateBinfmt
) -> None:
    real_binfmt.register(binfmt_line("binfmtd-test-nof",
                                     "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", flags="OP"))
    setup.nix_conf.write_text("sandbox = true\nextra-extra-platforms = aarch64-linux\n")
    sick = setup.run("doctor")
    assert sick.returncode == 1
    assert "[FAIL] sandbox" in sick.stdout and "No such file or directory" in sick.stdout
    assert "[ok]   runs" in sick.stdout
    assert setup.run("sync").returncode == 0
    healed = setup.run("doctor")
    assert healed.returncode == 0, healed.stdout


def test_a_system_binfmtd_has_no_registration_for_is_an_error(setup: Setup) -> None:
    unknown = setup.run("register", "s390-linux")  # Nix names it; qemu has no s390 line
    assert unknown.returncode == 2 and "cannot register it" in unknown.stderr


def test_someone_elses_broken_handler_is_not_shadowed_unless_config_says_so(
    setup: Setup, real_binfmt: PrivateBinfmt
) -> None:
    real_binfmt.register(binfmt_line("binfmtd-test-broken", "/nonexistent/qemu-aarch64", flags="P"))
    refused = setup.run("register", "aarch64-linux")
    assert refused.returncode == 1
    assert "binfmtd-test-broken handles it but does not work" in refused.stdout
    assert f"{PREFIX}aarch64-linux" not in setup.binfmt.entries()
    setup.config.write_text(setup.config.read_text() + "replace-handlers = true\n")
    assert setup.run("register", "aarch64-linux").returncode == 0
    assert f"{PREFIX}aarch64-linux" in setup.binfmt.entries()


def test_emulated_systems_in_config_are_registered_by_sync(setup: Setup) -> None:
    setup.config.write_text(setup.config.read_text() + 'emulated-systems = ["riscv64-linux"]\n')
    assert setup.run("sync", "--check").returncode == 1
    synced = setup.run("sync")
    assert synced.returncode == 0, synced.stderr
    assert f"{PREFIX}riscv64-linux" in setup.binfmt.entries()
    assert "riscv64-linux" in setup.nix_conf.read_text()
    assert setup.run("sync", "--check").returncode == 0


def test_removing_an_entry_that_another_remover_takes_first_is_no_error(
    real_binfmt: PrivateBinfmt,
) -> None:
    """Eight removers at once, as unregister can meet systemd-binfmt's flush: whoever
    writes -1 first removes it, and the others find it gone, none with an error."""
    from binfmtd.emulation.registration import remove_entry

    line = binfmt_line("binfmtd-test-race", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "P")
    start = threading.Barrier(8)

    def remove(results: list[object]) -> None:
        start.wait()
        try:
            results.append(remove_entry(real_binfmt.binfmt_misc, "binfmtd-test-race"))
        except Exception as error:  # the finding is any error at all
            results.append(error)

    for _ in range(30):
        real_binfmt.register(line)
        results: list[object] = []
        removers = [threading.Thread(target=remove, args=(results,)) for _ in range(8)]
        for thread in removers:
            thread.start()
        for thread in removers:
            thread.join(timeout=30)
        # Two that opened it before either wrote may both see their write taken.
        assert set(results) <= {True, False} and True in results, results
        assert real_binfmt.entries() == []


X86_64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00"
X86_64_MASK = r"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


@pytest.mark.parametrize("system", ["x86_64-linux", "i686-linux"])
def test_register_refuses_a_system_the_host_runs_natively(setup: Setup, system: str) -> None:
    require(os.uname().machine == "x86_64", "this host's own systems are x86_64's")
    refused = setup.run("register", "aarch64-linux", system)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.count("\n") == 1 and "natively" in refused.stderr, refused.stderr
    assert setup.binfmt.entries() == [] and list(setup.binfmt_d.iterdir()) == []
    control = setup.run("register", "aarch64-linux")
    assert control.returncode == 0 and setup.binfmt.entries() == [f"{PREFIX}aarch64-linux"]


def test_a_fleets_list_registers_the_others_and_leaves_the_hosts_own_alone(
    setup: Setup,
) -> None:
    """One emulated-systems list for x86_64 and aarch64 builders alike (as Ansible users
    write it): each machine registers what it does not run itself."""
    require(os.uname().machine == "x86_64", "this host's own systems are x86_64's")
    setup.config.write_text(setup.config.read_text()
                            + 'emulated-systems = ["aarch64-linux", "x86_64-linux"]\n')
    synced = setup.run("sync")
    assert synced.returncode == 0, synced.stderr
    assert setup.binfmt.entries() == [f"{PREFIX}aarch64-linux"]
    assert setup.run("sync", "--check").returncode == 0
    registered = setup.run("register")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "x86_64-linux: x86_64-linux is this host's own system" in registered.stdout
    assert setup.binfmt.entries() == [f"{PREFIX}aarch64-linux"]
    assert setup.binfmt.run(["true"]).returncode == 0  # programs still run in there


def test_a_handler_for_the_hosts_own_programs_is_named_by_status_and_doctor(
    setup: Setup, real_binfmt: PrivateBinfmt
) -> None:
    """Registered by someone else, it takes every program in the namespace: binfmtd, run
    from outside on the namespace's binfmt_misc, names it as what it is."""
    require(os.uname().machine == "x86_64", "the handler below matches x86_64 programs")
    require(Path("/usr/bin/qemu-x86_64-static").exists(), "qemu-x86_64-static is missing")
    real_binfmt.register(f":qemu-x86_64:M::{X86_64_MAGIC}:{X86_64_MASK}:"
                         "/usr/bin/qemu-x86_64-static:F")
    bricked = real_binfmt.run(["/bin/true"])
    assert bricked.returncode != 0 and "Too many levels of symbolic links" in bricked.stderr
    outside = {**os.environ, "BINFMTD_BINFMT_MISC": str(real_binfmt.binfmt_misc),
               "BINFMTD_NIX_CONF": str(setup.nix_conf), "BINFMTD_CONFIG": str(setup.config)}
    status = subprocess.run([sys.executable, "-m", "binfmtd", "status"], env=outside,
                            capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 1
    assert "problem: qemu-x86_64: matches this host's own programs" in status.stdout
    doctor = subprocess.run([sys.executable, "-m", "binfmtd", "doctor"], env=outside,
                            capture_output=True, text=True, timeout=60, check=False)
    assert doctor.returncode == 1, doctor.stdout
    assert "[FAIL] host       qemu-x86_64 matches this host's own programs" in doctor.stdout


def test_a_typo_in_a_system_names_the_closest(setup: Setup) -> None:
    typo = setup.run("register", "aarch64")
    assert typo.returncode == 2
    assert typo.stderr == ("binfmtd: 'aarch64' is not a system binfmtd knows "
                           "(did you mean aarch64-linux?)\n")
    assert setup.binfmt.entries() == []


@pytest.mark.parametrize("loosen", ["file writable by all", "folder writable by all",
                                    "file of another user"])
def test_an_interpreter_others_may_change_never_reaches_the_sandbox(
    setup: Setup, real_binfmt: PrivateBinfmt, loosen: str
) -> None:
    """A handler without F: its interpreter goes into every aarch64 build's sandbox, so
    binfmtd declares it only while root alone can change it and the folders above it."""
    folder = setup.root / "emu"
    folder.mkdir()
    qemu = folder / "qemu-aarch64"
    shutil.copy("/usr/bin/qemu-aarch64-static", qemu)
    real_binfmt.register(binfmt_line("binfmtd-test-loose", str(qemu), flags="P"))
    assert setup.run("sync").returncode == 0  # the control: root's alone, so declared
    assert f"extra-sandbox-paths = {qemu}?" in setup.nix_conf.read_text()
    {"file writable by all": lambda: qemu.chmod(0o777),
     "folder writable by all": lambda: folder.chmod(0o777),
     "file of another user": lambda: os.chown(qemu, 65534, 0)}[loosen]()
    status = setup.run("status")
    assert status.returncode == 1
    assert f"problem: binfmtd-test-loose: sandbox path {qemu} is not root's alone: " \
           in status.stdout, status.stdout
    assert setup.run("sync").returncode == 0
    assert str(qemu) not in setup.nix_conf.read_text()
    assert "aarch64-linux" not in setup.nix_conf.read_text()
    doctor = setup.run("doctor")
    assert doctor.returncode == 1
    assert f"aarch64-linux\n  [FAIL] handler    binfmtd-test-loose: sandbox path {qemu} " \
           in doctor.stdout, doctor.stdout


DEBIAN_AARCH64 = binfmt_line("qemu-aarch64", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P")


def test_unregister_leaves_an_entry_it_did_not_make(setup: Setup,
                                                    real_binfmt: PrivateBinfmt) -> None:
    """Debian's qemu-aarch64 serves aarch64-linux too: `unregister aarch64-linux` takes
    binfmtd's own entry and file, and nothing of Debian's."""
    real_binfmt.register(DEBIAN_AARCH64)
    setup.config.write_text(setup.config.read_text() + "replace-handlers = true\n")
    real_binfmt.register(binfmt_line(f"{PREFIX}aarch64-linux",
                                     "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"))
    (setup.binfmt_d / f"{PREFIX}aarch64-linux.conf").write_text("# binfmtd's own\n")
    removed = setup.run("unregister", "aarch64-linux")
    assert removed.returncode == 0, removed.stderr
    assert f"removed {PREFIX}aarch64-linux" in removed.stdout
    assert setup.binfmt.entries() == ["qemu-aarch64"]
    assert list(setup.binfmt_d.iterdir()) == []
    assert "aarch64-linux" in setup.nix_conf.read_text()  # Debian's still serves it


def test_register_in_front_of_a_broken_entry_leaves_that_entry(
    setup: Setup, real_binfmt: PrivateBinfmt
) -> None:
    """replace-handlers = true lets binfmtd register its own in front of a broken
    foreign entry (binfmt_misc tries the newest first); the foreign one stays for its
    owner to remove."""
    real_binfmt.register(binfmt_line("qemu-aarch64", "/nonexistent/qemu-aarch64", flags="P"))
    setup.config.write_text(setup.config.read_text() + "replace-handlers = true\n")
    registered = setup.run("register", "aarch64-linux")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert setup.binfmt.entries() == [f"{PREFIX}aarch64-linux", "qemu-aarch64"]
    assert (setup.binfmt.binfmt_misc / "qemu-aarch64").read_text().startswith("enabled\n")
