"""Boot a Debian tree under systemd-nspawn and run commands inside it.

Why nspawn: binfmtd is a systemd service that restarts nix-daemon through systemctl; only
a booted systemd proves the unit file, sd_notify and `systemctl try-restart` work. The
host's PID 1 is not systemd, a VM with KVM hangs here, and nspawn boots in about a second.

Why these choices (measured on Debian 12, systemd 252, as root in a container):
- `--register=no --keep-unit`: there is no systemd-machined and no system bus on the host;
  without --keep-unit nspawn fails with "Failed to open system bus".
- `--volatile=overlay`: the cached tree is the read-only lower layer, every write goes to
  a tmpfs that disappears with the container, so tests never change the cache and need no
  copy of it (the host filesystem has no reflinks or btrfs snapshots for --ephemeral).
- `--private-network`: nothing under test needs a network; the container cannot touch
  the host's.
- Commands run through `nsenter -t <container PID 1> -a`: without machined there is no
  `machinectl shell` or `systemd-run -M`; entering every namespace of PID 1 puts the
  command in the container's mount, PID, UTS, IPC and network namespaces.
- The host's binfmt_misc registrations apply inside (binfmt_misc is per user namespace and
  the container has none of its own), so running foreign binaries needs no mount inside.
  Listing them does: the container's /proc/sys/fs/binfmt_misc is an empty folder of its
  own /proc. `booted(..., host_binfmt_misc=True)` binds the host's mount there, read-only.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from hostguard import SYSTEM_PREFIX, mounted_host_binfmt_misc, unregister_host

# One home for what booting a tree needs, shared with the matrix and farm tiers.
from tests.booted import BootFailed, CommandFailed, as_root, container_init

BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
CONTAINER_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "TERM=dumb",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
)

BINFMT_MISC = "/proc/sys/fs/binfmt_misc"
HOST_BINFMT_MISC = "/run/host-binfmt_misc"  # in the container
TIMINGS: list[tuple[str, float]] = []  # printed at the end of the pytest run (conftest.py)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Record and print how long a step took, so slow steps show up in every run."""
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - start
        TIMINGS.append((label, seconds))
        print(f"timing: {label}: {seconds:.3f} s", flush=True)


class Machine:
    """A booted container: run commands in it and copy files into it."""

    def __init__(self, name: str, nspawn: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.nspawn = nspawn
        self.log = log
        self.pid: int | None = None

    def console(self) -> str:
        """What nspawn and the container's console printed (for failure messages)."""
        return self.log.read_text(errors="replace")[-4000:]

    def _prefix(self) -> list[str]:
        if self.pid is None:
            raise RuntimeError(f"container {self.name} has no PID 1 (not booted)")
        return ["nsenter", "-t", str(self.pid), "-a", "--", "/usr/bin/env", "-i", *CONTAINER_ENV]

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
        quiet: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container and return its result (text, stdout and stderr).

        With check=True a non-zero exit raises CommandFailed, which shows both outputs.
        """
        start = time.monotonic()
        result = subprocess.run(
            self._prefix() + list(argv),
            input=input,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )
        seconds = time.monotonic() - start
        if not quiet:
            label = f"run {' '.join(argv)}"
            TIMINGS.append((label, seconds))
            print(f"timing: {label}: {seconds:.3f} s -> exit {result.returncode}", flush=True)
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, list(argv), result.stdout, result.stderr)
        return result

    def copy_in(self, src: str | os.PathLike[str], dest: str) -> None:
        """Copy the host file or folder `src` to the absolute path `dest` in the container.

        A tar stream unpacked by the container's own tar resolves every path inside the
        container; writing through /proc/PID/root would follow absolute symlinks out to
        the host. Files arrive owned by root, modes kept; a folder is merged into `dest`.
        """
        dest_path = Path(dest)
        if not dest_path.is_absolute():
            raise ValueError(f"copy_in needs an absolute destination, got {dest!r}")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(src, arcname=dest_path.name, filter=as_root)
        parent = str(dest_path.parent)
        self.run(["mkdir", "-p", parent], quiet=True)
        result = subprocess.run(
            [*self._prefix(), "tar", "-x", "-C", parent, "-f", "-"],
            input=buffer.getvalue(),
            capture_output=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"copy_in {src} -> {dest} failed: {result.stderr.decode()}")

    def wait_until_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait for `systemctl is-system-running` to say running or degraded; return it."""
        deadline = time.monotonic() + timeout
        state = "no PID 1 yet"
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise BootFailed(
                    f"systemd-nspawn exited with {self.nspawn.returncode} while booting:\n"
                    f"{self.console()}"
                )
            if self.pid is None:
                self.pid = container_init(self.nspawn.pid)
            if self.pid is not None:
                result = self.run(["systemctl", "is-system-running"], check=False, quiet=True)
                state = (result.stdout.strip() or result.stderr.strip()) or "?"
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.05)
        raise BootFailed(
            f"container did not reach running/degraded within {timeout:.0f} s "
            f"(last state: {state}):\n{self.console()}"
        )

    def stop(self) -> None:
        """Power the container off; kill it if it does not stop within STOP_TIMEOUT.

        SIGTERM to nspawn makes it send SIGRTMIN+3 to systemd (an orderly poweroff).
        SIGKILL goes to the container's PID 1, which takes its whole PID namespace with it;
        killing only nspawn would leave the container running without a parent.
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
                    self.nspawn.wait()
        if self.pid is not None:  # PID 1 outliving nspawn must not happen; make sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


@contextlib.contextmanager
def host_registration(tree: Path, line: str) -> Iterator[str]:
    """Register `line` in the HOST's binfmt_misc and yield its name; the entry is removed
    again whatever happens. Names start with binfmtd-test-system-: these tests share the
    host's instance with the host's own handlers (a booted systemd cannot have its own
    here) and touch nothing else.

    The F flag makes the kernel open the interpreter at registration, resolved from the
    writer's root: the writer runs chrooted into the Debian tree, which has the emulator.
    The line goes out in one write(2) to the register file opened on the host.
    """
    name = line.split(":")[1]
    assert name.startswith(SYSTEM_PREFIX), name
    with mounted_host_binfmt_misc() as folder:
        unregister_host(name)  # left over by an interrupted run
        try:
            fd = os.open(folder / "register", os.O_WRONLY)
            try:
                write_line = "import os, sys; os.write(1, sys.argv[1].encode())"
                subprocess.run(
                    ["chroot", str(tree), "/usr/bin/python3", "-c", write_line, line],
                    stdout=fd,
                    check=True,
                )
            finally:
                os.close(fd)
            assert (folder / name).read_text().startswith("enabled\n")
            yield name
        finally:
            unregister_host(name)
        assert not (folder / name).exists()


@contextlib.contextmanager
def booted(tree: Path, overlay: bool = True, host_binfmt_misc: bool = False) -> Iterator[Machine]:
    """Boot `tree` with systemd and yield a Machine once systemd has settled.

    overlay=False boots the tree itself, writable: only for preparing a tree on purpose.
    host_binfmt_misc=True shows the host's binfmt_misc, read-only, at the container's
    /proc/sys/fs/binfmt_misc from boot on, as a host's own mount would be (mounted on the
    host first if it was not, and unmounted again after).
    The container is always powered off (or killed) on exit, also when booting failed.
    """
    with contextlib.ExitStack() as stack:
        if host_binfmt_misc:
            stack.enter_context(mounted_host_binfmt_misc())
        yield stack.enter_context(_boot(tree, overlay, host_binfmt_misc))


@contextlib.contextmanager
def _boot(tree: Path, overlay: bool, host_binfmt_misc: bool) -> Iterator[Machine]:
    name = f"binfmtd-test-{uuid.uuid4().hex[:8]}"
    cmd = [
        "systemd-nspawn",
        "--boot",
        "--directory",
        str(tree),
        "--machine",
        name,
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--console=read-only",
    ]
    if overlay:
        cmd.append("--volatile=overlay")
    if host_binfmt_misc:
        # nspawn resolves the source of a bind under /proc inside the container (measured:
        # --bind-ro=/proc/sys/fs/binfmt_misc binds the container's own empty folder), so
        # the host's mount goes to /run first and from there over the empty folder.
        # Read-only, and systemd-binfmt masked: the host owns its registrations (at boot the
        # container's systemd-binfmt would flush them all and fail on the read-only mount).
        cmd += [
            f"--bind-ro={BINFMT_MISC}:{HOST_BINFMT_MISC}",
            f"--bind-ro={HOST_BINFMT_MISC}:{BINFMT_MISC}",
            "--bind-ro=/dev/null:/etc/systemd/system/systemd-binfmt.service",
        ]
    with tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        start = time.monotonic()
        try:
            nspawn = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not reach nspawn first
            )
        except FileNotFoundError as err:
            raise BootFailed(f"cannot start systemd-nspawn: {err}") from err
    machine = Machine(name, nspawn, log_path)
    try:
        state = machine.wait_until_booted()
        seconds = time.monotonic() - start
        TIMINGS.append((f"boot to {state}", seconds))
        print(f"timing: boot {name} to {state}: {seconds:.3f} s", flush=True)
        yield machine
    finally:
        with timed("poweroff"):
            machine.stop()
        log_path.unlink(missing_ok=True)


def install_binfmtd(machine: Machine, deb: os.PathLike[str]) -> None:
    """Install the project's .deb into the container as a user would (dpkg -i; its
    dependencies are in the tree), enabled but not started, so that a test configures it
    first: a policy-rc.d that says 101 is Debian's way to install without starting."""
    machine.copy_in(Path(deb), "/tmp/binfmtd.deb")
    machine.run(["sh", "-c", "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && "
                             "chmod 755 /usr/sbin/policy-rc.d"])
    try:
        machine.run(["dpkg", "-i", "/tmp/binfmtd.deb"])
    finally:
        machine.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
