"""The managed nix.conf: reading it, which file holds the block, and whose file it is.
(files.replace_file writes it.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import BinfmtdError
from .files import read_small_file
from .nixconf import included_files

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
