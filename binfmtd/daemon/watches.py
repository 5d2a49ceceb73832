"""What the daemon watches: binfmt_misc, and the folders of nix.conf and config.toml.

binfmt_misc raises no event for a new entry (only IN_MODIFY/IN_CLOSE_WRITE on `register`),
so any event in it counts. In the folders only the files binfmtd reads count, watched by
name because editors and configuration management replace files rather than write them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

from . import inotify
from .log import get_logger

BINFMT_EVENTS = (inotify.IN_MODIFY | inotify.IN_CLOSE_WRITE | inotify.IN_CREATE
                 | inotify.IN_DELETE | inotify.IN_ATTRIB | inotify.IN_ONLYDIR)
FOLDER_EVENTS = (inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM
                 | inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_ONLYDIR)


class Seen(NamedTuple):
    """What a batch of events means to the daemon."""

    relevant: bool = False  # reconcile soon
    config_changed: bool = False  # read config.toml again first


class Watches:
    """One inotify instance and the watches on it."""

    def __init__(self, binfmt_misc: Path, files: tuple[Path, ...]) -> None:
        self.binfmt_misc = binfmt_misc
        self.config_name = files[-1].name
        self._files = files
        self._inotify = inotify.Inotify()
        self._folders: dict[int, str] = {}  # wd -> folder
        self._binfmt_wd: Optional[int] = None
        self._names: set[str] = set()
        self._log = get_logger()

    @property
    def binfmt_watched(self) -> bool:
        return self._binfmt_wd is not None

    def fileno(self) -> int:
        return self._inotify.fileno()

    def close(self) -> None:
        self._inotify.close()

    def rewatch(self, managed: Optional[Path] = None) -> bool:
        """(Re)establish watches; True when binfmt_misc became watched now.

        `managed` is the file that holds the block when it is not nix.conf itself
        (nix.custom.conf under Determinate Nix).
        """
        became_watched = False
        if self._binfmt_wd is None and (self.binfmt_misc / "register").exists():
            self._binfmt_wd = self._watch(self.binfmt_misc, BINFMT_EVENTS)
            became_watched = self._binfmt_wd is not None
        files = (*self._files, managed) if managed is not None else self._files
        self._names = {f.name for f in files}
        watched = set(self._folders.values())
        for folder in {f.parent for f in files}:
            if str(folder) not in watched and folder.is_dir():
                self._watch(folder, FOLDER_EVENTS)
        return became_watched

    def read(self, *, failing: bool) -> Seen:
        """Read pending events; with `failing` (the last reconcile failed), any event in
        a watched folder counts, e.g. space freed beside a nix.conf that could not be
        written."""
        relevant = config_changed = False
        for event in self._inotify.read_events():
            if event.mask & inotify.IN_Q_OVERFLOW:
                self._log.warning("inotify.overflow")
                relevant = True
            elif event.mask & inotify.IN_IGNORED:
                self._forget(event.wd)
                relevant = True
            elif event.wd == self._binfmt_wd:
                relevant = True
            elif event.name in self._names:
                config_changed = config_changed or event.name == self.config_name
                relevant = True
            elif failing:
                relevant = True
        return Seen(relevant, config_changed)

    def unwatch_binfmt(self) -> None:
        """binfmt_misc vanished from its path while its inodes live on (mounted elsewhere):
        the watch would follow them, so drop it and wait for the path to be a mount again."""
        if self._binfmt_wd is not None:
            self._inotify.rm_watch(self._binfmt_wd)
            self._forget(self._binfmt_wd)

    def _watch(self, folder: Path, mask: int) -> Optional[int]:
        try:
            wd = self._inotify.add_watch(str(folder), mask)
        except OSError as error:
            self._log.warning("watch.failed", path=str(folder), error=error.strerror)
            return None
        self._folders[wd] = str(folder)
        return wd

    def _forget(self, wd: int) -> None:
        folder = self._folders.pop(wd, None)
        if wd == self._binfmt_wd:
            self._binfmt_wd = None
            self._log.warning("binfmt_misc.unwatched", path=folder,
                              reason="unmounted or gone; waiting for it to return")
