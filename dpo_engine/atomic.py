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
a folder whose manifest is missing or whose files do not match it. An export (a file or a
folder without a manifest) is written to a temporary sibling and renamed (`staged`); what an
export killed mid-write left (`.<name>.part-<pid>-*`) is removed by the next export to that name.

This is core (below the store): the store reconciles interrupted runs with it, and the
model loader recovers a folder left in `.prev` before loading.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from dpo_engine.errors import WriteError, storage_problem

CHECKPOINT_MANIFEST = "checkpoint.json"  # written last: a folder without it is not complete
FORMAT = 1


def prev_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.prev"


def _tmp(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest if `folder` is complete (every listed file there, right size), else None."""
    try:
        manifest = json.loads((Path(folder) / CHECKPOINT_MANIFEST).read_text())
        for rel, size in manifest["files"].items():
            path = Path(folder) / rel
            if not path.is_file() or path.stat().st_size != size:
                return None
    # RecursionError: a manifest nested too deeply for json; OSError: a folder it may not read
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
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
    tmp = folder / (CHECKPOINT_MANIFEST + ".part")
    with open(tmp, "w") as fh:
        json.dump({"format": FORMAT, "written": time.time(), **info, "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / CHECKPOINT_MANIFEST)


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs here (a signal 0 tests it and sends nothing); on Windows, where
    signal 0 is not a test, every process counts as alive, so nothing of a running export is removed."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def remove_stale_exports(output: Path) -> list[Path]:
    """Remove what an earlier export to `output` killed mid-write left beside it (`.<name>.part-<pid>-*`, and
    `.<name>.old-<pid>-*` once `output` is in place again); return what was removed. Only our own names, and
    only of a process that no longer runs: a concurrent export's files are its own. A kill between
    `staged`'s two renames leaves the previous export only in `.old-*`: it is moved back, not removed."""
    try:
        siblings = sorted(output.parent.iterdir())  # not glob: a name may hold [ or *
    except OSError:
        return []
    removed = []
    for kind in ("part", "old"):
        prefix = f".{output.name}.{kind}-"
        for stale in (p for p in siblings if p.name.startswith(prefix)):
            pid = stale.name[len(prefix):].split("-")[0]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not (output.exists() or output.is_symlink()):
                os.replace(stale, output)
                continue
            _remove(stale)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def staged(output: str | Path, as_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `output` (a file path, or a made folder) to write into; when
    the block ends it is flushed to disk and renamed into place. An existing `output` is moved
    aside first and removed only once the new one is in place. Any exception (a full disk, a
    cancel) removes the temporary path and leaves `output` as it was. The folder `output` goes in
    must exist (a missing one is an error, never made); what a killed earlier export to the same
    name left beside it is removed first."""
    output = Path(output)
    remove_stale_exports(output)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = output.parent / f".{output.name}.part-{tag}"
    if as_folder:
        tmp.mkdir()
    try:
        yield tmp
        if tmp.is_dir():
            _fsync_tree(tmp)
        else:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if output.exists() or output.is_symlink():
            old = output.parent / f".{output.name}.old-{tag}"
            os.replace(output, old)  # a folder cannot be renamed onto a non-empty folder
            try:
                os.replace(tmp, output)
            except BaseException:
                os.replace(old, output)
                raise
            _remove(old)
        else:
            os.replace(tmp, output)
    except BaseException:
        _remove(tmp)
        raise
