"""The Debian package: `make deb` builds it, dpkg installs it in a Debian 12 tree, and
`dpkg -r` takes binfmtd's block out of the tree's /etc/nix/nix.conf again.

The tree is the cached one of tests/system, writable through an overlay that only a private
namespace sees (conftest.py's debian_tree): dpkg, the maintainer scripts and binfmtd run
chrooted there, with a binfmt_misc of the namespace's own. Nothing is installed on this
host, so its binfmtd.service cannot start and rewrite the host's /etc/nix/nix.conf, and
conftest.py checks after every test that the host's /etc/nix and binfmt_misc are as before.
What needs a running systemd (the unit enabled and started by the maintainer scripts, the
autopkgtest, purge) runs in the same tree booted (conftest.py's booted_package).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from binfmtd.config import Config, parse_config
from tests.packaging.tree import DebianTree, deb822, relations
from tests.support.containers import Machine
from tests.support.debian import BOOKWORM, busybox, required_tree
from tests.support.kernel import BINFMT_MISC, S390X_MAGIC, S390X_MASK, binfmt_line
from tests.support.parts import DATA, REPO, project_version, require

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
DEBIAN = REPO / "packaging" / "debian"  # the package's debian/ folder
# Where Debian's shells look for completions (packaging/debian/rules writes them there).
COMPLETIONS = {
    "bash": "/usr/share/bash-completion/completions/binfmtd",
    "zsh": "/usr/share/zsh/vendor-completions/_binfmtd",
    "fish": "/usr/share/fish/vendor_completions.d/binfmtd.fish",
}


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A read-only look at the .deb file on the host (dpkg-deb, lintian)."""
    return subprocess.run(list(argv), capture_output=True, text=True, env=SYSTEM_ENV,
                          cwd="/", timeout=timeout, check=False)


def deb_paths(deb: Path) -> set[str]:
    """Every path the .deb holds, as `dpkg-deb -c` lists it."""
    listing = run("dpkg-deb", "-c", str(deb))
    assert listing.returncode == 0, listing.stderr
    return {line.split()[-1].lstrip(".") for line in listing.stdout.splitlines()}


def binary_stanza() -> dict[str, str]:
    """debian/control's stanza for the binfmtd package."""
    found = [s for s in deb822((DEBIAN / "control").read_text()) if s.get("Package") == "binfmtd"]
    assert len(found) == 1, found
    return found[0]


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
    paths = deb_paths(deb)
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


def test_it_depends_and_recommends_as_its_control_file_says(deb: Path) -> None:
    """What debian/control names, and what Debian ships: dpkg -i in a tree debootstrapped
    from Debian alone (every test with the `package` fixture) installs it."""
    control = binary_stanza()
    depends = relations(run("dpkg-deb", "-f", str(deb), "Depends").stdout)
    # python3-systemd: the service's sd_notify and native journal fields.
    assert {"python3", "python3-structlog", "python3-systemd"} <= depends
    assert relations(control["Depends"]) <= depends
    assert "python3-psutil" not in depends  # binfmtd reads /proc itself
    assert not {n for n in depends if "inotify" in n}  # binfmtd carries its own
    recommends = relations(run("dpkg-deb", "-f", str(deb), "Recommends").stdout)
    assert recommends == relations(control["Recommends"]) == {"nix-bin", "qemu-user-static"}
    assert run("dpkg-deb", "-f", str(deb), "Suggests").stdout.strip() == ""
    assert "Suggests" not in control


def test_the_completions_are_where_debians_shells_look(deb: Path, tmp_path: Path) -> None:
    """Each shell's file is in the .deb, written from the parser, in a folder that shell
    searches on Debian: zsh's own fpath and fish's own $fish_complete_path say so; for bash
    (bash-completion is not installed here) the folder Debian's systemd puts systemctl's
    in, as it does its zsh one (the cached Debian 12 tree's dpkg record)."""
    assert set(COMPLETIONS.values()) <= deb_paths(deb)
    payload = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             env=SYSTEM_ENV, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        for shell, path in COMPLETIONS.items():
            shipped = tar.extractfile(f".{path}")
            assert shipped is not None, path
            written = subprocess.run([sys.executable, "-m", "binfmtd.completions", shell],
                                     capture_output=True, check=True, cwd=REPO).stdout
            assert shipped.read() == written, shell

    systemd = (required_tree(BOOKWORM) / "var/lib/dpkg/info/systemd.list").read_text().split()
    assert f"{Path(COMPLETIONS['bash']).parent}/systemctl" in systemd
    assert f"{Path(COMPLETIONS['zsh']).parent}/_systemctl" in systemd
    for shell in ("zsh", "fish"):
        require(shutil.which(shell) is not None, f"no {shell} here (apt-get install {shell})")
    env = {**SYSTEM_ENV, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data")}
    fpath = subprocess.run(["zsh", "-f", "-c", "print -l $fpath"], capture_output=True,
                           text=True, env=env, check=True).stdout.split()
    assert str(Path(COMPLETIONS["zsh"]).parent) in fpath
    fish = subprocess.run(["fish", "-c", "string join \\n -- $fish_complete_path"],
                          capture_output=True, text=True, env=env, check=True).stdout.split()
    assert str(Path(COMPLETIONS["fish"]).parent) in fish


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


# --- in a booted Debian 12: the maintainer scripts with systemd running ----------------


def test_the_maintainer_scripts_enable_and_start_the_unit_where_debian_keeps_units(
        deb: Path, booted_package: Machine) -> None:
    """dh_installsystemd's postinst, as dpkg -i runs it (booted_package): enabled, started,
    from the one unit the .deb holds, in the folder this release's debhelper gives units:
    where Debian's own nix-setup-systemd has nix-daemon.service."""
    assert [p for p in deb_paths(deb) if p.endswith(".service")] == [UNIT]
    nix_setup = booted_package.run(["dpkg", "-L", "nix-setup-systemd"]).stdout.split()
    assert f"{Path(UNIT).parent}/nix-daemon.service" in nix_setup
    fragment = booted_package.run(["systemctl", "show", "-P", "FragmentPath", "binfmtd"])
    assert fragment.stdout.strip() == UNIT
    enabled = booted_package.run(["systemctl", "is-enabled", "binfmtd"], check=False)
    assert enabled.stdout.strip() == "enabled", enabled.stdout + enabled.stderr
    # deb-systemd-invoke start returns once a Type=notify service said READY=1.
    active = booted_package.run(["systemctl", "is-active", "binfmtd"], check=False)
    assert active.stdout.strip() == "active", active.stdout + active.stderr


AUTOPKGTEST = "/tmp/autopkgtest"  # in the container: autopkgtest's scratch folder


def test_the_autopkgtest_story_passes_as_autopkgtest_runs_it(booted_package: Machine) -> None:
    """debian/tests/story on the installed package, run as autopkgtest's null runner runs
    a test (cwd the source tree, AUTOPKGTEST_TMP and _ARTIFACTS set, as root, stderr
    allowed), with an arm64 busybox given as `autopkgtest --env` would, so its build step
    runs too. debian/tests/control's Depends are installed and its Restrictions are the ones
    this run honours: root; a binfmt_misc of the container's own and a throwaway overlay
    for isolation-machine and breaks-testbed; stderr not judged."""
    (control,) = deb822((DEBIAN / "tests" / "control").read_text())
    assert control["Tests"] == "story"
    assert set(control["Restrictions"].split(", ")) == {
        "needs-root", "isolation-machine", "breaks-testbed", "allow-stderr"}
    for package in sorted(relations(control["Depends"].replace("@", "binfmtd"))):
        shown = booted_package.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package])
        assert shown.stdout == "installed", package

    tree, scratch = f"{AUTOPKGTEST}/tree", f"{AUTOPKGTEST}/scratch"
    booted_package.copy_in(DEBIAN, f"{tree}/debian")
    booted_package.copy_in(busybox("arm64"), "/opt/busybox-arm64")
    booted_package.run(["mkdir", "-p", "-m", "755", f"{scratch}/autopkgtest_tmp",
                        f"{scratch}/story-artifacts"])
    # An offline testbed: no binary cache for nix-build to ask (it would retry DNS).
    nix_conf = booted_package.read_text(NIX_CONF)
    booted_package.write_text(NIX_CONF, nix_conf + "substituters =\n")
    env = {"AUTOPKGTEST_TMP": f"{scratch}/autopkgtest_tmp",
           "ADTTMP": f"{scratch}/autopkgtest_tmp",
           "AUTOPKGTEST_ARTIFACTS": f"{scratch}/story-artifacts",
           "ADT_ARTIFACTS": f"{scratch}/story-artifacts",
           "DEBIAN_FRONTEND": "noninteractive",
           "BINFMTD_BUSYBOX_ARM64": "/opt/busybox-arm64"}
    story = booted_package.run(["debian/tests/story"], cwd=tree, env=env, check=False,
                               timeout=300)
    said = story.stdout + story.stderr
    assert story.returncode == 0, said
    assert "story: a user's sandboxed aarch64-linux build through nix-daemon" in said
    assert story.stdout.rstrip().endswith("story: all good"), said


FOREIGN_CONF = "/etc/binfmt.d/qemu-s390x.conf"  # the administrator's, not binfmtd's
FOREIGN_LINE = binfmt_line("qemu-s390x", "/usr/libexec/qemu-binfmt/s390x-binfmt-P", "POF",
                           S390X_MAGIC, S390X_MASK)


def binfmt_d(machine: Machine) -> list[str]:
    return sorted(machine.run(["ls", "-A", "/etc/binfmt.d"]).stdout.split())


def test_purge_takes_back_what_register_made_and_nothing_else(booted_package: Machine) -> None:
    """`binfmtd register` makes an entry and an /etc/binfmt.d file per system; `dpkg -P`
    removes both, in the container's own binfmt_misc. The same purge leaves the
    administrator's binfmt.d file and entry as they were (the control: there is something
    it could have taken)."""
    machine = booted_package
    registered = machine.run(["binfmtd", "register", "aarch64-linux", "riscv64-linux"])
    ours = ["binfmtd-aarch64-linux", "binfmtd-riscv64-linux"]
    machine.write_text(FOREIGN_CONF, f"{FOREIGN_LINE}\n")
    machine.register(FOREIGN_LINE)
    foreign = machine.read_text(f"{BINFMT_MISC}/qemu-s390x")
    assert machine.binfmt_entries() == sorted([*ours, "qemu-s390x"]), registered.stdout
    assert binfmt_d(machine) == sorted([*(f"{name}.conf" for name in ours), "qemu-s390x.conf"])

    purged = machine.run(["dpkg", "-P", "binfmtd"])
    said = purged.stdout + purged.stderr
    assert "could not" not in said
    assert machine.binfmt_entries() == ["qemu-s390x"], said
    assert binfmt_d(machine) == ["qemu-s390x.conf"], said
    assert machine.read_text(FOREIGN_CONF) == f"{FOREIGN_LINE}\n"
    assert machine.read_text(f"{BINFMT_MISC}/qemu-s390x") == foreign
    # Purged, not only removed: the conffile and dpkg's record go too.
    assert machine.run(["test", "-e", CONFIG], check=False).returncode == 1
    shown = machine.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "binfmtd"], check=False)
    assert shown.stdout in ("", "not-installed"), shown.stdout
