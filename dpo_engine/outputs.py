"""One rule for every file the engine writes for the person (exports, checkpoints, screenshots):
never onto a project file or the input being read.

`dpo-engine export --project my.sqlite my.sqlite` once replaced the project with JSON lines and
exited 0; an app still open on it went on acknowledging verdicts into the replaced file. An
output is refused when it *is* an input (the same file by device and inode, whatever the name)
or when it already holds an SQLite database (a project, ours or anyone's): replacing either
loses data that no message can bring back. An output whose folder does not exist is refused,
naming the folder. Writing itself goes to a temporary sibling that is
renamed into place (`dpo_engine.atomic`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from dpo_engine.errors import DataError

SQLITE_MAGIC = b"SQLite format 3\x00"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist
        return False


def is_sqlite(path: Path) -> bool:
    """Whether `path` is an SQLite database (by its header; unreadable counts as not)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def check_parent(out: Path) -> None:
    """Refuse an output whose folder does not exist, naming it: a typo in a path is an error, not a
    new tree of folders."""
    parent = Path(out).expanduser().absolute().parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise DataError(f"The folder {parent} {what}: check the path, or create the folder first. Nothing "
                        "was written.")


def check_output_path(out: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Return `out` if writing it cannot destroy data, else raise DataError saying what to do."""
    out = Path(out)
    check_parent(out)
    for source in inputs:
        if _same_file(out, Path(source)):
            raise DataError(f"{out} is the file being read ({source}); writing the output onto it would "
                            "destroy it. Choose another output name.")
    if out.is_dir():
        raise DataError(f"{out} is a folder; give a file name for the output.")
    if out.is_file() and is_sqlite(out):
            raise DataError(f"{out} is an SQLite database (a DPO Studio project or another program's); "
                            "an export would replace it and lose everything in it. Choose another output "
                            "name, e.g. pairs.jsonl.")
    for suffix in ("-wal", "-shm", ".lock"):
        if out.name.endswith(suffix) and Path(str(out)[: -len(suffix)]).is_file():
            raise DataError(f"{out} belongs to the project {str(out)[: -len(suffix)]}; choose another output name.")
    return out
