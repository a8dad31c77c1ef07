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


class PrivateTmp:
    """One directory at a time under `root` (the system's temporary directory by default)."""

    def __init__(self, root: Path | None = None, prefix: str = "batchjob-") -> None:
        self._root, self._prefix = root, prefix
        self.path = self._make()

    def reset(self) -> None:
        """Empty it for the next job; what the job made unremovable or put in its place is
        swept aside and a new directory made."""
        try:
            if self._is_ours():
                with os.scandir(self.path) as listing:
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
        self.path = self._make()

    def remove(self) -> None:
        try:
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                os.unlink(self.path)
        except OSError:
            pass

    def _make(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._root))
        made = os.lstat(path)
        self._identity = (made.st_dev, made.st_ino)
        return path

    def _is_ours(self) -> bool:
        """Still the directory made here, not one the job removed and replaced (or a link)."""
        found = os.lstat(self.path)
        return stat.S_ISDIR(found.st_mode) and (found.st_dev, found.st_ino) == self._identity
