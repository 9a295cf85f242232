"""Divergence: a run whose weights blow up stops as failed before they are saved.

A learning rate far too high (`--lr 1e3`) wrecks the model in a step or two without the loss
turning NaN, so the non-finite checks of `train.step.run_step` never fire: Adam moves every
weight by about the learning rate each step whatever the gradient's size, so the weights'
norm jumps by orders of magnitude while the DPO loss saturates and its gradients vanish.
After each optimizer step the loop compares the global L2 norm of the trainable weights with
the run's start (`WeightWatch`): one fused pass over them, no copy of the weights (0.02 s for
the default model, under 0.5% of a step; bench/README.md, "Divergence").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dpo_engine.errors import TrainingError

# Past this many times the start's norm, the run has diverged. Measured by bench/divergence.py
# (bench/README.md, "Divergence"): healthy runs stay within 1.1x (the default model at lr 5e-6
# and 1e-4: 1.000000x, with LoRA at 5e-5: 1.0002x; the tiny test model, full and LoRA, at lr up
# to 1e-2: <= 1.10x; even at lr 0.1, still learning, 3.9x), while lr 1e3 multiplies it
# 9,700-40,000x in its first step (the default model's loss stayed finite, near 1). 10 sits
# between, about a decade from each.
WEIGHT_GROWTH_LIMIT = 10.0


def weight_norm(params) -> float:
    """The global L2 norm of `params` (one fused pass; no gradient kept)."""
    with torch.no_grad():
        return float(torch.nn.utils.get_total_norm([p.detach() for p in params]))


@dataclass
class WeightWatch:
    """The trainable weights and their norm when this session of the run started."""

    params: list
    start: float

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> "WeightWatch":
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return cls(params, weight_norm(params))

    def growth(self) -> float:
        """The weights' norm now over the start's (1.0 where the start is all zeros: an empty shard)."""
        return weight_norm(self.params) / self.start if self.start > 0 else 1.0

    def diverged(self) -> float | None:
        """The growth when it is past WEIGHT_GROWTH_LIMIT (or not finite), else None."""
        growth = self.growth()
        return None if growth <= WEIGHT_GROWTH_LIMIT else growth


def divergence_error(step: int, growth: float, lr: float) -> TrainingError:
    """The failure a diverged step ends the run with: what happened, and what to change."""
    size = f"{growth:,.0f}-fold" if math.isfinite(growth) else "to a non-finite size"
    return TrainingError(
        f"Step {step}: training diverged: the weights' norm grew {size} since the start of the run (a healthy "
        f"run stays within {WEIGHT_GROWTH_LIMIT:g}-fold), so the model it made is not saved and the last good "
        f"checkpoint is kept. Lower the learning rate (it was {lr:g}; 5e-6 suits a full fine-tune, 5e-5 LoRA).")
