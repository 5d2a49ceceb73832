"""Build and cache the Debian 12 tree that the packaging tier installs the .deb into.

(The system tier boots tests/booted.py's trees instead; this one stays for tests/packaging,
which mounts it under an overlay in a private namespace.)

Why a cached tree: debootstrap takes a minute or more, using it takes under a second.
The tree is built once per machine and reused until the package set changes (a stamp
file inside the tree lists it). It is built in a temporary folder beside the cache and
renamed into place only when complete, so an interrupted build is never booted.
Tests never write to it: they see it through an overlay.

Run this file directly to (re)build the tree without pytest: `python3 tests/system/rootfs.py`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv",
    "dbus",
    "libdbi-perl",  # without it debootstrap fails on the virtual package perl-dbdabi-94
    "nix-bin",
    "nix-setup-systemd",
    "qemu-user-static",
    "python3",
    "python3-psutil",
    "python3-structlog",
    "python3-systemd",
    "man-db",  # systemd-analyze verify checks the unit's Documentation=man:binfmtd(8)
)
CACHE_DIR = Path("/var/cache/binfmtd-tests")
TREE = CACHE_DIR / f"{SUITE}-rootfs"
STAMP = "binfmtd-tests.stamp"  # at the top of the tree, renamed into place with it

HOST_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container"}


class Unavailable(RuntimeError):
    """This machine cannot provide what the system tests need (tool, mirror, build)."""


def stamp_text() -> str:
    """What the stamp file holds: any change here forces a rebuild."""
    return f"suite {SUITE}\nvariant minbase\npackages {','.join(PACKAGES)}\n"


def ensure_host_tools() -> None:
    """Install debootstrap and systemd-container with apt-get when missing."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env).returncode != 0:
        # A machine whose package lists were never fetched knows no package yet.
        subprocess.run(["apt-get", "update"], env=env)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise Unavailable(f"apt-get install {' '.join(missing)} failed:\n{result.stderr}")


def _sources_entries() -> list[tuple[list[str], list[str]]]:
    """(URIs, suites) of every enabled `deb` source in this host's apt configuration."""
    entries: list[tuple[list[str], list[str]]] = []
    apt = Path("/etc/apt")
    one_line = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] != ["deb"]:
                continue
            words = words[1:]
            if words and words[0].startswith("["):  # options such as [signed-by=...]
                while words and not words[0].endswith("]"):
                    words.pop(0)
                words = words[1:]
            if len(words) >= 2:
                entries.append(([words[0]], [words[1]]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return entries


def host_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this host's apt uses for `suite` (never a hard-coded host name)."""
    for uris, suites in _sources_entries():
        if suite in suites and uris:
            return uris[0]
    raise Unavailable(f"no `deb` source for suite {suite!r} in /etc/apt/sources.list(.d)")


def _unmount_below(path: Path) -> None:
    """Lazily unmount whatever an interrupted debootstrap left mounted inside `path`."""
    prefix = str(path.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def remove_tree(path: Path) -> None:
    """Delete a (partial) tree without ever following a bind mount of /dev or /proc."""
    if not path.exists():
        return
    _unmount_below(path)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def is_current(tree: Path = TREE) -> bool:
    """True when `tree` is complete and was built for the current package set."""
    stamp = tree / STAMP
    return stamp.is_file() and stamp.read_text() == stamp_text()


def build(tree: Path = TREE) -> float:
    """Make sure a current tree exists at `tree`; return the seconds spent (0 if cached).

    A lock serialises concurrent test runs so that only one of them builds.
    """
    if is_current(tree):
        return 0.0
    if os.geteuid() != 0:
        raise Unavailable("building the rootfs needs root (debootstrap, chroot)")
    ensure_host_tools()
    tree.parent.mkdir(parents=True, exist_ok=True)
    with open(tree.parent / f".{tree.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current(tree):  # another run built it while we waited
            return 0.0
        for stale in tree.parent.glob(f".{tree.name}.*.tmp"):
            remove_tree(stale)  # left behind by an interrupted build
        start = time.monotonic()
        tmp = tree.parent / f".{tree.name}.{os.getpid()}.tmp"
        mirror = host_mirror()
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(tmp),
            mirror,
        ]
        print(f"rootfs: building {tree} from {mirror} (about 1-2 minutes)", flush=True)
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            log = tmp / "debootstrap" / "debootstrap.log"
            detail = log.read_text()[-3000:] if log.is_file() else ""
            remove_tree(tmp)
            raise Unavailable(
                f"{' '.join(cmd)} failed with exit code {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{detail}"
            )
        for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()  # 130 MB that no test needs
        (tmp / "etc/hostname").write_text("binfmtd-test\n")  # debootstrap copies the host's
        (tmp / STAMP).write_text(stamp_text())
        old = tree.parent / f".{tree.name}.old.tmp"
        if tree.exists():
            tree.rename(old)
        tmp.rename(tree)
        remove_tree(old)
        return time.monotonic() - start


if __name__ == "__main__":
    print(f"rootfs: {TREE} ready after {build():.1f} s")
