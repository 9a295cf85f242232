"""Crash-safe checkpoints: the output folder is always a complete, loadable model.

A checkpoint folder holds config.json + *.safetensors + tokenizer + dpo_studio_run.json +
trainer_state/ + checkpoint.json (the manifest). It is written and swapped into place by
`dpo_engine.atomic.write_checkpoint` (temporary sibling, manifest last, two renames), and
found by `dpo_engine.atomic.find_checkpoint`, which recovers one a kill left in `.<out>.prev`.

Optimizer and scheduler state are torch.save files (pickle), so they are only ever read
with `torch.load(..., weights_only=True)`; a file that needs more than that is refused with
a message, not a traceback.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import torch

from dpo_engine.atomic import find_checkpoint, prev_folder
from dpo_engine.errors import ConfigError, TrainingError

RUN_FILE = "dpo_studio_run.json"  # base / reference refs and the run config, for people and for resume
STATE_DIR = "trainer_state"  # optimizer, scheduler, RNG and data position (resume only)


def check_output_dir(out: str | Path, resume: bool) -> None:
    """Refuse to overwrite a folder that is not ours, or an earlier run without --resume."""
    out = Path(out)
    if resume or not out.exists() and not prev_folder(out).exists():
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
        optimizer.load_state_dict(_load_state(state / "optimizer.pt", map_location=device))
    scheduler.load_state_dict(_load_state(state / "scheduler.pt"))
    rng = _load_state(state / "rng.pt")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    position = json.loads((state / "state.json").read_text())
    py = position.pop("python_random")
    random.setstate((py[0], tuple(py[1]), py[2]))
    return position


def _load_state(path: Path, **kwargs):
    """torch.load with weights_only=True; a file that is damaged or asks for more (a pickle
    that would run code) becomes a TrainingError that names it."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError:
        raise TrainingError(
            f"{path} is not trainer state DPO Studio wrote: it asks to run code when loaded, so it was refused "
            "(nothing was run). Resume from a checkpoint you trust, or start a new run with this folder as "
            "--model (its weights are safetensors and load safely).") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise TrainingError(f"{path} is damaged and cannot be read ({exc.__class__.__name__}); resume from "
                            "another checkpoint, or start a new run with this folder as --model.") from None


def read_run_file(folder: str | Path) -> dict:
    """The dpo_studio_run.json of a checkpoint folder ({} if absent)."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
