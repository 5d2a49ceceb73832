"""Files at the edge: what is at a path binfmtd is pointed at, the one atomic writer, and
temp folders that a killed binfmtd does not leave behind.

An admin's --nix-conf may name a folder, a FIFO (open() would wait for a writer for ever),
a device (/dev/zero never ends), a dangling link or a file of gigabytes; --binfmt-misc may
name a file. Each is one line that says what is there and what was expected, never a
hang, a traceback or a read of the whole thing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import NamedTuple, Optional

from .errors import BinfmtdError

# The largest nix.conf or config.toml binfmtd reads: real ones are a few kilobytes.
MAX_BYTES = 1 << 20
SELINUX_XATTR = "security.selinux"
TEMP_SUFFIX = ".binfmtd"
# A temp file or folder this old was left by a binfmtd that died (kill -9, power loss),
# not by one still at work: every write, validation or doctor run ends within seconds.
ABANDONED_SECONDS = 60


class FileRead(NamedTuple):
    """A regular file's bytes, and what fstat said of it while it was open."""

    data: bytes
    stat: os.stat_result


def read_small_file(path: Path, hint: str, *, pipe_ok: bool = False) -> Optional[FileRead]:
    """The bytes of the regular file at `path` (or, with `pipe_ok`, of a pipe: `--config
    /dev/stdin`); None when nothing is there; BinfmtdError for anything else at the path,
    its message ending in `hint` (what belongs there)."""
    try:
        # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (then reads as
        # empty if none comes). O_NOCTTY: a terminal never becomes binfmtd's.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        _refuse_dangling(path, hint)
        return None
    except OSError as error:
        raise BinfmtdError(f"cannot read {path}: {error.strerror}") from error
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(fd)
        if not (stat.S_ISREG(found.st_mode) or (pipe_ok and stat.S_ISFIFO(found.st_mode))):
            raise BinfmtdError(f"{path} is {kind_of(found.st_mode)}, not a file: {hint}")
        os.set_blocking(fd, True)  # a pipe's writer may not have written yet
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise BinfmtdError(_too_large(path, hint))
    return FileRead(data, found)


def _too_large(path: Path, hint: str) -> str:
    return (f"{path} is larger than {MAX_BYTES // 1024} KiB, more than such a file ever "
            f"holds: {hint}")


def check_folder(path: Path, hint: str, *, must_exist: bool) -> None:
    """BinfmtdError unless `path` is a folder, or (unless `must_exist`) nothing at all."""
    mode = _mode_at(path, hint)
    if mode is None and must_exist:
        raise BinfmtdError(f"{path} does not exist: {hint}")
    if mode is not None and not stat.S_ISDIR(mode):
        raise BinfmtdError(f"{path} is {kind_of(mode)}, not a folder: {hint}")


def check_file(path: Path, hint: str, *, must_exist: bool, pipe_ok: bool = False) -> None:
    """BinfmtdError unless `path` is a regular file of a sane size (or, with `pipe_ok`, a
    pipe), or (unless `must_exist`) nothing yet; either way not under something that is
    not a folder."""
    parent = _mode_at(path.parent, hint)
    if parent is not None and not stat.S_ISDIR(parent):
        raise BinfmtdError(f"{path} is inside {path.parent}, which is {kind_of(parent)}, not a "
                           f"folder: {hint}")
    try:
        found = os.stat(path)
    except FileNotFoundError:
        _refuse_dangling(path, hint)
        if must_exist:
            raise BinfmtdError(f"{path} does not exist: {hint}") from None
        return
    except OSError as error:
        raise BinfmtdError(f"cannot look at {path}: {error.strerror}") from error
    if pipe_ok and stat.S_ISFIFO(found.st_mode):
        return
    if not stat.S_ISREG(found.st_mode):
        raise BinfmtdError(f"{path} is {kind_of(found.st_mode)}, not a file: {hint}")
    if found.st_size > MAX_BYTES:
        raise BinfmtdError(_too_large(path, hint))


def kind_of(mode: int) -> str:
    """What a file of this mode is, in words: 'a folder', 'a FIFO'."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISREG, "a file"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _mode_at(path: Path, hint: str) -> Optional[int]:
    """The mode of what is at `path`, links followed; None when nothing is there."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        _refuse_dangling(path, hint)
        return None
    except OSError as error:  # EACCES on a folder on the way, ENOTDIR, ELOOP
        raise BinfmtdError(f"cannot look at {path}: {error.strerror}") from error


def _refuse_dangling(path: Path, hint: str) -> None:
    """Nothing at `path`: fine, unless it is a link to nothing (someone meant something)."""
    if os.path.islink(path):
        raise BinfmtdError(f"{path} is a link to {os.readlink(path)}, which does not exist: "
                           f"{hint}")


def temp_folder(kind: str) -> str:
    """A new temp folder for this process: binfmtd-KIND-NS-PID-XXXXXXXX, NS being its PID
    namespace. Folders that killed binfmtd processes left first go: those of a PID that
    is gone from this namespace, and any over a minute old."""
    import tempfile  # only writers, doctor and a staged status pay for it

    parent = tempfile.gettempdir()
    prefix = f"binfmtd-{kind}-"
    namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    for entry in os.scandir(parent):
        if entry.name.startswith(prefix) and _abandoned(entry, prefix, namespace):
            remove_folder(entry.path)
    return tempfile.mkdtemp(prefix=f"{prefix}{namespace}-{os.getpid()}-", dir=parent)


def _abandoned(entry: os.DirEntry[str], prefix: str, namespace: str) -> bool:
    owner_namespace, _, rest = entry.name[len(prefix):].partition("-")
    pid = rest.partition("-")[0]
    try:
        if time.time() - entry.stat(follow_symlinks=False).st_mtime > ABANDONED_SECONDS:
            return True
    except OSError:
        return False
    return owner_namespace == namespace and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_folder(path: str) -> None:
    """Remove a temp folder and all in it, whatever is left of it."""
    import shutil  # only what made a temp folder pays for it

    shutil.rmtree(path, ignore_errors=True)


# --- the one writer of nix.conf (and of binfmt.d lines) ----------------------------------


def replace_file(path: Path, text: str) -> bool:
    """Replace the file atomically with `text`; False (and no write) when it is unchanged.

    A symlinked nix.conf is written through: the link stays, its target is replaced.
    The temp file is created O_EXCL beside the target, gets the old file's mode,
    owner and SELinux label, is fsynced, renamed over the target, and the folder is
    fsynced, so a crash leaves either the whole old or the whole new file.
    """
    target = Path(os.path.realpath(path))
    data = text.encode("utf-8", "surrogateescape")
    try:
        if target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    except OSError as error:
        raise BinfmtdError(f"cannot read {target}: {error.strerror}") from error
    try:
        _replace(target, data)
    except OSError as error:
        raise BinfmtdError(
            f"cannot write {target}: {error.strerror}; the old file is unchanged"
        ) from error
    return True


def _replace(target: Path, data: bytes) -> None:
    import tempfile  # writers only: `binfmtd status` never pays for it

    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    _remove_stale_temp_files(target)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX,
                                     dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            if old is None:
                os.fchmod(temp.fileno(), 0o644)
            else:
                os.fchmod(temp.fileno(), old.st_mode & 0o7777)
                os.fchown(temp.fileno(), old.st_uid, old.st_gid)
                _copy_selinux_label(target, temp.fileno())
            os.fsync(temp.fileno())
        os.replace(temp_name, target)
    except BaseException:
        _remove_quietly(temp_name)
        raise
    _fsync_folder(target.parent)


def _copy_selinux_label(source: Path, fd: int) -> None:
    try:
        label = os.getxattr(source, SELINUX_XATTR)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    os.setxattr(fd, SELINUX_XATTR, label)


def _remove_stale_temp_files(target: Path) -> None:
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if now - leftover.lstat().st_mtime > ABANDONED_SECONDS:
                leftover.unlink()


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
