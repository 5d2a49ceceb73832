"""The packaging tier's Debian tree: the cached one (tests/support/debian.py's BOOKWORM),
writable through an overlay that only a private namespace sees, and dpkg's record on the
host."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from tests.support.kernel import PrivateBinfmt

TREE_ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root")


def deb822(text: str) -> list[dict[str, str]]:
    """The stanzas of a Debian control file (debian/control, debian/tests/control): each
    field's value with its continuation lines joined by a space; comment lines left out."""
    stanzas = []
    for block in re.split(r"\n[ \t]*\n", text.strip()):
        fields: dict[str, str] = {}
        name = ""
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and name:
                fields[name] += " " + line.strip()
            else:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def relations(field: str) -> set[str]:
    """The package names a Depends-like field names (every alternative; no substvars)."""
    names = {re.split(r"[\s(:]", choice.strip())[0]
             for relation in field.split(",") for choice in relation.split("|")}
    return {name for name in names if name and not name.startswith("$")}


def dpkg_status(package: str) -> Optional[str]:
    """What the host's dpkg database says about `package` (None: no dpkg here)."""
    if shutil.which("dpkg-query") is None:
        return None
    return subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package],
                          capture_output=True, text=True, check=False).stdout


class DebianTree:
    """The cached Debian tree, writable through an overlay that only `namespace` sees.

    `run` runs a command chrooted into it, as root, with the namespace's /proc (and so its
    private binfmt_misc) and the host's /dev. Paths are the tree's own.
    """

    def __init__(self, namespace: PrivateBinfmt, root: Path) -> None:
        self.namespace = namespace
        self.root = root  # where the overlay is mounted, inside the namespace

    def run(self, *argv: str, input: Optional[bytes] = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.namespace.argv(["chroot", str(self.root), "/usr/bin/env", "-i", *TREE_ENV,
                                 *argv]),
            input=input, capture_output=True, timeout=timeout, check=False)
        return subprocess.CompletedProcess(done.args, done.returncode,
                                           done.stdout.decode(errors="replace"),
                                           done.stderr.decode(errors="replace"))

    def read_bytes(self, path: str) -> bytes:
        done = subprocess.run(self.namespace.argv(["chroot", str(self.root), "cat", path]),
                              capture_output=True, timeout=60, check=True)
        return done.stdout

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def write_bytes(self, path: str, data: bytes) -> None:
        done = self.run("sh", "-c", 'cat > "$1"', "sh", path, input=data)
        assert done.returncode == 0, done.stderr

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path).returncode == 0

    def copy_in(self, source: Path, dest: str) -> None:
        """Copy a host file or folder to `dest` in the tree."""
        done = self.namespace.run(["cp", "-r", str(source), f"{self.root}{dest}"])
        assert done.returncode == 0, done.stderr


def mount_overlay(namespace: PrivateBinfmt, tree: Path, scratch: Path) -> None:
    """Mount, in the namespace's mount namespace only: a tmpfs on `scratch`, the overlay on
    scratch/root (tree below, the tmpfs above), the namespace's /proc and the host's /dev.

    As the host's root, entering only the mount namespace: an overlay mounted from inside
    the user namespace keeps its bookkeeping in user.* attributes and refuses to rename a
    new folder of mode 000 (EXDEV), which dpkg does for every folder it unpacks.
    """
    root = scratch / "root"
    script = f"""
        mount -t tmpfs -o mode=0755 binfmtd-tests {scratch}
        mkdir {scratch}/upper {scratch}/work {root}
        mount -t overlay -o lowerdir={tree},upperdir={scratch}/upper,workdir={scratch}/work \\
            binfmtd-tests {root}
        mount --rbind /proc {root}/proc
        mount --rbind /dev {root}/dev
    """
    mounted = subprocess.run(["nsenter", "-t", str(namespace.pid), "--mount", "--",
                              "sh", "-ec", script], capture_output=True, text=True,
                             timeout=60, check=False)
    assert mounted.returncode == 0, mounted.stderr
