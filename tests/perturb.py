"""A policy that differs from its reference: a model folder copied with noised weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def perturbed_copy(src: Path, dest: Path, scale: float = 0.05, seed: int = 1, base: str | None = None) -> Path:
    """Copy the model folder `src` to `dest`, adding N(0, scale²) noise to every weight.

    With `base`, also write a dpo_studio_run.json naming it as the policy's base."""
    import torch
    from transformers import AutoModelForCausalLM

    dest = Path(dest)
    shutil.copytree(src, dest, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(dest, safe_serialization=True)
    if base is not None:
        (dest / "dpo_studio_run.json").write_text(json.dumps({"base_model": base}))
    return dest
