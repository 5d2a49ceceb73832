"""The Debian package: `make deb` builds it, dpkg installs it in a Debian 12 tree, and
`dpkg -r` takes binfmtd's block out of the tree's /etc/nix/nix.conf again.

The tree is the cached one of tests/system, writable through an overlay that only a private
namespace sees (conftest.py's debian_tree): dpkg, the maintainer scripts and binfmtd run
chrooted there, with a binfmt_misc of the namespace's own. Nothing is installed on this
host, so its binfmtd.service cannot start and rewrite the host's /etc/nix/nix.conf, and
conftest.py checks after every test that the host's /etc/nix and binfmt_misc are as before.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from binfmtd.config import Config, parse_config
from tests.packaging.tree import DebianTree
from tests.support.kernel import binfmt_line
from tests.support.parts import DATA, project_version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib

NIX_CONF = "/etc/nix/nix.conf"
CONFIG = "/etc/binfmtd/config.toml"
UNIT = "/lib/systemd/system/binfmtd.service"
ENABLED = "/etc/systemd/system/multi-user.target.wants/binfmtd.service"
MAN_PAGE = "/usr/share/man/man8/binfmtd.8.gz"
BINFMTD = "/usr/bin/binfmtd"
DEB = "/tmp/binfmtd.deb"  # in the tree
AARCH64_INTERPRETER = "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
BEGIN = "# BEGIN binfmtd managed block"
# The environment of dpkg-deb on the host: Debian's tools, not the venv's.
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A read-only look at the .deb file on the host (dpkg-deb, lintian)."""
    return subprocess.run(list(argv), capture_output=True, text=True, env=SYSTEM_ENV,
                          cwd="/", timeout=timeout, check=False)


def installed(tree: DebianTree) -> bool:
    shown = tree.run("dpkg-query", "-W", "-f=${db:Status-Status}", "binfmtd")
    return shown.returncode == 0 and shown.stdout == "installed"


@pytest.fixture(scope="module")
def deb(debian_package: Path) -> Path:
    """dist/binfmtd_<version>_all.deb, built once per run by `make deb`."""
    return debian_package


@pytest.fixture
def package(deb: Path, debian_tree: DebianTree) -> DebianTree:
    """A fresh Debian tree with the package installed by `dpkg -i` (its Depends are in
    the tree: tests/support/debian.py)."""
    assert not installed(debian_tree)
    debian_tree.copy_in(deb, DEB)
    done = debian_tree.run("dpkg", "-i", DEB)
    assert done.returncode == 0, done.stdout + done.stderr
    return debian_tree


def test_the_deb_holds_the_program_the_unit_the_config_and_the_man_page(deb: Path) -> None:
    listing = run("dpkg-deb", "-c", str(deb))
    assert listing.returncode == 0, listing.stderr
    paths = {line.split()[-1].lstrip(".") for line in listing.stdout.splitlines()}
    assert {
        BINFMTD, UNIT, CONFIG, MAN_PAGE,
        "/usr/lib/python3/dist-packages/binfmtd/cli.py",
        "/usr/lib/python3/dist-packages/binfmtd/daemon/inotify.py",
        "/usr/share/doc/binfmtd/copyright",
    } <= paths
    stray = [p for p in paths if re.search(
        r"/tests/|__pycache__|\.hypothesis|\.pyc$|dist-packages/(?!binfmtd|$)", p)]
    assert not stray
    assert run("dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture").stdout == (
        f"Package: binfmtd\nVersion: {project_version()}\nArchitecture: all\n"
    )
    assert run("dpkg-deb", "-I", str(deb), "conffiles").stdout.split() == [CONFIG]


def test_it_depends_only_on_what_debian_ships(deb: Path) -> None:
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout
    names = {re.split(r"[\s(:]", choice.strip())[0]
             for relation in depends.split(",") for choice in relation.split("|")}
    assert {"python3", "python3-structlog"} <= names
    assert "python3-psutil" not in names  # binfmtd reads /proc itself
    assert not {n for n in names if "inotify" in n or n == "python3-systemd"}
    recommends = run("dpkg-deb", "-f", str(deb), "Recommends").stdout
    assert {"nix-bin", "qemu-user-static", "python3-systemd"} <= {
        name.strip() for name in recommends.split(",")}


def test_lintian_finds_no_errors(deb: Path) -> None:
    # packaging/debian/build.sh (make deb) installs lintian and runs it too.
    checked = run("lintian", "--display-info", str(deb), timeout=600)
    errors = [line for line in checked.stdout.splitlines() if line.startswith("E: ")]
    assert not errors, checked.stdout
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_installed_command_runs_with_debians_python(package: DebianTree) -> None:
    version = package.run(BINFMTD, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"binfmtd {project_version()}"
    assert package.read_text(BINFMTD).startswith("#!/usr/bin/python3")
    where = package.run("/usr/bin/python3", "-c", "import binfmtd; print(binfmtd.__file__)")
    assert where.stdout.strip() == "/usr/lib/python3/dist-packages/binfmtd/__init__.py"


def test_status_json_reads_a_debian_binfmt_misc_tree(package: DebianTree) -> None:
    package.copy_in(DATA / "binfmt_misc" / "debian", "/tmp/binfmt_misc")
    package.write_bytes("/tmp/nix.conf", b"sandbox = true\n")

    shown = package.run(BINFMTD, "--binfmt-misc", "/tmp/binfmt_misc", "--nix-conf",
                        "/tmp/nix.conf", "status", "--json")
    assert shown.returncode == 1, shown.stderr  # out of sync: nothing declared yet
    report = json.loads(shown.stdout)
    assert report["nix_conf"] == "/tmp/nix.conf"
    assert report["in_sync"] is False
    platforms = {handler["platform"] for handler in report["handlers"]}
    assert {"aarch64-linux", "riscv64-linux", "s390x-linux"} <= platforms
    assert package.read_bytes("/tmp/nix.conf") == b"sandbox = true\n"


def test_the_unit_is_installed_and_enabled(package: DebianTree) -> None:
    assert "ExecStart=/usr/bin/binfmtd run" in package.read_text(UNIT)
    # dh_installsystemd's postinst enables it, with or without a running systemd.
    assert package.run("readlink", ENABLED).stdout.strip() == UNIT


def test_the_default_config_is_a_conffile_that_shows_every_default(package: DebianTree) -> None:
    conffiles = package.run("dpkg-query", "-W", "-f=${Conffiles}", "binfmtd").stdout
    assert CONFIG in conffiles
    checked = package.run(BINFMTD, "--config", CONFIG, "status")
    assert checked.returncode != 2, checked.stderr

    text = package.read_text(CONFIG)
    assert tomllib.loads(text) == {}  # every key commented out
    uncommented = "\n".join(line[1:] for line in text.splitlines()
                            if re.match(r"#[a-z0-9-]+ = ", line))
    shown = tomllib.loads(uncommented)
    keys = {name.replace("_", "-") for name in Config._fields}
    assert set(shown) == keys
    assert parse_config(shown, CONFIG) == Config()  # the defaults, truly

    package.write_bytes("/tmp/config.toml", uncommented.encode())
    assert package.run(BINFMTD, "--config", "/tmp/config.toml", "status").returncode != 2


def test_the_man_page_is_installed(package: DebianTree) -> None:
    found = package.run("man", "-w", "binfmtd")  # man-db is in the tree (BOOKWORM)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == MAN_PAGE


def test_dpkg_r_takes_the_block_out_of_nix_conf(package: DebianTree) -> None:
    before = package.read_bytes(NIX_CONF)  # nix-bin's, in the tree
    assert BEGIN.encode() not in before
    # Without F, so the tree's emulator path must go into the sandbox paths. The
    # namespace's binfmt_misc has this entry alone.
    package.namespace.register(binfmt_line("binfmtd-test-deb", AARCH64_INTERPRETER, flags="OP"))

    synced = package.run(BINFMTD, "sync", "--no-restart")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    synced_text = package.read_bytes(NIX_CONF)
    assert synced_text.startswith(before) and BEGIN.encode() in synced_text
    assert b"aarch64-linux" in synced_text
    assert f"{AARCH64_INTERPRETER}?".encode() in synced_text

    # An upgrade (here: the same version again) keeps the block.
    upgraded = package.run("dpkg", "-i", DEB)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert package.read_bytes(NIX_CONF) == synced_text

    removed = package.run("dpkg", "-r", "binfmtd")
    said = removed.stdout + removed.stderr
    assert removed.returncode == 0, said
    assert "could not take" not in said
    assert f"{NIX_CONF}: binfmtd block removed" in said
    assert "not empty" not in said  # no .pyc written behind dpkg's back
    assert package.read_bytes(NIX_CONF) == before
    # Removed, not purged: the conffile stays, the program and the unit go.
    assert not package.exists(BINFMTD)
    assert not package.exists(UNIT)
    assert package.exists(CONFIG)
    leftovers = package.run("sh", "-c", "ls -d /usr/lib/python3/dist-packages/binfmtd*")
    assert leftovers.returncode != 0 and leftovers.stdout == "", leftovers.stdout


def test_dpkg_r_goes_on_when_the_block_cannot_be_removed(package: DebianTree) -> None:
    before = package.read_bytes(NIX_CONF)
    damaged = before + f"\n{BEGIN}: edits inside are overwritten\n".encode()
    package.write_bytes(NIX_CONF, damaged)  # BEGIN without END: binfmtd refuses to guess
    removed = package.run("dpkg", "-r", "binfmtd")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "binfmtd: could not take binfmtd's block out" in removed.stderr
    assert package.read_bytes(NIX_CONF) == damaged
    assert not package.exists(BINFMTD)
