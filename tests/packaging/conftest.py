"""The packaging tier leaves this host as it found it, by construction and by check.

The .deb is installed into the cached Debian 12 tree (tests/support/debian.py's
BOOKWORM, the tree of the matrix, system and farm tiers too), through an overlay
that exists only in the test's private namespace (tests/support/kernel.py): its writes go
to a tmpfs, its binfmt_misc is the namespace's own, and all of it ends with the namespace.
Nothing is installed on the host, so no policy-rc.d is needed here and no binfmtd.service
can start on it. Where the maintainer scripts must meet a running systemd (enable and
start, purge), the same tree is booted instead, in a user namespace of its own
(booted_package, tests/support/containers.py). The Ansible role runs in a private
namespace too. After every test of the tier the host's /etc/nix, its binfmt_misc (with a
sentinel handler as the positive control, tests/support/hostguard.py) and dpkg's record of
binfmtd are as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.tree import DebianTree, dpkg_status, mount_overlay
from tests.support.containers import BootFailed, CommandFailed, Machine, boot, require_nspawn
from tests.support.debian import BOOKWORM, required_tree
from tests.support.hostguard import host_kept
from tests.support.kernel import BINFMT_MISC, PrivateBinfmt
from tests.support.parts import require

BOOTED_DEB = "/opt/binfmtd.deb"  # where booted_package puts the .deb in the container


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    """Fail a test after which the host's /etc/nix, binfmt_misc or dpkg record differ."""
    require(Path(BINFMT_MISC).is_dir(), "this kernel has no binfmt_misc")
    before = dpkg_status("binfmtd")
    with host_kept("binfmtd-test-packaging-"):
        yield
    assert dpkg_status("binfmtd") == before, "the packaging tier changed the host's dpkg"


@pytest.fixture
def debian_tree(real_binfmt: PrivateBinfmt, tmp_path: Path) -> DebianTree:
    """A throwaway, writable Debian 12 tree with the test's own binfmt_misc.

    The cache stays clean (it is the overlay's lower layer) and the host sees no mount:
    when the namespace ends, its mounts and the tmpfs with every write go with it.
    """
    require(Path("/etc/debian_version").exists(), "the Debian tree is built on Debian only")
    cached = required_tree(BOOKWORM)
    scratch = tmp_path / "debian-tree"
    scratch.mkdir()
    mount_overlay(real_binfmt, cached, scratch)
    return DebianTree(real_binfmt, scratch / "root")


@pytest.fixture
def booted_package(debian_package: Path) -> Iterator[Machine]:
    """The cached Debian 12 tree booted with systemd, its binfmt_misc its own (a user
    namespace of the container's own: tests/support/containers.py), and the .deb installed
    by `dpkg -i` as a user installs it: no policy-rc.d, so the maintainer scripts enable
    and start binfmtd.service. Powered off at the end; the cache is never written.
    """
    require_nspawn()
    tree = required_tree(BOOKWORM)
    with contextlib.ExitStack() as stack:
        try:
            machine = stack.enter_context(boot(tree))
        except BootFailed as error:
            require(False, f"systemd-nspawn cannot boot {tree}: {error}")
            raise
        try:  # before binfmtd.service starts: its BindReadOnlyPaths= binds this instance
            machine.mount_binfmt_misc()
        except CommandFailed as error:
            require(False, f"no private binfmt_misc in the container (Linux >= 6.7): {error}")
        assert machine.binfmt_entries() == [], "the container's binfmt_misc is not its own"
        machine.copy_in(debian_package, BOOTED_DEB)
        machine.run(["dpkg", "-i", BOOTED_DEB])
        yield machine
