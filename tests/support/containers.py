"""Debian trees of any generation, cached, booted with systemd in a user namespace of their own.

Stable API (the system, matrix and farm tiers build on it):

    tree = debian_tree("trixie", PACKAGES)            # cached under /var/tmp, built once
    with boot(tree, binds_ro={HOST_PATH: "/in/container"}) as machine:
        machine.mount_binfmt_misc()                  # a private, empty binfmt_misc
        machine.register(line); machine.unregister(name)
        machine.run(["systemctl", "is-active", "nix-daemon"], check=False)
        machine.run(argv, user="alice", env={"NIX_REMOTE": "daemon"})
        machine.copy_in(host_path, "/abs/path"); machine.read_text("/etc/nix/nix.conf")
        machine.wait_for(lambda: ..., timeout=30, what="...")   # a deadline, never a sleep
    # the container is powered off (or killed) here, whatever happened inside

`require_nspawn()` skips a test (fails it in CI) where this machine cannot build or boot one.

Why a user namespace of the container's own (`--private-users=0:65536`): since Linux 6.7
each user namespace may mount a binfmt_misc of its own. Inside the container it starts
empty, a registration made there is not listed on the host, and the host's handlers do not
apply inside. A test therefore never reads or changes the host's binfmt_misc and is never
helped by it. The identity map (0..65535 inside = 0..65535 outside) with
`--private-users-ownership=off` boots the cached tree as it is: no chown, no idmapped mount.

Why `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`: this host has a cgroup v1 hierarchy; without it
a booted systemd in its own user namespace cannot create /init.scope, and sid's systemd
refuses the legacy hierarchy outright (../shared/FACTS.md).

Why `--volatile=overlay`: the cached tree is the read-only lower layer and every write goes
to a tmpfs that ends with the container, so a test never changes the cache.

Why `--register=no --keep-unit`: the host has neither systemd-machined nor a system bus.
Commands run through `nsenter -t <container PID 1> -a`, which enters every namespace of the
container's systemd, including its user namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Callable

from tests.support.kernel import BINFMT_MISC, REGISTER_PROGRAM, entry_name
from tests.support.parts import require
from tests.support.waiting import until

CACHE = Path("/var/tmp")
BOOT_TIMEOUT = 60.0  # generous: two cores shared with other test runs
STOP_TIMEOUT = 20.0
DEBOOTSTRAP_TIMEOUT = 1200.0
STAMP = ".binfmtd-tree.stamp"  # inside the tree; written last, before the rename
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_ENV = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "TERM": "dumb",
                 "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
UID_RANGE = 65536  # the container's users 0..65535 are the host's 0..65535


class Unavailable(RuntimeError):
    """This machine cannot provide a tree (no debootstrap, no mirror, a failed build)."""


class BootFailed(RuntimeError):
    """The container did not come up: nspawn refused, exited, or systemd never settled."""


class CommandFailed(subprocess.CalledProcessError):
    """A command in the container failed; unlike its base class, says what it printed."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class TimedOut(AssertionError):
    """A condition awaited with `Machine.wait_for` did not hold within its deadline."""


def require_nspawn() -> None:
    """Skip (in CI: fail) unless this machine can build a tree and boot it: root, nspawn,
    debootstrap and nsenter."""
    require(os.geteuid() == 0, "booting a Debian tree needs root (debootstrap, systemd-nspawn)")
    for tool, package in (("systemd-nspawn", "systemd-container"),
                          ("debootstrap", "debootstrap"), ("nsenter", "util-linux")):
        require(shutil.which(tool) is not None, f"{tool} not found (apt-get install {package})")


# --- trees ------------------------------------------------------------------------------


def tree_key(suite: str, packages: Sequence[str]) -> str:
    """What names a cached tree: the suite and its sorted package list (any change rebuilds)."""
    return f"suite {suite}\nvariant minbase\npackages {','.join(sorted(set(packages)))}\n"


def tree_path(suite: str, packages: Sequence[str]) -> Path:
    """Where the tree for (suite, packages) lives: a hash of the key in the folder name."""
    digest = hashlib.sha256(tree_key(suite, packages).encode()).hexdigest()[:12]
    return CACHE / f"binfmtd-{suite}-{digest}"


def is_stamped(path: Path, key: str) -> bool:
    """True when the cached folder at `path` is complete and made from `key` (its stamp)."""
    stamp = path / STAMP
    return stamp.is_file() and stamp.read_text() == key


def is_built(suite: str, packages: Sequence[str]) -> bool:
    """True when the tree for (suite, packages) is complete (its stamp says so)."""
    return is_stamped(tree_path(suite, packages), tree_key(suite, packages))


def debian_mirror() -> str:
    """The Debian archive this host's apt uses (any suite can be fetched from it)."""
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        for word in path.read_text().split():
            if word.startswith(("http://", "https://")) and word.rstrip("/").endswith("/debian"):
                return word
    raise Unavailable("no Debian archive (a URI ending in /debian) in /etc/apt/sources.list(.d)")


def remove_tree(path: Path) -> None:
    """Delete a (partial) tree, lazily unmounting what an interrupted debootstrap left."""
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve()) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def cached_build(path: Path, key: str, build: Callable[[Path], None]) -> Path:
    """`path`, made by `build(tmp)` unless a complete one made from `key` is there.

    Built in a temporary folder beside it and renamed into place with its stamp, written
    last, so an interrupted build is never used; a lock makes concurrent runs build it once.
    """
    if is_stamped(path, key):
        return path
    if os.geteuid() != 0:
        raise Unavailable(f"building {path} needs root")
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_stamped(path, key):  # another run built it while we waited
            return path
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            remove_tree(stale)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        try:
            build(tmp)
            (tmp / STAMP).write_text(key)
            remove_tree(path)  # an older build of the same key without a stamp
            tmp.rename(path)
        finally:
            remove_tree(tmp)
    return path


def debian_tree(suite: str, packages: Sequence[str]) -> Path:
    """The cached tree of `suite` with `packages` (debootstrap minbase), built if missing.
    Takes about a minute per suite when cold, nothing when warm."""
    included = ",".join(sorted(set(packages)))

    def build(tmp: Path) -> None:
        cmd = ["debootstrap", "--variant=minbase", f"--include={included}", suite, str(tmp),
               debian_mirror()]
        try:
            result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, timeout=DEBOOTSTRAP_TIMEOUT)
        except FileNotFoundError as error:
            raise Unavailable(
                f"debootstrap is missing (apt-get install debootstrap): {error}") from None
        if result.returncode != 0:
            log = tmp / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise Unavailable(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                              f"{result.stdout[-3000:]}\n{detail}")
        for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()  # a hundred MB no test needs
        (tmp / "etc/hostname").write_text(f"binfmtd-{suite}\n")  # debootstrap copies the host's

    return cached_build(tree_path(suite, packages), tree_key(suite, packages), build)


# --- a booted container -----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _is_namespace_init(pid: int) -> bool:
    """True for a process that is PID 1 in its own PID namespace (NSpid: <host pid> ... 1)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                return len(ids) > 1 and ids[-1] == "1"
    return False


def container_init(nspawn_pid: int) -> int | None:
    """The host PID of the container's systemd among nspawn's descendants, once it exists."""
    todo = _children(nspawn_pid)
    while todo:
        pid = todo.pop()
        if _is_namespace_init(pid):
            return pid
        todo += _children(pid)
    return None


def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


class Machine:
    """A booted container: run commands in it, copy files in, use its private binfmt_misc."""

    def __init__(self, name: str, nspawn: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.nspawn = nspawn
        self.log = log
        self.pid: int | None = None  # the container's systemd, as the host numbers it

    def console(self) -> str:
        """The end of what nspawn and the container's console printed (for failures)."""
        return self.log.read_text(errors="replace")[-4000:]

    def _prefix(self, user: str | None, env: Mapping[str, str] | None) -> list[str]:
        if self.pid is None:
            raise BootFailed(f"container {self.name} has no PID 1 (not booted)")
        home = "/root" if user is None else f"/home/{user}"
        variables = {**CONTAINER_ENV, "HOME": home, "USER": user or "root", **(env or {})}
        prefix = ["nsenter", "-t", str(self.pid), "-a", "--"]
        if user is not None:  # a login's groups (nix-users), no setuid helper needed
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return [*prefix, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in variables.items())]

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float = 120.0, user: str | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (as root, or as `user`) and return its result.

        The environment is CONTAINER_ENV plus `env`, nothing of the host's. With check=True
        a non-zero exit raises CommandFailed, which shows both outputs.
        """
        command = list(argv) if cwd is None else ["sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        result = subprocess.run(self._prefix(user, env) + command, input=input,
                                capture_output=True, encoding="utf-8", errors="replace",
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, list(argv), result.stdout, result.stderr)
        return result

    def read_text(self, path: str) -> str:
        """The text of `path` inside the container ('' when it does not exist)."""
        return self.run(["sh", "-c", 'cat "$0" 2>/dev/null || true', path]).stdout

    def write_text(self, path: str, text: str, mode: str = "644") -> None:
        """Write `text` to `path` inside the container (its folder is made first)."""
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$0")" && cat > "$0" && chmod "$1" "$0"',
                  path, mode], input=text)

    def copy_in(self, src: str | os.PathLike[str], dest: str) -> None:
        """Copy the host file or folder `src` to the absolute path `dest` in the container.

        A tar stream unpacked by the container's own tar resolves every path inside the
        container (writing through /proc/PID/root could follow a symlink out to the host).
        Files arrive owned by root, modes kept; a folder is merged into `dest`.
        """
        dest_path = Path(dest)
        if not dest_path.is_absolute():
            raise ValueError(f"copy_in needs an absolute destination, got {dest!r}")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(src, arcname=dest_path.name, filter=as_root)
        self.run(["mkdir", "-p", str(dest_path.parent)])
        result = subprocess.run(
            [*self._prefix(None, None), "tar", "-x", "-C", str(dest_path.parent), "-f", "-"],
            input=buffer.getvalue(), capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"copy_in {src} -> {dest} failed: {result.stderr.decode()}")

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Wait until `condition()` holds; return the seconds it took, or raise TimedOut."""
        start = time.monotonic()

        def held() -> bool:
            if condition():
                return True
            if self.nspawn.poll() is not None:
                raise BootFailed(f"{self.name} exited while waiting for: {what}\n"
                                 f"{self.console()}")
            return False

        if not until(held, timeout, interval=0.05):
            raise TimedOut(f"{self.name}: not within {timeout:.0f} s: {what}")
        return time.monotonic() - start

    # --- the container's own binfmt_misc ------------------------------------------------

    def mount_binfmt_misc(self) -> None:
        """Mount the container's private binfmt_misc (empty: only `register` and `status`).

        systemd-binfmt is skipped in a container (its /proc/sys is read-only), so nothing
        mounts it at boot. Mounted before a service starts, the service's own
        BindReadOnlyPaths=/proc/sys/fs/binfmt_misc binds this instance.
        """
        self.run(["sh", "-c", f"mountpoint -q {BINFMT_MISC} || "
                              f"mount -t binfmt_misc binfmt_misc {BINFMT_MISC}"])

    def binfmt_entries(self) -> list[str]:
        """The names registered in the container's binfmt_misc."""
        listing = self.run(["ls", "-1", BINFMT_MISC]).stdout.split()
        return sorted(set(listing) - {"register", "status"})

    def register(self, line: str) -> str:
        """Register `line` (":name:type:...") in the container's binfmt_misc; return its name.

        Written by the container's Python in one write(2), the host's own register_line()
        (tests/support/kernel.py), so the kernel decodes the \\x escapes (printf without a
        format string would write real NUL bytes: ../shared/FACTS.md). With the F flag the
        kernel opens the interpreter now, as the container sees it.
        """
        self.run(["python3", "-c", REGISTER_PROGRAM, BINFMT_MISC, line])
        return entry_name(line)

    def unregister(self, name: str) -> None:
        """Remove the entry `name` from the container's binfmt_misc (nothing if absent)."""
        self.run(["sh", "-c", '[ ! -e "$0" ] || echo -1 > "$0"', f"{BINFMT_MISC}/{name}"])

    # --- Nix where other installers put it ----------------------------------------------

    def move_nix(self, folder: str) -> None:
        """Move Debian's nix and nix-* programs to `folder`, off PATH, and point
        nix-daemon.service's ExecStart there, as the upstream installer lays them out."""
        self.run(["sh", "-ec", f"""
            mkdir -p {folder}
            for f in /usr/bin/nix /usr/bin/nix-*; do mv "$f" {folder}/; done
            # Its build hook lives in its own libexec, beside its nix (Nix 2.8 runs it).
            ln -sf {folder}/nix /usr/libexec/nix/build-remote
            ! command -v nix
        """])
        self.write_text("/etc/systemd/system/nix-daemon.service.d/moved.conf",
                        f"[Service]\nExecStart=\nExecStart=@{folder}/nix-daemon nix-daemon "
                        "--daemon\n")
        self.run(["systemctl", "daemon-reload"])

    # --- the end ------------------------------------------------------------------------

    def stop(self) -> None:
        """Power the container off; kill its systemd if it does not stop within STOP_TIMEOUT.

        SIGTERM makes nspawn ask systemd for an orderly poweroff. SIGKILL goes to the
        container's PID 1, which takes its whole PID namespace with it; then to nspawn.
        Every mount of the container lives in its own mount namespace and ends with it.
        """
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                if self.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                try:
                    self.nspawn.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait(STOP_TIMEOUT)
        if self.pid is not None and _is_namespace_init(self.pid):  # must not outlive nspawn
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _wait_until_booted(machine: Machine, timeout: float) -> str:
    """Wait for `systemctl is-system-running` to say running or degraded; return which."""
    state = "no PID 1 yet"

    def settled() -> bool:
        nonlocal state
        if machine.nspawn.poll() is not None:
            raise BootFailed(f"systemd-nspawn exited with {machine.nspawn.returncode} while "
                             f"booting:\n{machine.console()}")
        if machine.pid is None:
            machine.pid = container_init(machine.nspawn.pid)
        if machine.pid is None:
            return False
        result = machine.run(["systemctl", "is-system-running"], check=False, timeout=30)
        state = result.stdout.strip() or result.stderr.strip() or "?"
        return state in ("running", "degraded")

    try:
        machine.wait_for(settled, timeout, "systemd reaches running or degraded")
    except TimedOut as error:
        raise BootFailed(f"{error} (last state: {state}):\n{machine.console()}") from None
    return state


def nspawn_argv(tree: Path, name: str, binds_ro: Mapping[str, str],
                network_namespace: str | None = None) -> list[str]:
    """The systemd-nspawn command line that boots `tree` (see the module's docstring).

    network_namespace: a path such as /run/netns/NAME (ip netns add) the container runs in
    instead of a private network of its own, so that containers can reach each other.
    nspawn is started in it (nsenter --net) rather than given --network-namespace-path:
    nspawn joins that path from inside the container's new user namespace, which does not
    own the namespace, and fails with "Failed to join network namespace: Operation not
    permitted" (systemd 252).
    """
    network = ["--private-network"] if network_namespace is None else []
    enter = [] if network_namespace is None else ["nsenter", f"--net={network_namespace}", "--"]
    argv = [*enter, "systemd-nspawn", "--directory", str(tree), "--volatile=overlay",
            f"--private-users=0:{UID_RANGE}", "--private-users-ownership=off",
            "--boot", "--register=no", "--keep-unit", *network,
            "--console=read-only", "--machine", name]
    argv += [f"--bind-ro={source}:{dest}" for source, dest in binds_ro.items()]
    return argv


@contextlib.contextmanager
def boot(tree: Path, *, binds_ro: Mapping[str, str] | None = None,
         timeout: float = BOOT_TIMEOUT, name: str | None = None,
         network_namespace: str | None = None) -> Iterator[Machine]:
    """Boot `tree` (an overlay over it) and yield a Machine once systemd has settled.

    binds_ro maps host paths to container paths, bound read-only (files or folders; the
    files must be readable by root of the container's user namespace, i.e. by the host's
    root). network_namespace: see nspawn_argv (default: a private network). The container
    is powered off, or killed, on exit, also when booting failed.
    """
    name = name or f"binfmtd-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    with tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        try:
            nspawn = subprocess.Popen(
                nspawn_argv(tree, name, binds_ro or {}, network_namespace),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)  # a Ctrl-C in pytest must not reach nspawn first
        except FileNotFoundError as error:
            log_path.unlink()
            raise BootFailed(f"cannot start systemd-nspawn (systemd-container): {error}") from None
    machine = Machine(name, nspawn, log_path)
    try:
        _wait_until_booted(machine, timeout)
        yield machine
    finally:
        machine.stop()
        log_path.unlink(missing_ok=True)
