"""`chmod 000` for tests that run as root (who reads through any mode): the catalog's and the
run records' tests of unreadable folders."""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path


def deny_access(monkeypatch, folder: Path) -> None:
    """Make `folder` behave as after `chmod 000` for a user who is not root (the tests run as
    root, who reads through any mode): listing it, or reaching anything beneath it (stat, open,
    readlink), raises PermissionError; the folder's own stat still works, as it does for real.
    Every listing and file access of os, pathlib and json goes through these functions."""
    top = os.path.abspath(folder)

    def check(path, listing: bool) -> None:
        if path is None or isinstance(path, int):
            return
        p = os.path.abspath(os.fsdecode(path))
        if p.startswith(top + os.sep) or (listing and p == top):
            raise PermissionError(errno.EACCES, "Permission denied", p)

    for name, listing in (("scandir", True), ("listdir", True), ("stat", False), ("lstat", False),
                          ("open", False), ("readlink", False)):
        def fake(path=None, *args, _real=getattr(os, name), _listing=listing, **kw):
            check(path, _listing)
            return _real(*(() if path is None else (path,)), *args, **kw)
        monkeypatch.setattr(os, name, fake)
    real_open = builtins.open

    def fake_open(file, *args, **kw):
        check(file, False)
        return real_open(file, *args, **kw)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
