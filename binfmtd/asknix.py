"""Ask Nix what a nix.conf means: as it stands (Nix reads it in place), or as it would be
with binfmtd's change (Nix reads a staged copy), so that a file Nix rejects is never
written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .conffile import managed_file, read_conf_text
from .errors import BinfmtdError
from .files import remove_folder, temp_folder
from .nixconf import INCLUDE_KEYS, NIX_WHITESPACE
from .nixtool import NixReading, Staged, find_nix, read_in_place

if TYPE_CHECKING:
    from .config import Config
    from .host import Host


def ask_nix(host: Host, config: Config) -> Optional[NixReading]:
    """Nix's own reading of nix.conf as it is now, with Nix's version, under way; None
    where Nix is not installed. Started as soon as the paths are known, so that Nix's two
    runs overlap binfmtd's own reading of binfmt_misc."""
    if host.nix_conf.name == "nix.conf":
        reading = read_in_place(str(host.nix_conf))
    else:
        reading = _read_staged(host, config)
    if reading is not None:
        reading.ask_version()
    return reading


def _read_staged(host: Host, config: Config) -> Optional[NixReading]:
    """A nix.conf by another name: Nix reads a copy named nix.conf in a temp folder."""
    nix = find_nix()
    if nix is None:
        return None
    main_text = read_conf_text(host.nix_conf)
    managed = managed_file(host.nix_conf, main_text, config.nix_conf_target)
    text = main_text if managed == host.nix_conf else read_conf_text(managed)
    return start_reading(nix, host.nix_conf, managed, text or "", main_text or "")


def validate_candidate(
    nix: str, main_conf: Path, managed: Path, candidate: str, main_text: str
) -> dict[str, str]:
    """Nix's effective settings with `candidate` in place of `managed`; BinfmtdError if rejected."""
    return start_reading(nix, main_conf, managed, candidate, main_text).result()



def start_reading(nix: str, main_conf: Path, managed: Path, text: str,
                  main_text: str) -> NixReading:
    """Ask Nix about the files as they would be with `text` in `managed`.

    Nix reads nix.conf in NIX_CONF_DIR and resolves each include against the folder of the
    file that includes it, so a copy of nix.conf alone would lose every relative include.
    The temp folder gets a copy of nix.conf and of every file it reaches through includes,
    each include pointing at its copy, `text` standing in for `managed`; Nix's messages
    name the real files again.
    """
    folder = temp_folder("validate")
    try:
        stager = _Stager(folder, str(managed), text)
        stager.copy(str(main_conf), text if managed == main_conf else main_text, "nix.conf")
        # The folder last: a copy's path is replaced before the folder it lies in.
        names = {**stager.names, folder: str(main_conf.parent)}
        return NixReading(nix, folder, staged=Staged(folder, names))
    except BaseException:
        remove_folder(folder)
        raise


class _Stager:
    """Copies a nix.conf and what it includes into one folder, includes pointing inside."""

    def __init__(self, folder: str, managed: str, text: str) -> None:
        self.folder, self.managed, self.text = folder, managed, text
        self.names: dict[str, str] = {}  # copy -> real
        self._copies: dict[str, str] = {}  # real -> copy

    def copy(self, real: str, text: Optional[str], name: str) -> str:
        """Write `text` (None: the file is missing) as the copy of `real`; its path."""
        copy = os.path.join(self.folder, name)
        self.names[copy], self._copies[real] = real, copy
        if text is None:
            return copy  # not written: Nix finds it missing, as it would the real one
        lines = text.split("\n")
        for number, line in enumerate(lines):
            include = _include_line(line)
            if include is not None:
                keyword, target = include
                where = os.path.normpath(os.path.join(os.path.dirname(real), target))
                lines[number] = f"{keyword} {self._staged(where)}"
        _stage(copy, "\n".join(lines))
        return copy

    def _staged(self, real: str) -> str:
        """The copy that stands for `real`, made on first sight (a cycle reuses it, as
        Nix would loop over the real files)."""
        if real in self._copies:
            return self._copies[real]
        name = f"{len(self._copies)}-{os.path.basename(real)}"
        if os.path.realpath(real) == os.path.realpath(self.managed):
            return self.copy(real, self.text, name)
        return self.copy(real, _included_text(real), name)


def _include_line(line: str) -> Optional[tuple[str, str]]:
    """(`include` or `!include`, the path) where Nix reads `line` as an include."""
    words = NIX_WHITESPACE.split(line.split("#", 1)[0].strip(" \t\r"))
    if words[0] in INCLUDE_KEYS and len(words) == 2:
        return words[0], words[1]
    return None


def _included_text(path: str) -> Optional[str]:
    """What Nix reads of an included file: None when it does not exist; nothing from a
    file it cannot read (Nix skips those without a word)."""
    if not os.path.lexists(path):
        return None
    try:
        return read_conf_text(Path(path)) or ""
    except BinfmtdError:
        return ""


def _stage(path: str, text: str) -> None:
    with open(path, "wb") as file:
        file.write(text.encode("utf-8", "surrogateescape"))
