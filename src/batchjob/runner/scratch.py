"""A job's private TMPDIR: empty when the job starts, emptied when it ends.

A worker slot keeps one directory for all the jobs it runs, one after the other, instead of
making and removing one per job: on ext4, each new directory's inode is searched for past
the inodes removed in the last seconds (`recently_deleted`), and with a directory removed
per job that search cost more CPU than anything else in a short job's start. The job sees
the same thing either way: a directory of its own, empty, gone with the slot.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path


class TmpdirUnavailable(OSError):
    """The temporary directory's root is missing, read-only or full."""


class PrivateTmp:
    """One directory at a time under `root` (the system's temporary directory by default),
    made when first asked for: where it cannot be made, the job that needs it fails to start
    with the reason, and the worker goes on."""

    def __init__(self, prefix: str = "batchjob-", root: Path | None = None) -> None:
        self._prefix, self._root = prefix, root
        self._path: Path | None = None
        self._identity = (0, 0)

    @property
    def path(self) -> Path:
        """The directory; raises OSError when it cannot be made."""
        if self._path is None:
            try:
                self._path = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._root))
            except OSError as exc:
                root = self._root or tempfile.gettempdir()
                why = f"cannot make the job's TMPDIR in {root}: {exc.strerror or exc}"
                raise TmpdirUnavailable(why) from exc
            made = os.lstat(self._path)
            self._identity = (made.st_dev, made.st_ino)
        return self._path

    def reset(self) -> None:
        """Empty it for the next job; what the job made unremovable or put in its place is
        swept aside, and the next job gets a new directory."""
        if self._path is None:
            return
        try:
            if self._is_ours(self._path):
                with os.scandir(self._path) as listing:
                    entries = list(listing)
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                return
        except OSError:
            pass
        self.remove()

    def remove(self) -> None:
        path, self._path = self._path, None
        if path is not None:
            remove_scratch(path)

    def _is_ours(self, path: Path) -> bool:
        """Still the directory made here, not one the job removed and replaced (or a link)."""
        found = os.lstat(path)
        return stat.S_ISDIR(found.st_mode) and (found.st_dev, found.st_ino) == self._identity


def remove_scratch(path: Path) -> None:
    """Remove a TMPDIR with what is in it; a link or file found in its place is unlinked,
    never followed."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
