"""Where an export may be written. The writing itself is `dpo_engine.atomic.staged` (a temporary
sibling renamed into place; a failure leaves nothing under the chosen name, and an earlier
export being replaced stays whole until the new one is in place). What may be replaced is
decided before anything is written, whatever `overwrite` says: never a project file
(`dpo_engine.outputs.check_output_path`), never a path that is, is inside, or holds anything the
export reads (the model, its LoRA adapter, the base model the adapter applies to), and never into
a folder that does not exist (a typo in a path is an error, not a new tree of folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from dpo_engine.errors import ConfigError, DataError
from dpo_engine.outputs import check_output_path, check_parent, is_sqlite


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or under it, both resolved to their real paths (symlinks followed)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_not_an_input(output: Path, inputs: Iterable[Path], bases: Iterable[Path] = ()) -> None:
    """Refuse an output that is, is inside, or holds one of the export's inputs (`bases`: the base model a
    LoRA adapter applies to)."""
    for source, what in [*((p, "the model being exported") for p in inputs),
                         *((p, "the base model of the LoRA run being exported") for p in bases)]:
        if _inside(source, output):
            raise DataError(f"{output} is or holds {what} ({source.resolve()}); an export there would replace "
                            "it. Choose another output.")
        if _inside(output, source):
            raise DataError(f"{output} is inside {what} ({source.resolve()}); write the export somewhere else.")


def check_export_target(output: str | Path, as_folder: bool, overwrite: bool,
                        inputs: Iterable[str | Path] = (), bases: Iterable[str | Path] = ()) -> Path:
    """The absolute output path if writing it destroys nothing unasked; else a clear error."""
    output = Path(output).expanduser().absolute()
    inputs = [Path(p) for p in inputs]
    check_parent(output)
    check_not_an_input(output, inputs, [Path(p) for p in bases])
    if output.is_dir():
        if not as_folder:
            raise DataError(f"{output} is a folder; give a file name for the export, e.g. {output / 'model.gguf'}.")
        entries = list(output.rglob("*"))
        if entries and not overwrite:
            raise ConfigError(f"{output} exists and is not empty: choose a new output folder, "
                              "or pass --overwrite to replace it.")
        if any(p.is_file() and is_sqlite(p) for p in entries):
            raise DataError(f"{output} holds an SQLite database (a DPO Studio project?); an export will not "
                            "replace a folder with a project in it. Choose another output folder.")
        return output
    if output.exists() and as_folder:
        raise DataError(f"{output} is a file; this format writes a folder. Choose a folder path.")
    check_output_path(output, inputs)  # never onto a project, its WAL or lock, or the input itself
    if output.exists() and output.stat().st_size > 0 and not overwrite:
        raise ConfigError(f"{output} already exists: choose a new name, or pass --overwrite to replace it.")
    return output
