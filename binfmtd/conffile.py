"""Read and write the managed nix.conf. The one function that writes it lives here."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from typing import Optional

from .errors import BinfmtdError
from .files import read_small_file
from .nixconf import included_files

SELINUX_XATTR = "security.selinux"
TEMP_SUFFIX = ".binfmtd"
# A temp file this old was left by a writer that died (kill -9, power loss), not by one
# still writing: every write finishes within seconds.
STALE_TEMP_SECONDS = 60
DETERMINATE_CUSTOM_FILE = "nix.custom.conf"
OWN_FILE = "binfmtd.conf"  # `!include binfmtd.conf` in a templated nix.conf
NIX_STORE = "/nix/store/"


NIX_CONF_HINT = "a nix.conf belongs there (Nix reads /etc/nix/nix.conf)"


def read_conf_text(path: Path) -> Optional[str]:
    """The file's text (bytes kept through surrogateescape), None when it does not exist."""
    found = read_small_file(path, NIX_CONF_HINT)
    return None if found is None else found.data.decode("utf-8", "surrogateescape")


def foreign_owner(path: Path) -> Optional[str]:
    """Why `path` is not binfmtd's to write, None when it is.

    A nix.conf that resolves into the Nix store belongs to whatever built it (NixOS,
    home-manager, system-manager): writing through the link would change a store path
    in place, and the manager's next activation would drop the change anyway. A file
    with no write bit at all says the same of some other manager.
    """
    real = os.path.realpath(path)
    if real.startswith(NIX_STORE):
        return f"belongs to the Nix store ({real})"
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        raise BinfmtdError(f"cannot read {path}: {error.strerror}") from error
    if not mode & 0o222:
        return f"is read-only (mode {mode & 0o7777:04o}), so something else manages it"
    return None


def managed_file(main_conf: Path, main_text: Optional[str], target: str) -> Path:
    """Which file holds the block.

    binfmtd.conf where nix.conf includes it: a nix.conf that configuration management
    templates loses the block on every run, so the template includes a file of binfmtd's
    own instead. Else nix.custom.conf where nix.conf includes it (Determinate Nix), else
    nix.conf itself.
    """
    if target != "auto":
        return Path(target)
    folder = main_conf.parent
    included = {os.path.normpath(folder / name) for name in included_files(main_text or "")}
    for name in (OWN_FILE, DETERMINATE_CUSTOM_FILE):
        if str(folder / name) in included:  # however it is spelled: ./name, /etc/nix/name
            return folder / name
    return main_conf


def write_conf_text(path: Path, text: str) -> bool:
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
            if now - leftover.lstat().st_mtime > STALE_TEMP_SECONDS:
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
