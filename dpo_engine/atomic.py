"""Files and folders written whole or not at all.

A folder (a training checkpoint, an exported model) is written into a temporary sibling,
its manifest last (after every other file is on disk), and only then swapped into place by
two renames:

    <out>          the current folder  (its files + checkpoint.json, the manifest)
    .<out>.tmp-*   a folder being written: never loaded, removed on the next write
    .<out>.prev    the previous folder, only between the two renames

A kill at any moment leaves either `<out>` or `.<out>.prev` complete; `find_checkpoint`
takes whichever holds a valid manifest (moving `.prev` back), so every reader (resume,
`--model`, the model list, a project reopened after a crash) calls it first, and none reads
a folder whose manifest is missing or whose files do not match it. A single file is
written to `<out>.part` and renamed (`atomic_file`).

This is core (below the store): the store reconciles interrupted runs with it, and the
model loader recovers a folder left in `.prev` before loading.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from dpo_engine.errors import WriteError, storage_problem

MANIFEST = "checkpoint.json"  # written last: a folder without it is not complete
FORMAT = 1


def prev_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.prev"


def _tmp(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest if `folder` is complete (every listed file there, right size), else None."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        files = manifest["files"]
        items = files.items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for rel, size in items:
        path = Path(folder) / rel
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


def find_checkpoint(out: str | Path) -> Path | None:
    """The complete folder at `out`, recovering one left in `.prev` by a kill mid-swap."""
    out = Path(out)
    if read_manifest(out) is not None:
        return out
    prev = prev_folder(out)
    if read_manifest(prev) is not None:
        if out.exists():
            shutil.rmtree(out)  # an incomplete folder: the swap never finished
        os.replace(prev, out)
        return out
    return None


def _fsync_tree(folder: Path) -> dict[str, int]:
    """Flush every file under `folder` to disk; return {relative path: size}."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        files[path.relative_to(folder).as_posix()] = path.stat().st_size
    return files


def _write_manifest(folder: Path, info: dict) -> None:
    files = _fsync_tree(folder)
    tmp = folder / (MANIFEST + ".part")
    with open(tmp, "w") as fh:
        json.dump({"format": FORMAT, "written": time.time(), **info, "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)


def _remove_stale(out: Path) -> None:
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_checkpoint(out: str | Path, write: Callable[[Path], None], info: dict) -> Path:
    """Write a folder with `write(folder)` and swap it into `out` atomically.

    If `write` raises (or the process dies), `out` keeps the previous folder and no
    temporary folder is left behind.
    """
    out = Path(out).absolute()
    tmp = _tmp(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        find_checkpoint(out)  # finish a swap an earlier kill interrupted
        _remove_stale(out)
        tmp.mkdir()
        write(tmp)
        _write_manifest(tmp, info)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        why = storage_problem(exc, out.parent)
        if why:  # safetensors and torch wrap the OS error in their own types; say what it is
            raise WriteError(f"Could not save {out}: {why}. The previous checkpoint there (if any) is "
                             "intact.") from None
        raise
    prev = prev_folder(out)
    if out.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(out, prev)
    os.replace(tmp, out)
    shutil.rmtree(prev, ignore_errors=True)
    return out


@contextlib.contextmanager
def atomic_file(out: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `out`; on a clean exit it is flushed and renamed onto
    `out`, on any error removed (so `out` is the old file or the whole new one)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
