"""The per-process lock on a project file: an exclusive flock on `<file>.lock` holding
the owner's pid, shared by all threads of the process and dropped by the OS when the
process dies (even by kill -9), so a crash never leaves the project locked.

The lock identifies the file itself (device and inode), not the name it was opened by: a
symlink and its target share one lock. Hard links are refused for writing by
`check_single_name`, because SQLite keeps the write-ahead log beside each *name*: two names
written at once are two logs for one database, and the file ends up "malformed" (seen with
`ln p.sqlite q.sqlite`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from dpo_engine.errors import ProjectLockedError


class ProcessLock:
    """One exclusive flock per project file per process, shared by its threads."""

    _held: dict[tuple[int, int], list] = {}  # (device, inode) -> [file object, users]
    _guard = threading.Lock()

    def __init__(self, path: Path):
        real = Path(os.path.realpath(path))
        st = real.stat()  # the caller creates the file first, so every name of it gives one key
        self.key = (st.st_dev, st.st_ino)
        self.first = False  # True for the opening that took the lock: no other opening in this process
        with self._guard:
            if self.key in self._held:
                self._held[self.key][1] += 1
                return
            self._held[self.key] = [self._take(real), 1]
            self.first = True

    @staticmethod
    def _take(path: Path):
        try:
            import fcntl
        except ImportError:  # Windows: SQLite's own locking still prevents corruption
            return None
        f = open(f"{path}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ProjectLockedError(
                f"{path} is open in another DPO Studio process ({holder}). Close it there, "
                "or open the project read-only.") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        return f

    def release(self) -> None:
        with self._guard:
            entry = self._held.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[self.key]
                if entry[0] is not None:
                    entry[0].close()  # closing drops the flock
        self.key = None


def check_single_name(path: Path) -> None:
    """Refuse to write a project file that has other hard-linked names (see the module docstring)."""
    links = path.stat().st_nlink
    if links > 1:
        raise ProjectLockedError(
            f"{path} has {links} names (hard links) for one file. SQLite keeps its write-ahead log beside "
            "each name, so writing through two names corrupts the project. Keep one name (delete the other "
            "links) or work on a copy (cp), then open it again; it can still be opened read-only.")
