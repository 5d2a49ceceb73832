"""The Debian package: `make deb` builds it, dpkg installs it on this machine, and
`dpkg -r` takes binfmtd's block out of /etc/nix/nix.conf again.

Needs root on Debian or Ubuntu. The package is purged and /etc/nix/nix.conf restored from
a backup at teardown, whatever happened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from binfmtd.config import Config, parse_config
from tests.conftest import DATA, PROC_BINFMT, binfmt_line, require

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
NIX_CONF = Path("/etc/nix/nix.conf")
CONFIG = Path("/etc/binfmtd/config.toml")
UNIT = Path("/lib/systemd/system/binfmtd.service")
ENABLED = Path("/etc/systemd/system/multi-user.target.wants/binfmtd.service")
BINFMTD = "/usr/bin/binfmtd"
AARCH64_INTERPRETER = "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
BEGIN = "# BEGIN binfmtd managed block"
# The installed program with Debian's Python alone: no venv, no BINFMTD_* from the caller,
# and not the checkout's binfmtd/ folder through the working directory.
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, env=SYSTEM_ENV,
                          cwd="/", timeout=timeout, check=False)


def installed(package: str) -> bool:
    shown = run("dpkg-query", "-W", "-f=${db:Status-Status}", package)
    return shown.returncode == 0 and shown.stdout == "installed"


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return str(tomllib.load(file)["project"]["version"])


@pytest.fixture(scope="module")
def deb(debian_package: Path) -> Path:
    """dist/binfmtd_<version>_all.deb, built once per run by `make deb`."""
    return debian_package


@pytest.fixture(scope="module")
def machine(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This machine with the package's runtime dependencies; at teardown the package is
    purged and /etc/nix/nix.conf is exactly as before (bytes, mode, times)."""
    require(not installed("binfmtd"), "binfmtd is already installed here: the test would "
            "purge it (dpkg -P binfmtd first)")
    require(NIX_CONF.parent.is_dir(), f"{NIX_CONF.parent} is missing (apt-get install nix-bin)")
    backup = tmp_path_factory.mktemp("backup") / "nix.conf"
    existed = NIX_CONF.exists()
    if existed:
        shutil.copy2(NIX_CONF, backup)
    try:
        install_dependencies(deb)
        yield backup
    finally:
        purged = run("dpkg", "-P", "binfmtd")
        if existed:
            shutil.copy2(backup, NIX_CONF)
        elif NIX_CONF.exists():
            NIX_CONF.unlink()
        assert purged.returncode == 0, purged.stderr


def install_dependencies(deb: Path) -> None:
    """apt-get what the .deb's Depends name and this machine lacks (first alternative)."""
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout
    missing = []
    for relation in depends.split(","):
        names = [re.split(r"[\s(:]", choice.strip())[0] for choice in relation.split("|")]
        if names[0] and not any(installed(name) for name in names):
            missing.append(names[0])
    if not missing:
        return
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
    env = {**SYSTEM_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*apt, "update"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run([*apt, "install", "-y", "--no-install-recommends", *missing], env=env,
                   check=True, capture_output=True, timeout=600)


@pytest.fixture
def package(deb: Path, machine: Path) -> Path:
    """The package installed with `dpkg -i` (again, if a test removed it)."""
    if not installed("binfmtd"):
        done = run("dpkg", "-i", str(deb), timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return machine


def test_the_deb_holds_the_program_the_unit_the_config_and_the_man_page(deb: Path) -> None:
    listing = run("dpkg-deb", "-c", str(deb))
    assert listing.returncode == 0, listing.stderr
    paths = {line.split()[-1].lstrip(".") for line in listing.stdout.splitlines()}
    assert {
        BINFMTD, str(UNIT), str(CONFIG), "/usr/share/man/man8/binfmtd.8.gz",
        "/usr/lib/python3/dist-packages/binfmtd/cli.py",
        "/usr/lib/python3/dist-packages/binfmtd/inotify.py",
        "/usr/share/doc/binfmtd/copyright",
    } <= paths
    stray = [p for p in paths if re.search(r"/tests/|__pycache__|\.hypothesis|\.pyc$", p)]
    assert not stray
    assert run("dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture").stdout == (
        f"Package: binfmtd\nVersion: {project_version()}\nArchitecture: all\n"
    )
    assert run("dpkg-deb", "-I", str(deb), "conffiles").stdout.split() == [str(CONFIG)]


def test_it_depends_only_on_what_debian_ships(deb: Path) -> None:
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout
    names = {re.split(r"[\s(:]", choice.strip())[0]
             for relation in depends.split(",") for choice in relation.split("|")}
    assert {"python3", "python3-psutil", "python3-structlog"} <= names
    assert not {n for n in names if "inotify" in n or n == "python3-systemd"}
    recommends = run("dpkg-deb", "-f", str(deb), "Recommends").stdout
    assert {"nix-bin", "qemu-user-static", "python3-systemd"} <= {
        name.strip() for name in recommends.split(",")}


def test_lintian_finds_no_errors(deb: Path) -> None:
    require(shutil.which("lintian") is not None, "lintian is not installed")
    checked = run("lintian", "--display-info", str(deb), timeout=600)
    errors = [line for line in checked.stdout.splitlines() if line.startswith("E: ")]
    assert not errors, checked.stdout
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_installed_command_runs_with_debians_python(package: Path) -> None:
    version = run(BINFMTD, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"binfmtd {project_version()}"
    assert Path(BINFMTD).read_text().startswith("#!/usr/bin/python3")
    where = run("/usr/bin/python3", "-c", "import binfmtd; print(binfmtd.__file__)")
    assert where.stdout.strip() == "/usr/lib/python3/dist-packages/binfmtd/__init__.py"


def test_status_json_reads_a_debian_binfmt_misc_tree(package: Path, tmp_path: Path) -> None:
    binfmt_misc = tmp_path / "binfmt_misc"
    shutil.copytree(DATA / "binfmt_misc" / "debian", binfmt_misc)
    nix_conf = tmp_path / "nix.conf"
    nix_conf.write_text("sandbox = true\n")

    shown = run(BINFMTD, "--binfmt-misc", str(binfmt_misc), "--nix-conf", str(nix_conf),
                "status", "--json")
    assert shown.returncode == 1, shown.stderr  # out of sync: nothing declared yet
    report = json.loads(shown.stdout)
    assert report["nix_conf"] == str(nix_conf)
    assert report["in_sync"] is False
    platforms = {handler["platform"] for handler in report["handlers"]}
    assert {"aarch64-linux", "riscv64-linux", "s390x-linux"} <= platforms
    assert nix_conf.read_text() == "sandbox = true\n"


def test_the_unit_is_installed_and_enabled(package: Path) -> None:
    assert UNIT.is_file()
    assert "ExecStart=/usr/bin/binfmtd run" in UNIT.read_text()
    # dh_installsystemd's postinst enables it, with or without a running systemd.
    assert ENABLED.is_symlink()
    assert os.readlink(ENABLED) == str(UNIT)


def test_the_default_config_is_a_conffile_that_shows_every_default(package: Path,
                                                                    tmp_path: Path) -> None:
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "binfmtd").stdout
    assert str(CONFIG) in conffiles
    checked = run(BINFMTD, "--config", str(CONFIG), "status")
    assert checked.returncode != 2, checked.stderr

    text = CONFIG.read_text()
    assert tomllib.loads(text) == {}  # every key commented out
    uncommented = "\n".join(line[1:] for line in text.splitlines()
                            if re.match(r"#[a-z0-9-]+ = ", line))
    shown = tomllib.loads(uncommented)
    keys = {field.name.replace("_", "-") for field in dataclasses.fields(Config)}
    assert set(shown) == keys
    assert parse_config(shown, str(CONFIG)) == Config()  # the defaults, truly

    edited = tmp_path / "config.toml"
    edited.write_text(uncommented)
    assert run(BINFMTD, "--config", str(edited), "status").returncode != 2


def test_the_man_page_is_installed(package: Path) -> None:
    page = Path("/usr/share/man/man8/binfmtd.8.gz")
    if shutil.which("man"):
        found = run("man", "-w", "binfmtd")
        assert found.returncode == 0, found.stderr
        assert found.stdout.strip() == str(page)
    assert page.is_file()


def test_dpkg_r_takes_the_block_out_of_nix_conf(
    deb: Path, package: Path, real_binfmt: Callable[[str], str]
) -> None:
    require(Path(AARCH64_INTERPRETER).exists(), "qemu-user-static is not installed")
    require(shutil.which("nix") is not None, "Nix is not installed (apt-get install nix-bin)")
    backup = package  # /etc/nix/nix.conf before the package came
    require(backup.exists(), f"{NIX_CONF} did not exist before the test")
    before = backup.read_bytes()
    real_binfmt(binfmt_line("binfmtd-test-deb", AARCH64_INTERPRETER, flags="OP"))
    assert (PROC_BINFMT / "binfmtd-test-deb").exists()

    synced = run(BINFMTD, "sync", "--no-restart")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    synced_text = NIX_CONF.read_bytes()
    assert BEGIN.encode() in synced_text
    assert b"aarch64-linux" in synced_text
    assert f"{AARCH64_INTERPRETER}?".encode() in synced_text

    # An upgrade (here: the same version again) keeps the block.
    upgraded = run("dpkg", "-i", str(deb), timeout=300)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert NIX_CONF.read_bytes() == synced_text

    removed = run("dpkg", "-r", "binfmtd", timeout=300)
    said = removed.stdout + removed.stderr
    assert removed.returncode == 0, said
    assert "could not take" not in said
    assert f"{NIX_CONF}: binfmtd block removed" in said
    assert "not empty" not in said  # no .pyc written behind dpkg's back
    assert NIX_CONF.read_bytes() == before
    # Removed, not purged: the conffile stays, the program and the unit go.
    assert not Path(BINFMTD).exists()
    assert not UNIT.exists()
    assert CONFIG.exists()
    leftovers = list(Path("/usr/lib/python3/dist-packages").glob("binfmtd*"))
    assert not leftovers


def test_dpkg_r_goes_on_when_the_block_cannot_be_removed(package: Path) -> None:
    backup = package
    require(backup.exists(), f"{NIX_CONF} did not exist before the test")
    damaged = backup.read_bytes() + f"\n{BEGIN}: edits inside are overwritten\n".encode()
    NIX_CONF.write_bytes(damaged)  # BEGIN without END: binfmtd refuses to guess
    try:
        removed = run("dpkg", "-r", "binfmtd", timeout=300)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert "binfmtd: could not take binfmtd's block out" in removed.stderr
        assert NIX_CONF.read_bytes() == damaged
        assert not Path(BINFMTD).exists()
    finally:
        shutil.copy2(backup, NIX_CONF)
