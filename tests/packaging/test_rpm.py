"""The Fedora RPM: `make rpm` builds packaging/fedora/binfmtd.spec from an sdist, and the
package holds what the spec promises. Runs on Debian (rpmbuild from Debian's `rpm`, with
stand-ins for Fedora's macro packages); the RPM is inspected and its scriptlets are run
against stubs and copies, never installed on this machine.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from binfmtd.config import Config, read_config
from binfmtd.nixconf import find_block, render_block, with_block
from tests.support.parts import REPO, project_version, require
from tests.support.rpmlint import Rpmlint, rpmlint

SPEC = REPO / "packaging" / "fedora" / "binfmtd.spec"
RPMLINTRC = REPO / "packaging" / "fedora" / "binfmtd.rpmlintrc"

UNIT = "/usr/lib/systemd/system/binfmtd.service"
CONFIG = "/etc/binfmtd/config.toml"
LICENSE = "/usr/share/licenses/binfmtd/LICENSE"
HELPER = "/usr/lib/systemd/systemd-update-helper"
# Where Fedora's shells look (the spec's %{bash,zsh,fish}_completions_dir).
COMPLETIONS = {
    "bash": "/usr/share/bash-completion/completions/binfmtd",
    "zsh": "/usr/share/zsh/site-functions/_binfmtd",
    "fish": "/usr/share/fish/vendor_completions.d/binfmtd.fish",
}


@dataclass(frozen=True)
class Built:
    rpm: Path
    srpm: Path
    root: Path  # the RPM's payload, unpacked
    log: str  # what `make rpm` printed: rpmbuild's every section, %check's pytest


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`make rpm` once, as a user would run it; its RPM unpacked for a look inside."""
    require(shutil.which("make") is not None, "make is not installed")
    require(shutil.which("rpmbuild") is not None
            or (os.geteuid() == 0 and shutil.which("apt-get") is not None),
            "rpmbuild is missing and apt-get cannot install it (needs root on Debian)")
    version = project_version()
    for old in (REPO / "dist").glob("binfmtd-*.rpm"):
        old.unlink()
    result = subprocess.run(["make", "rpm"], cwd=REPO, capture_output=True, text=True,
                            timeout=1200)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        pytest.fail(f"make rpm failed ({result.returncode}):\n{tail}")
    rpms = sorted((REPO / "dist").glob(f"binfmtd-{version}-*.noarch.rpm"))
    srpms = sorted((REPO / "dist").glob(f"binfmtd-{version}-*.src.rpm"))
    assert len(rpms) == 1, rpms
    assert len(srpms) == 1, srpms

    root = tmp_path_factory.mktemp("rpm-payload")
    with open(rpms[0], "rb") as package:
        archive = subprocess.run(["rpm2archive", "-"], stdin=package, capture_output=True,
                                 check=True).stdout
    tarball = root.parent / "payload.tgz"
    tarball.write_bytes(archive)
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(root)
    return Built(rpm=rpms[0], srpm=srpms[0], root=root, log=result.stdout + result.stderr)


def rpm_query(package: Path, *options: str) -> list[str]:
    result = subprocess.run(["rpm", "-qp", *options, str(package)], capture_output=True,
                            text=True, check=True)
    return result.stdout.splitlines()


def test_make_rpm_leaves_the_noarch_rpm_in_dist(built: Built) -> None:
    version = project_version()
    assert re.fullmatch(rf"binfmtd-{re.escape(version)}-\d+.*\.noarch\.rpm", built.rpm.name)
    assert rpm_query(built.rpm, "--qf", "%{NAME} %{VERSION} %{ARCH} %{LICENSE}") == [
        f"binfmtd {version} noarch MIT"]


def test_rpm_lists_command_unit_man_page_license_and_config(built: Built) -> None:
    files = set(rpm_query(built.rpm, "-l"))
    for wanted in ("/usr/bin/binfmtd", UNIT, "/usr/share/man/man8/binfmtd.8.gz", LICENSE,
                   CONFIG, "/usr/share/doc/binfmtd/README.md"):
        assert wanted in files, wanted
    sitelib = sitelib_of(built).relative_to(built.root)
    package = f"/{sitelib}/binfmtd"
    assert f"{package}/cli.py" in files
    assert any(name.startswith(f"{package}/__pycache__/cli.cpython-") for name in files)
    assert f"/{sitelib}/binfmtd-{project_version()}.dist-info/METADATA" in files


def test_config_is_noreplace_and_license_is_marked(built: Built) -> None:
    flags = {}
    for line in rpm_query(built.rpm, "--qf", "[%{FILEFLAGS:fflags}\t%{FILENAMES}\n]"):
        flag, name = line.split("\t")
        flags[name] = flag
    assert set(flags[CONFIG]) >= {"c", "n"}, flags[CONFIG]  # %config(noreplace)
    assert "l" in flags[LICENSE]
    assert "d" in flags["/usr/share/man/man8/binfmtd.8.gz"]


def spec_tags(tag: str) -> list[str]:
    """The values of the spec's `tag:` lines, as written."""
    return re.findall(rf"^{tag}:\s*(.+?)\s*$", SPEC.read_text(), re.MULTILINE)


def test_requires_recommends_and_no_other_weak_dependency(built: Built) -> None:
    requires = rpm_query(built.rpm, "-R")
    assert not [line for line in requires if "psutil" in line], requires
    # sd_notify and native journal fields for the service: required, as the spec says.
    assert {"python3-structlog >= 22.3", "python3-systemd"} <= set(requires)
    assert set(spec_tags("Requires")) <= set(requires)
    assert any(line.startswith("python(abi) = 3.") for line in requires)
    # Fedora's nix is not in every release: recommended, never required.
    assert not [line for line in requires if line.startswith("nix")], requires
    # The weak dependencies are the spec's, and no more.
    recommends = rpm_query(built.rpm, "--recommends")
    assert sorted(recommends) == sorted(spec_tags("Recommends")) == [
        "nix-daemon", "qemu-user-static"]
    for weak in ("--suggests", "--supplements", "--enhances"):
        assert rpm_query(built.rpm, weak) == [], weak
    assert spec_tags("Suggests") == spec_tags("Supplements") == spec_tags("Enhances") == []


def test_srpm_records_the_generated_build_requires(built: Built) -> None:
    """As Fedora's %pyproject_buildrequires does: the SRPM lists what it generated (pip and
    packaging for the macros, the backend's requirements, the project's dependencies with
    their bounds), besides the spec's own BuildRequires."""
    build_requires = set(rpm_query(built.srpm, "-R"))
    assert set(spec_tags("BuildRequires")) <= build_requires
    assert {"python3-devel", "pyproject-rpm-macros", "systemd-rpm-macros"} <= build_requires
    assert {"python3dist(setuptools) >= 61", "python3dist(wheel)", "python3dist(pip) >= 19",
            "python3dist(packaging)", "python3dist(structlog) >= 22.3"} <= build_requires
    assert any(line.startswith("rpmlib(DynamicBuildRequires)") for line in build_requires)


def test_payload_matches_the_source_tree(built: Built) -> None:
    root = built.root
    assert (root / UNIT.lstrip("/")).read_bytes() == (REPO / "systemd/binfmtd.service").read_bytes()
    man_page = gzip.decompress((root / "usr/share/man/man8/binfmtd.8.gz").read_bytes())
    assert man_page == (REPO / "docs/binfmtd.8").read_bytes()
    assert (root / LICENSE.lstrip("/")).read_bytes() == (REPO / "LICENSE").read_bytes()


def test_packaged_command_runs(built: Built) -> None:
    script = built.root / "usr/bin/binfmtd"
    # As Fedora's %pyproject_install writes it (%py3_shebang_flags: no user site, no
    # script folder on sys.path).
    assert script.read_text().splitlines()[0] == "#! /usr/bin/python3 -sP"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            env=payload_env(built), check=True)
    assert result.stdout.strip() == f"binfmtd {project_version()}"


def test_the_completions_are_listed_and_written_from_the_parser(built: Built) -> None:
    files = set(rpm_query(built.rpm, "-l"))
    for shell, path in COMPLETIONS.items():
        assert path in files, shell
        written = subprocess.run([sys.executable, "-m", "binfmtd.completions", shell],
                                 capture_output=True, text=True, check=True, cwd=REPO).stdout
        assert (built.root / path.lstrip("/")).read_text() == written, shell


def test_check_runs_the_whole_unit_tier_and_it_passes(built: Built) -> None:
    """%check's pytest, as the build log shows it: the unit tier of the sdist, every test
    module of the source tree's tests/unit, each test collected passed."""
    check = built.log.split("Executing(%check)", 1)
    assert len(check) == 2, "rpmbuild ran no %check"
    log = check[1]
    assert re.search(r"-m pytest .*tests/unit$", log, re.MULTILINE), log[:2000]
    collected = re.search(r"^collected (\d+) items$", log, re.MULTILINE)
    summary = re.search(r"^=+ (.+) in [\d.]+s =+$", log, re.MULTILINE)
    assert collected and summary, log[-3000:]
    assert summary.group(1) == f"{collected.group(1)} passed", summary.group(0)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "tests/unit").glob("test_*.py")}
    ran = set(re.findall(r"^(tests/unit/test_\w+\.py) ", log, re.MULTILINE))
    assert modules and ran == modules, sorted(modules ^ ran)


@pytest.fixture(scope="session")
def fedora_rpmlint(tmp_path_factory: pytest.TempPathFactory) -> Rpmlint:
    return rpmlint(tmp_path_factory.mktemp("rpmlint-cache"))


MESSAGE = re.compile(r"^\S+: [EW]: .*$", re.MULTILINE)
SUMMARY = re.compile(r"(\d+) errors, (\d+) warnings, (\d+) filtered")


def test_rpmlint_with_fedoras_configuration_finds_nothing_unexplained(
        built: Built, fedora_rpmlint: Rpmlint, tmp_path: Path) -> None:
    """rpmlint 2.10 with Fedora's configuration, on the RPM and the SRPM (its spec too):
    0 errors and 0 warnings with binfmtd.rpmlintrc. Without it, the same run reports
    findings (the control: rpmlint looked), each one a filter of binfmtd.rpmlintrc names
    with its reason; rpmlint itself reports a filter that matches nothing."""
    linted = fedora_rpmlint.run("-r", str(RPMLINTRC), str(built.rpm), str(built.srpm),
                                home=tmp_path)
    said = linted.stdout + linted.stderr
    # The checks Fedora's configuration adds ran: spelling (enchant and an en_US
    # dictionary), bashisms (dash and checkbashisms; rpmlint stops without them).
    assert "spellchecking disabled" not in said, "apt-get install libenchant-2-2"
    assert "spellchecking dictionary" not in said, "apt-get install hunspell-en-us"
    summary = SUMMARY.search(said)
    assert summary, said
    assert summary.group(1, 2) == ("0", "0"), said
    assert MESSAGE.findall(linted.stdout) == [], said
    assert linted.returncode == 0, said

    unfiltered = fedora_rpmlint.run(str(built.rpm), str(built.srpm), home=tmp_path)
    findings = MESSAGE.findall(unfiltered.stdout)
    assert findings, unfiltered.stdout + unfiltered.stderr
    filters = [re.compile(pattern) for pattern in re.findall(
        r'^addFilter\(r"(.*)"\)$', RPMLINTRC.read_text(), re.MULTILINE)]
    unexplained = [f for f in findings if not any(p.search(f) for p in filters)]
    assert unexplained == []


def test_shipped_config_comments_every_key_with_its_default(built: Built) -> None:
    shipped = built.root / CONFIG.lstrip("/")
    assert read_config(shipped, required=True) == Config()  # as shipped: changes nothing
    text = shipped.read_text()
    keys = {name.replace("_", "-") for name in Config._fields}
    commented = re.findall(r"^#([a-z0-9-]+) = ", text, re.MULTILINE)
    assert sorted(commented) == sorted(keys)
    # Uncommenting every key line gives the defaults again: each shows its default.
    uncommented = shipped.parent / "uncommented.toml"
    uncommented.write_text(re.sub(r"^#([a-z0-9-]+ = )", r"\1", text, flags=re.MULTILINE))
    assert read_config(uncommented, required=True) == Config()


def scriptlet(built: Built, tag: str) -> str:
    return "\n".join(rpm_query(built.rpm, "--qf", f"%{{{tag}}}"))


def test_preun_stops_the_service_then_runs_binfmtd_remove_on_erase(built: Built) -> None:
    preun = scriptlet(built, "PREUN")
    assert "/usr/bin/binfmtd remove || :" in preun
    assert preun.index(f"{HELPER} remove-system-units binfmtd.service") \
        < preun.index("/usr/bin/binfmtd remove")


def test_preun_takes_the_block_out_of_nix_conf_on_erase_only(built: Built, tmp_path: Path) -> None:
    """The packaged %preun, run by sh as rpm runs it, with the packaged binfmtd in place of
    /usr/bin/binfmtd and a recording stub for systemd-update-helper, against a copy of
    nix.conf: on upgrade nothing happens; then, the same script on the same files, on
    erase the block goes (byte for byte) and nix-daemon is restarted."""
    log = tmp_path / "calls.log"
    helper = stub(tmp_path / "systemd-update-helper", f'echo "helper $*" >> {log}\n')
    env = payload_env(built)
    program = stub(tmp_path / "binfmtd", (
        f'echo "binfmtd $*" >> {log}\n'
        f'exec {built.root}/usr/bin/binfmtd "$@"\n'))
    recorder = stub(tmp_path / "restart", f'echo "restart nix-daemon" >> {log}\n')
    (tmp_path / "config.toml").write_text(f'restart = ["{recorder}"]\n')
    (tmp_path / "binfmt_misc").mkdir()
    original = "# the user's own settings\nsandbox = true\n"
    block = render_block(["aarch64-linux"], ["/usr/bin/qemu-aarch64-static?"])
    nix_conf = tmp_path / "nix.conf"
    nix_conf.write_text(with_block(original, block))
    assert find_block(nix_conf.read_text()) is not None
    env.update(BINFMTD_CONFIG=str(tmp_path / "config.toml"), BINFMTD_NIX_CONF=str(nix_conf),
               BINFMTD_BINFMT_MISC=str(tmp_path / "binfmt_misc"))

    body = scriptlet(built, "PREUN").replace(HELPER, str(helper)).replace(
        "/usr/bin/binfmtd", str(program))
    script = tmp_path / "preun.sh"
    script.write_text(body + "\n")
    synced = nix_conf.read_bytes()

    subprocess.run(["/bin/sh", "-e", str(script), "1"], env=env, check=True)  # upgrade
    assert calls(log) == []
    assert nix_conf.read_bytes() == synced

    subprocess.run(["/bin/sh", "-e", str(script), "0"], env=env, check=True)  # erase
    assert calls(log) == ["helper remove-system-units binfmtd.service", "binfmtd remove",
                          "restart nix-daemon"]
    assert nix_conf.read_text() == original


def calls(log: Path) -> list[str]:
    """What the stubs recorded, in order."""
    return log.read_text().splitlines() if log.exists() else []


def test_preun_never_fails_the_erase(built: Built, tmp_path: Path) -> None:
    failing = stub(tmp_path / "binfmtd", "echo 'binfmtd: error' >&2; exit 2\n")
    body = scriptlet(built, "PREUN").replace(HELPER, str(tmp_path / "absent")).replace(
        "/usr/bin/binfmtd", str(failing))
    result = subprocess.run(["/bin/sh", "-e", "-c", body, "preun", "0"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("tag", "quiet", "acting", "expected"), [
    ("POSTIN", "2", "1", ["helper install-system-units binfmtd.service"]),
    ("POSTUN", "0", "1", ["helper mark-restart-system-units binfmtd.service"]),
])
def test_systemd_scriptlets(built: Built, tmp_path: Path, tag: str, quiet: str, acting: str,
                            expected: list[str]) -> None:
    """The scriptlet does nothing for `quiet` (upgrade, erase), and then, the same stub
    recording, calls the helper for `acting`."""
    log = tmp_path / "calls.log"
    helper = stub(tmp_path / "systemd-update-helper", f'echo "helper $*" >> {log}\n')
    body = scriptlet(built, tag).replace(HELPER, str(helper))
    subprocess.run(["/bin/sh", "-e", "-c", body, tag, quiet], check=True)
    assert calls(log) == []
    subprocess.run(["/bin/sh", "-e", "-c", body, tag, acting], check=True)
    assert calls(log) == expected


def stub(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def sitelib_of(built: Built) -> Path:
    found = sorted(built.root.glob("usr/lib/python3.*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def payload_env(built: Built) -> dict[str, str]:
    """Run the packaged program as installed: the interpreter its shebang names (the
    Python the RPM was built for, with binfmtd's dependencies from the distribution),
    the RPM's own site-packages first on the path."""
    return dict(os.environ, PYTHONPATH=str(sitelib_of(built)))
