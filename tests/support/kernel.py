"""A private binfmt_misc for one test: user, mount and PID namespaces of its own.

Since Linux 6.7 each user namespace may mount a binfmt_misc instance of its own. It
starts empty, its registrations apply only to programs inside, and the host's handlers
no longer apply there. So a test that registers handlers here neither sees nor changes
the host's, and "the build fails before binfmtd" holds on a host that already emulates
every architecture.

The namespace is held by a small process (this file run as a program): it unshares a
user, a mount and a PID namespace, the test (root outside) maps every uid and gid onto
themselves (so root, nixbld users and nobody keep their ids), and the namespace's first
process mounts a fresh /proc, binfmt_misc on /proc/sys/fs/binfmt_misc, and an empty tmpfs
on Nix's daemon-socket folder, so that a nix-daemon inside owns its socket alone.

From the host, `binfmt_misc` (/proc/PID/root/proc/sys/fs/binfmt_misc) reads, registers
and removes entries, and inotify on it sees every change. `argv(cmd)` runs a command
inside. `stop()` ends the first process: the kernel then kills every process of the PID
namespace (nix-daemon, its workers, their builds) and `stop()` waits for that.

Also here: the binfmt_misc lines the tests register (`binfmt_line()`, Debian's magic and
mask), and `register_line()`, the one way a test registers a line: one write(2), as
systemd-binfmt does. A booted container runs the same function inside (`REGISTER_PROGRAM`).
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import select
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from tests.support.waiting import until

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
BINFMT_MISC = "/proc/sys/fs/binfmt_misc"
NIX_VAR = "/nix/var/nix"
SOCKET_DIR = NIX_VAR + "/daemon-socket"
IDENTITY_MAP = "0 0 4294967295\n"

# --- binfmt_misc lines ------------------------------------------------------------------

QEMU_BINFMT = "/usr/libexec/qemu-binfmt"  # Debian's qemu-user-static interpreters
# Debian 12's qemu-user-static line for aarch64, as systemd-binfmt writes it.
DEBIAN_AARCH64_MAGIC = (
    r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
)
DEBIAN_AARCH64_MASK = (
    r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
)
# Its riscv64 line shares the mask; s390x is big-endian; loongarch64 masks a flag bit.
RISCV64_MAGIC = DEBIAN_AARCH64_MAGIC.replace(r"\xb7\x00", r"\xf3\x00")
S390X_MAGIC = r"\x7f\x45\x4c\x46\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16"
S390X_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff"
LOONGARCH64_MAGIC = (
    r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x02\x01"
)
LOONGARCH64_MASK = (
    r"\xff\xff\xff\xff\xff\xff\xff\xfc\x00\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
)


def binfmt_line(name: str, interpreter: str, flags: str = "OPF",
                magic: str = DEBIAN_AARCH64_MAGIC, mask: str = DEBIAN_AARCH64_MASK,
                offset: str = "") -> str:
    """A magic-type binfmt_misc line (by default Debian's aarch64 magic and mask; an empty
    offset, as most registrars write it; FEX and update-binfmts write 0)."""
    return f":{name}:M:{offset}:{magic}:{mask}:{interpreter}:{flags}"


# Debian's qemu-user-static lines under test names (any test's own binfmt_misc only).
AARCH64 = binfmt_line("binfmtd-test-aarch64", f"{QEMU_BINFMT}/aarch64-binfmt-P")
RISCV64 = binfmt_line("binfmtd-test-riscv64", f"{QEMU_BINFMT}/riscv64-binfmt-P",
                      magic=RISCV64_MAGIC)
S390X = binfmt_line("binfmtd-test-s390x", f"{QEMU_BINFMT}/s390x-binfmt-P",
                    magic=S390X_MAGIC, mask=S390X_MASK)


def entry_name(line: str) -> str:
    """The name a binfmt_misc line registers (its first field; the first byte delimits)."""
    return line.split(line[0])[1]


def write_once(path: str, text: str) -> None:
    """Write `text` to `path` in one write(2): binfmt_misc takes each write as one line."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def register_line(folder: os.PathLike[str] | str, line: str) -> str:
    """Register `line` in the binfmt_misc mounted at `folder`, in one write, as
    systemd-binfmt does; return the entry's name."""
    write_once(os.path.join(folder, "register"), line)
    return entry_name(line)


# The same write run by a python3 elsewhere (a booted container, whose own binfmt_misc only
# its own processes reach, and whose view of the interpreter the F flag opens):
# `python3 -c REGISTER_PROGRAM FOLDER LINE`.
REGISTER_PROGRAM = (f"import os, sys\n{inspect.getsource(write_once)}\n"
                    "write_once(os.path.join(sys.argv[1], 'register'), sys.argv[2])\n")


class NamespaceError(RuntimeError):
    """The private namespace could not be set up or torn down."""


class PrivateBinfmt:
    """One private namespace with its own binfmt_misc (see the module docstring)."""

    def __init__(self, mount_binfmt_misc: bool = True) -> None:
        self.mount_binfmt_misc = mount_binfmt_misc
        self.pid = 0  # the namespace's first process (PID 1 inside), as the host sees it
        self._holder = 0  # the forked process that unshared; its child is `pid`
        self._orders = -1  # write end: "mapped", then closed to stop
        self._replies = -1  # read end: "unshared", then the first process's pid

    # --- life -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> PrivateBinfmt:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
        orders_r, self._orders = os.pipe2(os.O_CLOEXEC)
        self._replies, replies_w = os.pipe2(os.O_CLOEXEC)
        self._holder = os.fork()
        if self._holder == 0:
            _holder(libc, orders_r, replies_w, self.mount_binfmt_misc)  # never returns
        os.close(orders_r)
        os.close(replies_w)
        try:
            _expect(self._replies, "unshared", timeout)
            for name in ("uid_map", "gid_map"):
                Path(f"/proc/{self._holder}/{name}").write_text(IDENTITY_MAP)
            os.write(self._orders, b"mapped\n")
            self.pid = int(_expect(self._replies, "ready", timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End every process inside and wait until the kernel has reaped them all."""
        if not self._holder:
            return
        holder, self._holder = self._holder, 0
        os.close(self._orders)  # the first process exits when this pipe closes
        os.close(self._replies)
        if _waited(holder, timeout):
            return
        for pid in (self.pid, holder):
            with contextlib.suppress(ProcessLookupError):
                if pid:
                    os.kill(pid, signal.SIGKILL)
        _waited(holder, timeout)
        raise NamespaceError(f"the namespace of pid {self.pid} did not end within "
                             f"{timeout} s; killed")

    def __enter__(self) -> PrivateBinfmt:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- the view from the host ---------------------------------------------------------

    @property
    def root(self) -> Path:
        """The namespace's / as the host reaches it (its own mounts included)."""
        return Path(f"/proc/{self.pid}/root")

    @property
    def binfmt_misc(self) -> Path:
        return self.inside(BINFMT_MISC)

    def inside(self, path: str) -> Path:
        """A path as programs inside see it, reachable from the host."""
        return self.root / path.lstrip("/")

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.binfmt_misc.iterdir()
                      if p.name not in ("register", "status"))

    def register(self, line: str, folder: Optional[Path] = None) -> str:
        """Register one binfmt_misc line (replacing an entry of that name); its name.

        `folder`: another mount of this instance (the usual one may be unmounted)."""
        folder = folder or self.binfmt_misc
        self.unregister(entry_name(line), folder)
        return register_line(folder, line)

    def flush(self) -> None:
        """Remove every entry at once, as systemd-binfmt does before registering anew."""
        (self.binfmt_misc / "status").write_text("-1")

    def unregister(self, name: str, folder: Optional[Path] = None) -> None:
        """Remove an entry if it is there (opening a missing one fails with EACCES)."""
        entry = (folder or self.binfmt_misc) / name
        if entry.exists():
            with contextlib.suppress(FileNotFoundError):
                entry.write_text("-1")

    # --- running programs inside ---------------------------------------------------------

    def argv(self, cmd: Sequence[str], cwd: Optional[str] = None) -> list[str]:
        """`cmd` run inside (as the same uid, in the namespace's PID namespace)."""
        wd = [f"--wd={cwd}"] if cwd else []
        return ["nsenter", "-t", str(self.pid), "--user", "--mount", "--pid",
                "--preserve-credentials", *wd, "--", *cmd]

    def run(self, cmd: Sequence[str], cwd: Optional[str] = None, timeout: float = 120,
            env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(cmd, cwd), capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)

    def child_of(self, nsenter: subprocess.Popen[str], timeout: float = 5.0) -> int:
        """The host pid of the program an `argv()` process runs: nsenter forks it and
        passes no signal on, so signals and CPU figures go to this pid."""
        children = Path(f"/proc/{nsenter.pid}/task/{nsenter.pid}/children")
        failed = NamespaceError(f"nsenter {nsenter.pid} started no program inside")

        def child() -> Optional[int]:
            with contextlib.suppress(OSError):
                found = children.read_text().split()
                if found:
                    return int(found[0])
            if nsenter.poll() is not None:
                raise failed
            return None

        pid = until(child, timeout, interval=0.005)
        if pid is None:
            raise failed
        return pid

    def pids(self) -> list[int]:
        """Every process inside, by its pid inside."""
        proc = self.inside("/proc")
        return sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())


def _expect(fd: int, word: str, timeout: float) -> str:
    """The rest of the holder's next message, which must start with `word`."""
    ready, _, _ = select.select([fd], [], [], timeout)
    said = os.read(fd, 4096).decode() if ready else "nothing"
    if not said.startswith(word):
        raise NamespaceError(f"a private binfmt_misc cannot be set up here: {said.strip()}")
    return said[len(word):].strip()


def _waited(pid: int, timeout: float) -> bool:
    """Reap `pid` within `timeout` seconds."""
    return bool(until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, timeout, interval=0.005))


# --- inside: a forked child that unshares, and its child, PID 1 of the new namespace ----
# Both run only os calls and the libc loaded before the fork, and leave with os._exit.


def _libc_call(libc: ctypes.CDLL, what: str, result: int) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _holder(libc: ctypes.CDLL, orders: int, replies: int, mount_binfmt: bool) -> None:
    status = 1
    try:
        _only_fds(orders, replies)
        try:
            _libc_call(libc, "unshare", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID))
        except OSError as error:
            os.write(replies, f"error: {error}".encode())
            return
        os.write(replies, b"unshared")
        if os.read(orders, 64) != b"mapped\n":
            return
        mounted_r, mounted_w = os.pipe()
        first = os.fork()
        if first == 0:
            os.close(replies)
            os.close(mounted_r)
            _first_process(libc, orders, mounted_w, mount_binfmt)
        os.close(mounted_w)
        said = os.read(mounted_r, 4096).decode()
        os.write(replies, f"ready {first}".encode() if said == "mounted" else said.encode())
        os.close(replies)
        _, wait_status = os.waitpid(first, 0)
        status = os.waitstatus_to_exitcode(wait_status)
    finally:
        os._exit(status)


def _first_process(libc: ctypes.CDLL, orders: int, mounted: int, mount_binfmt: bool) -> None:
    """PID 1 inside: mount, say so, reap orphans until the orders pipe closes."""
    status = 1
    try:
        try:
            _mounts(libc, mount_binfmt)
        except OSError as error:
            os.write(mounted, f"error: {error}".encode())
            return
        signal.signal(signal.SIGCHLD, _reap)
        os.write(mounted, b"mounted")
        os.close(mounted)
        while os.read(orders, 64):  # EOF: the test is done (or gone)
            pass
        status = 0
    finally:
        os._exit(status)


def _mounts(libc: ctypes.CDLL, mount_binfmt: bool) -> None:
    def mount(source: str, target: str, fstype: Optional[str], flags: int,
              data: Optional[str] = None) -> None:
        _libc_call(libc, f"mount {target}", libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
            data.encode() if data else None))

    nodev = MS_NOSUID | MS_NODEV
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    if os.path.isdir(NIX_VAR):  # before /proc is replaced: the host's folder
        os.makedirs(SOCKET_DIR, exist_ok=True)
        mount("tmpfs", SOCKET_DIR, "tmpfs", nodev, "mode=0755")
    mount("proc", "/proc", "proc", nodev | MS_NOEXEC)
    if mount_binfmt:
        mount("binfmt_misc", BINFMT_MISC, "binfmt_misc", nodev | MS_NOEXEC)


def _reap(_signum: int, _frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _only_fds(*keep: int) -> None:
    """Close every inherited file (another namespace's pipe, the test's captured output):
    a copy held here would keep it open for as long as this namespace lives."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
