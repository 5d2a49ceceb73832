"""rpmlint as Fedora runs it, for the packaging tier: rpmlint 2.10.0 from PyPI in a venv of
its own, with the Fedora configuration its source package carries (configs/Fedora, what
Fedora's rpmlint installs in /etc/xdg/rpmlint), and what those checks call: Debian's
python3-rpm (rpm's bindings, which PyPI's `rpm` finds), enchant with an en_US dictionary
(the spelling checks; Makefile TEST_DEBS), dash and checkbashisms (BashismsCheck, which
Fedora's rpmlint requires; taken from Debian's devscripts without installing it). The venv
and the configuration are built once and kept in CACHE, so a second run is offline.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.debian import debian_program
from tests.support.parts import CACHE, require

VERSION = "2.10.0"
STAMP = ".binfmtd-tests-installed"
# Debian's own Python: python3-rpm's bindings are built for it.
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Rpmlint:
    program: Path
    config: Path  # configs/Fedora of rpmlint's source package
    tools: Path  # the folder with checkbashisms

    def run(self, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
        """rpmlint with Fedora's configuration and nothing of this machine's (no
        /etc/xdg/rpmlint, no ~/.config/rpmlint): `home` stands in for both."""
        env = {"PATH": f"{self.tools}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
               "XDG_CONFIG_DIRS": str(home / "xdg")}
        return subprocess.run([str(self.program), "-c", str(self.config), *args],
                              capture_output=True, text=True, env=env, timeout=300,
                              check=False)


def _works(base: Path) -> bool:
    program = base / "venv" / "bin" / "rpmlint"
    if not (base / STAMP).exists() or not (base / "Fedora" / "fedora.toml").is_file():
        return False
    probe = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                           check=False)
    return probe.returncode == 0 and VERSION in probe.stdout


def _build(base: Path) -> None:
    """The venv (pip install rpmlint), and configs/Fedora out of rpmlint's sdist."""
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    started = time.monotonic()
    venv = base / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q"]
    installed = subprocess.run([*pip, "install", f"rpmlint=={VERSION}"], capture_output=True,
                               text=True, timeout=900, check=False)
    with tempfile.TemporaryDirectory(dir=base) as sdist:
        fetched = subprocess.run([*pip, "download", "--no-deps", "--no-binary", ":all:",
                                  "--dest", sdist,
                                  f"rpmlint=={VERSION}"],
                                 capture_output=True, text=True, timeout=900, check=False)
        failed = next((r for r in (installed, fetched) if r.returncode != 0), None)
        if failed is not None:
            shutil.rmtree(base, ignore_errors=True)
            require(False, f"pip cannot fetch rpmlint {VERSION}: {failed.stderr[-600:]}")
        with tarfile.open(Path(sdist) / f"rpmlint-{VERSION}.tar.gz") as tar:
            folder = f"rpmlint-{VERSION}/configs/Fedora/"
            members = [m for m in tar.getmembers()
                       if m.name.startswith(folder) and m.name.endswith(".toml")]
            assert members, f"rpmlint's sdist has no {folder}"
            (base / "Fedora").mkdir()
            for member in members:
                source = tar.extractfile(member)
                assert source is not None
                (base / "Fedora" / Path(member.name).name).write_bytes(source.read())
    (base / STAMP).write_text(f"rpmlint {VERSION}\n")
    print(f"\nrpmlint venv built in {time.monotonic() - started:.1f} s at {base}")


def rpmlint(fallback: Path) -> Rpmlint:
    """rpmlint VERSION with Fedora's configuration, built once in CACHE (in `fallback`
    where CACHE cannot be written); skipped (in CI: failed) where a part is missing."""
    require(Path(SYSTEM_PYTHON).is_file() and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import rpm"], capture_output=True, check=False).returncode == 0,
        "rpmlint needs rpm's Python bindings (apt-get install python3-rpm)")
    for program, why in (("dash", "rpmlint's BashismsCheck runs dash"),
                         ("perl", "checkbashisms is a Perl program")):
        require(shutil.which(program) is not None, f"{why} (apt-get install {program})")
    with contextlib.suppress(OSError):
        CACHE.mkdir(parents=True, exist_ok=True)
    parent = CACHE if CACHE.is_dir() and os.access(CACHE, os.W_OK) else fallback
    base = parent / f"rpmlint-{VERSION}"
    with (parent / f"rpmlint-{VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs build it once
        if not _works(base):
            _build(base)
    checkbashisms = debian_program("devscripts", "/usr/bin/checkbashisms")
    return Rpmlint(base / "venv" / "bin" / "rpmlint", base / "Fedora", checkbashisms.parent)
