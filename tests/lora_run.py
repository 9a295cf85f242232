"""A LoRA run's checkpoint made by the real trainer over the tiny model, for the tests of serving a
checkpoint as a view over its base (test_shared_base.py, test_compare_page.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpo_engine.devices import DeviceChoice
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.train.events import TrainSummary
from dpo_engine.train.loop import train
from tests.train_helpers import make_pairs

LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)
# a bf16 window as "auto" picks it on a CPU with native bf16 (faked: the decision is not measured here)
BF16 = DeviceChoice("cpu", "bfloat16", "no GPU found", "bf16: CPU has avx512_bf16 (faked)")


def train_lora_run(base_dir: Path, out: Path, cache: Path, merge: bool) -> Path:
    """Four fp32 LoRA steps at a high learning rate (the adapter moves far from zero, so the checkpoint
    scores differently from its base); `merge`: the merged model at the top and the adapter in
    adapter/ (what the window's runs save), else the adapter alone (the CLI's default)."""
    config = TrainConfig(output_dir=str(out), model=str(base_dir), lr=3e-2, batch_size=4, grad_accum=1,
                         warmup_ratio=0.0, eval_fraction=0.0, device="cpu", dtype="float32", seed=5, max_steps=4,
                         lora=LORA, merge_lora=merge)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPO_STUDIO_CACHE", str(cache))  # the reference log-probs of no other test
        summary = list(train(config, make_pairs(16)))[-1]
    assert isinstance(summary, TrainSummary) and summary.status == "finished", summary
    return out


def weight_bytes(*models) -> int:
    """Bytes of the distinct parameter tensors of `models` (a shared one counted once)."""
    seen: dict[int, int] = {}
    for model in models:
        for p in model.parameters():
            seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())


def adapter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)


def base_bytes(model, dtype: torch.dtype) -> int:
    """The size of `model`'s weights (no adapter) in `dtype`."""
    seen = {p.data_ptr(): p.numel() for n, p in model.named_parameters() if "lora_" not in n}
    return sum(seen.values()) * torch.finfo(dtype).bits // 8
