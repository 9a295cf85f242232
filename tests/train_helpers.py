"""Training inputs shared by the trainer, precision, LoRA-base, CLI, runs, reliability,
fit-mode and distributed tests: a learnable preference and one bf16 step's setup."""

from __future__ import annotations

import random

import torch

from dpo_engine.encoding import encode_pair
from dpo_engine.pairs import conversation


def make_pairs(n: int, seed: int = 0):
    """A learnable preference: the chosen answer says 'yes', the rejected one 'no'."""
    rng = random.Random(seed)
    return [conversation(f"Question {seed}-{i}: agree?", "yes " * rng.randint(1, 4), "no " * rng.randint(1, 4))
            for i in range(n)]


def bf16_step_setup(tiny_model_dir):
    """A private fp32 copy of the tiny model in train mode, a bf16-autocast StepContext, 4 encoded
    pairs and their log-probs under that context (the step-1 reference): (model, ctx, pairs, ref)."""
    from dpo_engine.devices import pick_device
    from dpo_engine.losses import LossParams
    from dpo_engine.models import load_model
    from dpo_engine.train.step import StepContext, pair_logps

    loaded = load_model(str(tiny_model_dir), pick_device("cpu", "float32"))  # a private copy: it trains
    model = loaded.model.train()
    ctx = StepContext("sigmoid", LossParams(), loaded.tokenizer.pad_token_id, torch.device("cpu"), True,
                      pick_device("cpu", "bfloat16").autocast)
    pairs = [encode_pair(loaded.tokenizer, p) for p in make_pairs(4)]
    with torch.no_grad():
        ref = pair_logps(model, pairs, ctx)
    return model, ctx, pairs, ref
