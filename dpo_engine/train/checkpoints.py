"""Crash-safe checkpoints: the output folder is always a complete, loadable model.

A checkpoint is written into a temporary sibling folder, its manifest last (after every
other file is on disk), and only then swapped into place by two renames:

    <out>          the current checkpoint  (config.json + *.safetensors + tokenizer +
                   dpo_studio_run.json + trainer_state/ + checkpoint.json)
    .<out>.tmp-*   a checkpoint being written: never loaded, removed on the next save
    .<out>.prev    the previous checkpoint, only between the two renames

A kill at any moment leaves either `<out>` or `.<out>.prev` complete; `find_checkpoint`
takes whichever holds a valid manifest (moving `.prev` back) and never reads a folder
whose manifest is missing or whose files do not match it.

Optimizer and scheduler state are torch.save files (pickle), so they are only ever read
with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from dpo_engine.errors import ConfigError, TrainingError

MANIFEST = "checkpoint.json"  # written last: a folder without it is not a checkpoint
RUN_FILE = "dpo_studio_run.json"  # base / reference refs and the run config, for people and for resume
STATE_DIR = "trainer_state"  # optimizer, scheduler, RNG and data position (resume only)
FORMAT = 1


def _prev(out: Path) -> Path:
    return out.parent / f".{out.name}.prev"


def _tmp(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def read_manifest(folder: Path) -> dict | None:
    """The manifest if `folder` is a complete checkpoint (every listed file, right size), else None."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for rel, size in files.items():
        path = Path(folder) / rel
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


def find_checkpoint(out: str | Path) -> Path | None:
    """The complete checkpoint at `out`, recovering one left in `.prev` by a kill mid-swap."""
    out = Path(out)
    if read_manifest(out) is not None:
        return out
    prev = _prev(out)
    if read_manifest(prev) is not None:
        if out.exists():
            shutil.rmtree(out)  # an incomplete folder: the swap never finished
        os.replace(prev, out)
        return out
    return None


def check_output_dir(out: str | Path, resume: bool) -> None:
    """Refuse to overwrite a folder that is not ours, or an earlier run without --resume."""
    out = Path(out)
    if resume or not out.exists() and not _prev(out).exists():
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"The output {out} is a file: give a folder path.")
    if find_checkpoint(out) is not None:
        raise ConfigError(
            f"{out} already holds a training checkpoint: resume it (--resume {out}), "
            "or choose a new output folder."
        )
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: choose a new output folder.")


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
    """Write a checkpoint with `write(folder)` and swap it into `out` atomically.

    If `write` raises (or the process dies), `out` keeps the previous checkpoint.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    find_checkpoint(out)  # finish a swap an earlier kill interrupted
    _remove_stale(out)
    tmp = _tmp(out)
    tmp.mkdir()
    try:
        write(tmp)
        _write_manifest(tmp, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prev = _prev(out)
    if out.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(out, prev)
    os.replace(tmp, out)
    shutil.rmtree(prev, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- trainer state


def save_trainer_state(folder: Path, optimizer, scheduler, position: dict) -> None:
    """Optimizer, scheduler, RNG and data position into `folder/trainer_state/`."""
    state = Path(folder) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    if optimizer is not None:  # None: the moments are sharded across processes and not gathered
        torch.save(optimizer.state_dict(), state / "optimizer.pt")
    torch.save(scheduler.state_dict(), state / "scheduler.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, state / "rng.pt")
    py = random.getstate()
    payload = {**position, "python_random": [py[0], list(py[1]), py[2]]}
    (state / "state.json").write_text(json.dumps(payload, indent=1))


def load_trainer_state(folder: Path, optimizer, scheduler) -> dict:
    """Restore what `save_trainer_state` wrote; return the data position dict."""
    state = Path(folder) / STATE_DIR
    if not (state / "state.json").is_file():
        raise TrainingError(f"{folder} holds a model but no trainer state, so it cannot be resumed; "
                            "start a new run with it as --model instead.")
    if (state / "optimizer.pt").is_file():  # absent after a sharded (FSDP/DeepSpeed) run: fresh moments
        device = next(iter(optimizer.param_groups[0]["params"])).device
        optimizer.load_state_dict(torch.load(state / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(state / "scheduler.pt", weights_only=True))
    rng = torch.load(state / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    position = json.loads((state / "state.json").read_text())
    py = position.pop("python_random")
    random.setstate((py[0], tuple(py[1]), py[2]))
    return position


def read_run_file(folder: str | Path) -> dict:
    """The dpo_studio_run.json of a checkpoint folder ({} if absent)."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
