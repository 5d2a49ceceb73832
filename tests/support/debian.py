"""What the tests take from Debian: the generations the booted tiers run, their cached trees,
and Debian's static busybox, the foreign builder of every Nix build the tests make.

The trees: every generation holds a booted systemd, Nix with Debian's socket-activated
daemon, and what the project's .deb depends on and recommends. Run this module to build (or
find) the trees without pytest, all at once, and print how long each took:
`.venv/bin/python -m tests.support.debian [SUITE...]` (default: every one). The test run
itself starts it in the background (tests/conftest.py), so that a fresh machine's
debootstraps overlap the tiers that need no tree.

busybox: a static busybox is the smallest real foreign program Nix can use as a builder with
no network at build time and no nixpkgs. It is fetched with apt-get from the same Debian
mirror the host already uses, through a private apt state folder, so the host's apt
configuration, lists and dpkg status are never touched. The result is cached so that later
runs are offline.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from tests.support.containers import Unavailable, debian_tree, is_built
from tests.support.parts import CACHE, require

# --- the generations and their trees ----------------------------------------------------

# Every generation: a booted systemd, Nix with Debian's socket-activated daemon, and what
# the project's .deb depends on and recommends (dpkg -i installs nothing by itself).
COMMON = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libdbi-perl",  # without it nix-bin does not configure (../shared/FACTS.md)
    "nix-bin",
    "nix-setup-systemd",
    "python3",
    "python3-psutil",
    "python3-structlog",
    "python3-systemd",
    "procps",
)


class Generation(NamedTuple):
    suite: str
    nix: str  # the version the distro's nix-bin reports, asserted by the test
    packages: tuple[str, ...]


GENERATIONS = (
    # bookworm's qemu-user-static ships /usr/lib/binfmt.d/qemu-aarch64.conf. Its tree is
    # also the system, packaging and farm tiers' (BOOKWORM below): one tree for a fresh
    # machine to build, not four. man-db: `systemd-analyze verify` and `man -w` read the
    # unit's man page; openssh-server: the farm's builder.
    Generation("bookworm", "2.8.0", (*COMMON, "qemu-user-static", "man-db", "openssh-server")),
    # From trixie on the binfmt.d lines come with qemu-user-binfmt.
    Generation("trixie", "2.26.3", (*COMMON, "qemu-user", "qemu-user-binfmt")),
    Generation("sid", "2.34.8", (*COMMON, "qemu-user", "qemu-user-binfmt")),
)

BOOKWORM = GENERATIONS[0]


def required_tree(generation: Generation) -> Path:
    """The generation's cached tree, built on first use; where it cannot be built, the test
    is skipped (in CI: failed) with the reason."""
    try:
        return debian_tree(generation.suite, generation.packages)
    except Unavailable as error:
        require(False, f"no {generation.suite} tree: {error}")
        raise


def build(generation: Generation) -> str:
    cached = is_built(generation.suite, generation.packages)
    start = time.monotonic()
    path = debian_tree(generation.suite, generation.packages)
    return (f"{generation.suite}: {path} {'cached' if cached else 'built'} "
            f"in {time.monotonic() - start:.1f} s")


# --- Debian's static busybox ------------------------------------------------------------


# Debian architecture -> (suite, ELF e_machine). riscv64 is not a bookworm release
# architecture; it is one from trixie on. amd64 and i386: the aarch64 tier's x86 builders.
ARCHES: dict[str, tuple[str, int]] = {
    "arm64": ("bookworm", 183),  # EM_AARCH64
    "riscv64": ("trixie", 243),  # EM_RISCV
    "amd64": ("bookworm", 62),  # EM_X86_64
    "i386": ("bookworm", 3),  # EM_386
}
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PT_INTERP = 3


class FetchError(RuntimeError):
    """busybox, or a program from Debian, could not be fetched or is not what it should be."""


def host_debian_mirror() -> str:
    """The URI of the host's own Debian release entry, as apt itself parses it.

    Asking apt (rather than parsing sources.list and deb822 files by hand) covers both
    formats, disabled entries and every option apt knows.
    """
    codename = _os_release().get("VERSION_CODENAME", "")
    out = _run(["apt-get", "indextargets", "--no-release-info",
                "--format", "$(REPO_URI) $(RELEASE) $(TARGET_OF)", "Identifier: Packages"])
    for line in out.splitlines():
        uri, _, rest = line.partition(" ")
        if rest == f"{codename} deb":
            return uri
    raise FetchError(f"no 'deb' entry for suite {codename!r} in the host's apt sources")


def cached_busybox(arch: str, cache_dir: Path = CACHE) -> Path:
    """Where the static busybox for the Debian architecture `arch` is kept once fetched."""
    return cache_dir / "busybox" / arch / "busybox"


def static_busybox(arch: str, cache_dir: Path = CACHE) -> Path:
    """Path of a static busybox for the Debian architecture `arch`, fetched once."""
    suite, machine = ARCHES[arch]
    target = cached_busybox(arch, cache_dir)
    if target.is_file():
        check_elf(target, machine)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="busybox-", dir=target.parent) as tmp:
        root = _unpacked(Path(tmp), arch, suite, "busybox-static")
        # bookworm ships /bin/busybox, trixie (merged /usr) /usr/bin/busybox.
        found = next((p for p in (root / "bin/busybox", root / "usr/bin/busybox")
                      if p.is_file() and not p.is_symlink()), None)
        if found is None:
            raise FetchError("busybox-static has no busybox in /bin or /usr/bin")
        check_elf(found, machine)
        found.chmod(0o755)
        os.replace(found, target)  # atomic: a cached file is always a whole one
    return target


def debian_program(package: str, path: str, cache_dir: Path = CACHE) -> Path:
    """The program at `path` in `package` of the host's own Debian release and architecture
    (devscripts' /usr/bin/checkbashisms), fetched once as busybox is and kept in the cache;
    the package is never installed. Where it cannot be fetched, the test is skipped (in CI:
    failed) with the reason."""
    target = cache_dir / "debian" / package / Path(path).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        arch = _run(["dpkg", "--print-architecture"]).strip()
        with tempfile.TemporaryDirectory(prefix=f"{package}-", dir=target.parent) as tmp:
            found = _unpacked(Path(tmp), arch, _os_release().get("VERSION_CODENAME", ""),
                              package) / path.lstrip("/")
            if not found.is_file():
                raise FetchError(f"{package} has no {path}")
            os.replace(found, target)  # atomic: a cached file is always a whole one
    except FetchError as error:
        require(False, f"cannot fetch {path} from Debian's {package}: {error}")
    return target


def busybox(arch: str) -> Path:
    """static_busybox(arch); where it cannot be fetched, the test is skipped (in CI: failed)
    with the reason."""
    try:
        return static_busybox(arch)
    except FetchError as error:
        require(False, f"cannot fetch busybox-static for {arch}: {error}")
        raise


def check_elf(path: Path, machine: int) -> None:
    """Refuse anything but a little-endian static ELF executable for `machine` (64-bit, or
    32-bit for i386).

    A dynamically linked busybox would fail inside the Nix sandbox for a reason that
    has nothing to do with binfmtd, so it is caught here.
    """
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] != 1:
        raise FetchError(f"{path} is not a little-endian ELF file")
    (e_machine,) = struct.unpack_from("<H", data, 18)
    if e_machine != machine:
        raise FetchError(f"{path} has ELF machine {e_machine}, expected {machine}")
    if data[4] == 2:  # ELFCLASS64
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
    else:
        phoff, = struct.unpack_from("<I", data, 28)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == PT_INTERP:
            raise FetchError(f"{path} is dynamically linked")


def _apt_download(work: Path, arch: str, suite: str, package: str) -> Path:
    """apt-get update + download with every piece of apt state kept inside `work`."""
    for sub in ("lists/partial", "cache/archives/partial", "etc/sources.list.d", "dl"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "status").touch()
    (work / "etc/sources.list").write_text(
        f"deb [arch={arch} signed-by={KEYRING}] {host_debian_mirror()} {suite} main\n")
    # apt drops to the _apt user for downloads; let it write here (else it warns).
    subprocess.run(["chown", "-R", "_apt:root", str(work)], capture_output=True)
    apt = ["apt-get", "-q",
           "-o", f"Dir::State={work}", "-o", f"Dir::State::Lists={work}/lists",
           "-o", f"Dir::State::status={work}/status", "-o", f"Dir::Cache={work}/cache",
           "-o", f"Dir::Etc::SourceList={work}/etc/sources.list",
           "-o", f"Dir::Etc::SourceParts={work}/etc/sources.list.d",
           "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
           "-o", "Acquire::Languages=none"]
    _run([*apt, "update"])
    _run([*apt, "download", f"{package}:{arch}"], cwd=work / "dl")
    debs = list((work / "dl").glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise FetchError(f"apt-get download left {debs} in {work / 'dl'}")
    return debs[0]


def _unpacked(work: Path, arch: str, suite: str, package: str) -> Path:
    """`package` of `suite` for `arch`, downloaded into `work` and unpacked there; its root."""
    root = work / "root"
    _run(["dpkg-deb", "-x", str(_apt_download(work, arch, suite, package)), str(root)])
    return root


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"{cmd[0]}: {e}") from e
    if proc.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def _os_release() -> dict[str, str]:
    values = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value.strip().strip('"')
    return values


if __name__ == "__main__":
    wanted = [g for g in GENERATIONS if g.suite in sys.argv[1:] or len(sys.argv) == 1]
    with ThreadPoolExecutor(len(wanted) or 1) as pool:  # debootstrap mostly waits on I/O
        for said in pool.map(build, wanted):
            print(said, flush=True)
