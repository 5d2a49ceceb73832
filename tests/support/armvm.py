"""An emulated aarch64 machine: Debian trixie for arm64, booted by qemu-system-aarch64 (TCG).

    image = vm_image(deb)                       # cached in /var/tmp, built once per .deb
    report = boot(image, plan, cpu=WITH_AARCH32)   # one boot runs the whole plan
    report.result("x86_64-after")["output"]     # what the machine saw, for the host to assert

The tree: `mmdebstrap --mode=root --arch=arm64 --variant=essential` with the packages below,
run inside a private binfmt_misc (tests/support/kernel.py: a user, mount and PID namespace of
its own) where the host's own qemu-aarch64-static is registered for that namespace alone. apt
and the unpacking run on the host; only the maintainer scripts run emulated, and dpkg is
told not to fsync (mmdebstrap's default), so a cold tree takes minutes rather than the half
hour of `debootstrap --foreign` and its emulated second stage. Cached like the other trees:
/var/tmp/binfmtd-trixie-arm64-<hash of what goes in>, with a stamp written last.

The image: a copy of the tree with the tier's own few files (nix.conf, a user, the unit that
runs the plan), the project's .deb installed by `dpkg -i` in a chroot (emulated again: its
postinst enables binfmtd.service, which then starts by itself at boot), and
`mkfs.ext4 -d` made of it. Cached per tree, recipe and .deb: /var/tmp/binfmtd-arm64-vm-<hash>.

A boot: the image, read-only (`snapshot=on`), and a second, small disk, the payload: the
guest program (tests/aarch64/guest.py), the one wait (tests/support/waiting.py), the plan
(JSON: each step what to do, nothing to decide) and the files the plan uses. The image's
unit mounts it, runs the guest, which writes what it saw to out/result.json on that disk after
every step, and powers off. The host reads the file back with debugfs: every assertion is
the host's. A machine that never powers off within the deadline is killed, and the error
shows the end of its serial console.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

from tests.support.containers import (
    CACHE,
    STAMP,
    Unavailable,
    cached_build,
    debian_mirror,
    is_stamped,
    remove_tree,
)
from tests.support.kernel import QEMU_BINFMT, NamespaceError, PrivateBinfmt, binfmt_line
from tests.support.nix import DAEMON_CONF
from tests.support.parts import REPO, require

SUITE = "trixie"
ARCH = "arm64"
# What the machine holds: a booted systemd, Debian's Nix (2.26, socket-activated daemon),
# what the project's .deb depends on (python3-structlog, python3-systemd), Debian's arm64
# qemu-user (qemu-x86_64, qemu-i386) with qemu-user-binfmt's lines, and a kernel with its
# initrd (initramfs-tools) to boot. apt resolves the virtual packages debootstrap needed
# libdbi-perl for.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "nix-bin",
    "nix-setup-systemd",
    "python3",
    "python3-structlog",
    "python3-systemd",
    "qemu-user",
    "qemu-user-binfmt",
    "linux-image-arm64",
)
# Files no test reads, kept out of the tree: fewer files to unpack, copy and put on disk
# (qemu-user's other 30 emulators are 14 MB each).
EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*",
            "/usr/bin/qemu-*")
INCLUDED = ("/usr/bin/qemu-x86_64", "/usr/bin/qemu-i386")  # dpkg: later options win
TREE_TIMEOUT = 2400.0  # measured cold: see docs/development.md; generous for a loaded CI
IMAGE_SIZE = "4G"
USER = "alice"  # the machine's non-root Nix user (group nix-users)
PAYLOAD = "/run/payload"  # where the unit mounts the second disk
RESULT = "out/result.json"  # on the payload disk, written by the guest

# The machine as the FACTS measured it: -cpu max emulates pointer authentication, three times
# slower; pauth-impdef=on keeps it cheap. max has AArch32 at EL0 (armv7l runs natively);
# a64fx (Fujitsu A64FX) is AArch64 only at every exception level, as Apple's M cores and
# AmpereOne are.
WITH_AARCH32 = "max,pauth-impdef=on"
WITHOUT_AARCH32 = "a64fx"
BOOT_TIMEOUT = 900.0  # the whole plan, boot to poweroff; about 3 min measured


# --- the tree ---------------------------------------------------------------------------


def tree_key() -> str:
    """What names the cached tree: suite, architecture, how it is built and what is in it."""
    return (f"suite {SUITE}\narch {ARCH}\nmmdebstrap --variant=essential\n"
            f"packages {','.join(sorted(PACKAGES))}\nexcluded {' '.join(EXCLUDED)}\n"
            f"included {' '.join(INCLUDED)}\n")


def _named(prefix: str, key: str) -> Path:
    return CACHE / f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def tree_path() -> Path:
    return _named(f"binfmtd-{SUITE}-{ARCH}", tree_key())


def is_built() -> bool:
    """True when the arm64 tree is complete (its stamp says so)."""
    return is_stamped(tree_path(), tree_key())


@contextlib.contextmanager
def emulating_arm64() -> Iterator[PrivateBinfmt]:
    """A private namespace whose own binfmt_misc runs arm64 programs with the host's
    qemu-aarch64-static (Debian's line, F: the kernel opens it here, so a chroot needs no
    copy). The host's binfmt_misc is neither read nor changed."""
    if not Path(f"{QEMU_BINFMT}/aarch64-binfmt-P").exists():
        raise Unavailable("qemu-aarch64-static is missing (apt-get install qemu-user-static)")
    try:
        namespace = PrivateBinfmt().start()
    except NamespaceError as error:
        raise Unavailable(f"{error} (Linux >= 6.7 gives each user namespace a binfmt_misc)"
                          ) from None
    try:
        namespace.register(binfmt_line("binfmtd-arm64", f"{QEMU_BINFMT}/aarch64-binfmt-P"))
        yield namespace
    finally:
        namespace.stop()


def _run(argv: Sequence[str], what: str, timeout: float = 600.0) -> str:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", timeout=timeout, check=False)
    except FileNotFoundError as error:
        raise Unavailable(f"{what}: {error}") from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what}: not done within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise Unavailable(f"{what} failed ({done.returncode}):\n{done.stdout[-4000:]}")
    return done.stdout


def _build_tree(tmp: Path) -> None:
    if shutil.which("mmdebstrap") is None:
        raise Unavailable("mmdebstrap is missing (apt-get install mmdebstrap)")
    excluded = [*(f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDED),
                *(f"--dpkgopt=path-include={pattern}" for pattern in INCLUDED)]
    with emulating_arm64() as namespace:
        _run(namespace.argv(["mmdebstrap", "--mode=root", f"--arch={ARCH}",
                             "--variant=essential", f"--include={','.join(PACKAGES)}",
                             *excluded, "--aptopt=Acquire::Languages \"none\"",
                             SUITE, str(tmp), debian_mirror()]),
             f"mmdebstrap {SUITE} {ARCH}", TREE_TIMEOUT)


def arm64_tree() -> Path:
    """The cached arm64 tree, built on first use (Unavailable where it cannot be)."""
    return cached_build(tree_path(), tree_key(), _build_tree)


# --- the image --------------------------------------------------------------------------

RUNNER = "binfmtd-aarch64-tier.service"
RUNNER_UNIT = f"""\
[Unit]
Description=binfmtd's aarch64 tier: the plan on the second disk, then power off
# binfmtd.service is not pulled in: the package's own enablement starts it at boot.
After=binfmtd.service nix-daemon.socket

[Service]
Type=oneshot
TimeoutStartSec={BOOT_TIMEOUT:.0f}
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh -c 'mkdir -p {PAYLOAD} && mount /dev/vdb {PAYLOAD} && \\
    exec /usr/bin/python3 -u {PAYLOAD}/guest.py {PAYLOAD}'
ExecStopPost=/bin/sh -c 'sync; umount {PAYLOAD}; systemctl --no-block poweroff'

[Install]
WantedBy=multi-user.target
"""
def image_key(deb: Path) -> str:
    """What names a cached image: the tree's key, how it is made from the tree (this
    module's recipe and the files it writes) and the .deb's bytes."""
    recipe = inspect.getsource(_customize) + RUNNER_UNIT + DAEMON_CONF
    return (f"{tree_key()}recipe {hashlib.sha256(recipe.encode()).hexdigest()}\n"
            f"deb {hashlib.sha256(deb.read_bytes()).hexdigest()}\n")


class Image(NamedTuple):
    disk: Path
    kernel: Path
    initrd: Path


def _customize(root: Path, deb: Path, namespace: PrivateBinfmt) -> None:
    """The image's recipe, applied to a copy of the tree. systemd-binfmt is masked: it would
    register qemu-user-binfmt's lines at boot, and the plan registers them itself, so that
    "before" means before. nix.conf is the one every tier's daemon has (sandbox = true,
    sandbox-fallback = false, no substituters). binfmtd restarts nix-daemon at most every
    0.5 s rather than 10 s: a plan changes things a few seconds apart."""
    (root / "etc/hostname").write_text("binfmtd-arm64\n")
    # Not a first boot (an empty machine-id would make every boot one): a fixed identity.
    (root / "etc/machine-id").write_text(hashlib.sha256(b"binfmtd-arm64").hexdigest()[:32] + "\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw 0 1\n")
    units = root / "etc/systemd/system"
    (units / "systemd-binfmt.service").symlink_to("/dev/null")
    (root / "etc/nix/nix.conf").write_text(DAEMON_CONF)
    (units / RUNNER).write_text(RUNNER_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / RUNNER).symlink_to(f"/etc/systemd/system/{RUNNER}")
    shutil.copy(deb, root / "tmp/binfmtd.deb")

    def chroot(*argv: str) -> None:
        _run(namespace.argv(["chroot", str(root), *argv]), " ".join(argv))

    chroot("useradd", "--create-home", "--groups", "nix-users", USER)
    chroot("dpkg", "-i", "/tmp/binfmtd.deb")
    (root / "tmp/binfmtd.deb").unlink()
    config = root / "etc/binfmtd/config.toml"
    text = config.read_text()
    assert "#restart-interval-seconds = 10" in text, text
    config.write_text(text.replace("#restart-interval-seconds = 10",
                                   "restart-interval-seconds = 0.5"))


def _build_image(deb: Path) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        tree = arm64_tree()
        tmp.mkdir()
        root = tmp / "root"
        _run(["cp", "-a", "--reflink=auto", str(tree), str(root)], "copying the tree")
        (root / STAMP).unlink(missing_ok=True)
        with emulating_arm64() as namespace:
            _customize(root, deb, namespace)
        boot = root / "boot"
        kernel = max(boot.glob("vmlinuz-*"))
        shutil.copy(kernel, tmp / "vmlinuz")
        shutil.copy(boot / kernel.name.replace("vmlinuz", "initrd.img"), tmp / "initrd.img")
        _run(["mkfs.ext4", "-q", "-L", "binfmtd-arm64", "-d", str(root), str(tmp / "disk.img"),
              IMAGE_SIZE], "mkfs.ext4 -d")
        remove_tree(root)
    return build


def vm_image(deb: Path) -> Image:
    """The machine's disk, kernel and initrd, with `deb` installed; built once per .deb.
    Older images are removed when a new one is built (each holds a whole system)."""
    key = image_key(deb)
    path = _named("binfmtd-arm64-vm", key)
    if not is_stamped(path, key):
        for old in CACHE.glob("binfmtd-arm64-vm-*"):
            if old != path:
                remove_tree(old)
    cached_build(path, key, _build_image(deb))
    return Image(path / "disk.img", path / "vmlinuz", path / "initrd.img")


def required_image(deb: Path) -> Image:
    """vm_image(deb), or the test skipped (in CI: failed) with the reason it cannot be."""
    require(os.geteuid() == 0, "building the arm64 machine needs root (mmdebstrap, chroot)")
    require(shutil.which("qemu-system-aarch64") is not None,
            "qemu-system-aarch64 not found (apt-get install qemu-system-arm)")
    try:
        return vm_image(deb)
    except Unavailable as error:
        require(False, f"no arm64 machine: {error}")
        raise


# --- a program for the machine ------------------------------------------------------------

LOAD_ADDRESS = 0x400000


def _words(*words: int) -> bytes:
    return struct.pack("<" + "I" * len(words), *words)


def exec_program(target: str) -> bytes:
    """A static arm64 ELF program that execs `target` with its own arguments and
    environment, `target` in argv[0] (exit 127 when the exec fails).

    A stand-in for a binfmt_misc dispatcher (Fedora Asahi's binfmt-dispatcher), made
    here from a few words of machine code, as binfmtd's doctor makes its own programs:
    the kernel passes the dispatcher what it would pass the emulator, and it runs the
    emulator, which the sandbox must therefore see.
    """
    code = _words(
        0x10000160,  # adr  x0, target      (the string after these 11 instructions)
        0x910023E1,  # add  x1, sp, #8      argv
        0xF94003E3,  # ldr  x3, [sp]        argc
        0xF9000020,  # str  x0, [x1]        argv[0] = target
        0x8B030C22,  # add  x2, x1, x3, lsl #3
        0x91002042,  # add  x2, x2, #8      envp, after argv's NULL
        0xD2801BA8,  # mov  x8, #221        execve
        0xD4000001,  # svc  #0
        0xD2800FE0,  # mov  x0, #127
        0xD2800BA8,  # mov  x8, #93         exit
        0xD4000001,  # svc  #0
    ) + target.encode() + b"\0"
    header_size, phdr_size = 64, 56
    size = header_size + phdr_size + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, version 1
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 183, 1,  # ET_EXEC, EM_AARCH64
                                 LOAD_ADDRESS + header_size + phdr_size, header_size, 0, 0,
                                 header_size, phdr_size, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, LOAD_ADDRESS, LOAD_ADDRESS,  # PT_LOAD, R+X
                       size, size, 0x1000)
    return header + phdr + code


# --- a boot -------------------------------------------------------------------------------


class Report(NamedTuple):
    """What one boot left: the guest's results by step id, and the serial console."""

    results: dict[str, Any]
    console: str
    seconds: float

    def result(self, step: str) -> dict[str, Any]:
        """The result of step `step`; an AssertionError with the console's end if missing."""
        if step not in self.results:
            raise AssertionError(f"the machine reported no step {step!r} (it reported "
                                 f"{sorted(self.results)}); its console ended:\n"
                                 f"{self.console[-4000:]}")
        found: dict[str, Any] = self.results[step]
        return found


def payload_disk(folder: Path, plan: Sequence[Mapping[str, Any]],
                 files: Mapping[str, Path | bytes], image: Path) -> None:
    """The second disk: the guest, the one wait, the plan, and `files` (payload path ->
    a host file or bytes), made into an ext4 image at `image`."""
    (folder / "out").mkdir(parents=True)
    shutil.copy(REPO / "tests/aarch64/guest.py", folder / "guest.py")
    shutil.copy(REPO / "tests/support/waiting.py", folder / "waiting.py")
    (folder / "plan.json").write_text(json.dumps(list(plan), indent=1))
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copy(content, target)
        target.chmod(0o755)
    _run(["mkfs.ext4", "-q", "-L", "binfmtd-payload", "-d", str(folder), str(image), "64M"],
         "mkfs.ext4 (payload)")


def qemu_argv(image: Image, payload: Path, cpu: str) -> list[str]:
    """The machine as ../shared/FACTS.md measured it, with the payload as a second disk
    (the image is read-only: snapshot=on; the payload is written)."""
    # gic-version=3: a64fx's CPU interface is GICv3's; with virt's default GICv2 the
    # kernel's first read of it is an undefined instruction, and it oopses before any output.
    return ["qemu-system-aarch64", "-M", "virt,gic-version=3", "-cpu", cpu, "-smp", "2",
            "-m", "2048", "-nographic", "-nic", "none", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", "root=/dev/vda rw console=ttyAMA0 fsck.mode=skip quiet",
            "-drive", f"file={image.disk},format=raw,if=virtio,snapshot=on",
            "-drive", f"file={payload},format=raw,if=virtio"]


def read_result(payload: Path) -> dict[str, Any]:
    """out/result.json from the payload disk (debugfs: no mount needed); {} if none."""
    done = subprocess.run(["debugfs", "-R", f"cat /{RESULT}", str(payload)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return {}
    try:
        results: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {}
    return results


def boot(image: Image, plan: Sequence[Mapping[str, Any]], cpu: str,
         files: Mapping[str, Path | bytes], timeout: float = BOOT_TIMEOUT) -> Report:
    """Boot the machine once with `plan`; return what it reported once it powered off.

    Raises AssertionError, with the console's end, if it does not power off within
    `timeout` (it is killed) or reports nothing."""
    with tempfile.TemporaryDirectory(prefix="binfmtd-arm64-") as work:
        folder, payload, log = Path(work) / "payload", Path(work) / "payload.img", \
            Path(work) / "console.log"
        payload_disk(folder, plan, files, payload)
        start = time.monotonic()
        with open(log, "wb") as console:
            machine = subprocess.Popen(qemu_argv(image, payload, cpu), stdin=subprocess.DEVNULL,
                                       stdout=console, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            machine.wait(timeout)
        except subprocess.TimeoutExpired:
            machine.kill()
            machine.wait()
            raise AssertionError(
                f"the arm64 machine ({cpu}) did not power off within {timeout:.0f} s; its "
                f"console ended:\n{log.read_text(errors='replace')[-4000:]}") from None
        seconds = time.monotonic() - start
        text = log.read_text(errors="replace")
        results = read_result(payload)
    if not results:
        raise AssertionError(f"the arm64 machine ({cpu}) exited {machine.returncode} after "
                             f"{seconds:.0f} s and reported nothing; its console ended:\n"
                             f"{text[-4000:]}")
    return Report(results, text, seconds)


if __name__ == "__main__":
    # `python -m tests.support.armvm`: build (or find) the tree, as a run does in the
    # background from its start (tests/conftest.py).
    began = time.monotonic()
    cached = is_built()
    try:
        built = arm64_tree()
    except Unavailable as error:
        sys.exit(f"arm64 tree: {error}")
    print(f"{built} {'cached' if cached else 'built'} in {time.monotonic() - began:.1f} s")
