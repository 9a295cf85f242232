"""Writing an export so that a failure leaves nothing under the chosen name.

    <parent>/.<name>.export-<pid>-<rand>   being written (a file or a folder); removed on any error
    <parent>/<name>                         appears only by one rename, once everything is on disk

Replacing an earlier export (`overwrite=True`) moves the old one aside first and removes it only
after the new one is in place, so a failure keeps the old export whole. What may be replaced is
decided before anything is written: never a project file (`dpo_engine.outputs.check_output_path`),
never the model being exported, never a folder holding a project or the model.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from dpo_engine.errors import ConfigError, DataError
from dpo_engine.outputs import SQLITE_MAGIC, check_output_path


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_export_target(output: str | Path, as_folder: bool, overwrite: bool,
                        inputs: Iterable[str | Path] = ()) -> Path:
    """The absolute output path if writing it destroys nothing unasked; else a clear error."""
    output = Path(output).expanduser().absolute()
    inputs = [Path(p) for p in inputs]
    if output.is_dir():
        if not as_folder:
            raise DataError(f"{output} is a folder; give a file name for the export, e.g. {output / 'model.gguf'}.")
        for source in inputs:
            if _inside(source, output):
                raise DataError(f"{output} holds the model being exported ({source}); choose another output folder.")
        entries = list(output.rglob("*"))
        if entries and not overwrite:
            raise ConfigError(f"{output} exists and is not empty: choose a new output folder, "
                              "or pass --overwrite to replace it.")
        if any(p.is_file() and _is_sqlite(p) for p in entries):
            raise DataError(f"{output} holds an SQLite database (a DPO Studio project?); an export will not "
                            "replace a folder with a project in it. Choose another output folder.")
        return output
    if output.exists() and as_folder:
        raise DataError(f"{output} is a file; this format writes a folder. Choose a folder path.")
    check_output_path(output, inputs)  # never onto a project, its WAL or lock, or the input itself
    for source in inputs:
        if _inside(output, source) and source.is_dir():
            raise DataError(f"{output} is inside the model folder being exported ({source}); "
                            "write the export somewhere else.")
    if output.exists() and output.stat().st_size > 0 and not overwrite:
        raise ConfigError(f"{output} already exists: choose a new name, or pass --overwrite to replace it.")
    return output


def _fsync(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged(output: Path, as_folder: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `output` to write into; rename it into place when the block ends.

    An exception inside the block (or a failure while renaming) removes the temporary path and
    leaves `output` as it was.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = output.parent / f".{output.name}.export-{tag}"
    if as_folder:
        tmp.mkdir()
    try:
        yield tmp
        _fsync(tmp)
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
