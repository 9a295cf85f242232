"""One optimizer step and one eval pass: log-probs -> loss -> backward -> clip -> step.

Pure of events and files: the loop (`train.loop`) times it, checks it and reports it. Also
the casts of the trainable weights kept across a step's forwards (`casts_kept`). Attention's
precision is the model's own (`dpo_engine.attention`), so that gradient checkpointing
recomputes exactly the forward it saved.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from dpo_engine.encoding import EncodedPair, collate, length_batches
from dpo_engine.errors import TrainingError
from dpo_engine.iters import drain
from dpo_engine.logps import BatchLogps, batch_logps, score_pairs
from dpo_engine.losses import LossParams, compute_metrics, get_loss
from dpo_engine.shared_prompt import shared_prompt_logps
from dpo_engine.train.distributed import LOCAL
from dpo_engine.train.groups import grouped_logps, scoring_batches


@dataclass(frozen=True)
class StepContext:
    """What every micro-batch needs besides its pairs (fixed for the run)."""

    loss: str
    params: LossParams
    pad_id: int
    device: torch.device
    share_prompt: bool  # prompt once with its KV reused (off under gradient checkpointing)
    autocast: Callable[[], object]  # a fresh autocast (or null) context per forward
    scorer: Callable | None = None  # under accelerate: the wrapped model's forward(pairs); else None
    group_answers: bool = False  # each distinct prompt and answer of a batch once (`train.groups`)


def pair_logps(model, pairs: Sequence[EncodedPair], ctx: StepContext) -> BatchLogps:
    """Chosen/rejected summed response log-probs and token counts, each (B,)."""
    if ctx.scorer is not None:
        return ctx.scorer(pairs)  # through DDP/FSDP/DeepSpeed, which call back here without it
    with ctx.autocast():
        if ctx.group_answers:
            return grouped_logps(model, pairs, ctx.pad_id, ctx.device, ctx.share_prompt)
        if ctx.share_prompt:
            return shared_prompt_logps(model, pairs, ctx.pad_id, ctx.device)
        return batch_logps(model, collate(pairs, ctx.pad_id).to(ctx.device))


def pair_tokens(pairs: Sequence[EncodedPair]) -> int:
    """Non-padding tokens of prompt + chosen + rejected (the benchmark's 'trained tokens')."""
    return sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def _loss_output(model, pairs, ref_c: torch.Tensor, ref_r: torch.Tensor, ctx: StepContext):
    """(LossOutput, BatchLogps) of one micro-batch; ref_* are (B,) on the CPU."""
    lp = pair_logps(model, pairs, ctx)
    out = get_loss(ctx.loss)(
        lp.chosen_logps, lp.rejected_logps, ref_c.to(ctx.device), ref_r.to(ctx.device),
        chosen_tokens=lp.chosen_tokens, rejected_tokens=lp.rejected_tokens, params=ctx.params,
    )
    return out, lp


def _accumulate(total: dict, metrics: dict, weight: int) -> None:
    for name, value in metrics.items():
        total[name] = total.get(name, 0.0) + value * weight


def describe_pairs(indices: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in indices)


def casts_kept(ctx: StepContext):
    """A scope over a whole step in which autocast's casts of the trainable fp32 weights are
    made once and reused by every micro-batch's forward.

    autocast caches the low-precision copy of each weight that requires grad, but empties
    the cache whenever its outermost context exits: with one autocast per forward, every
    micro-batch of a step cast all the weights again (the weights only change at the
    optimizer step, after all of them). An outer autocast context that is itself disabled
    keeps the cache alive until the step's end; inside it, the forwards' own contexts cast
    and the backward passes run without autocast, as before. Under fp32 (no autocast) it
    changes nothing. Not under FSDP/DeepSpeed, whose parameters are gathered and released
    around each forward. Measured in bench/README.md, "Where a bf16 training step's time goes".
    """
    if not torch.amp.is_autocast_available(ctx.device.type):
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, enabled=False)


def run_step(model, optimizer, micro_batches: list[list[int]], train: Sequence[EncodedPair],
             ref: tuple[torch.Tensor, torch.Tensor], ctx: StepContext, max_grad_norm: float,
             step: int, names: Sequence[int], dist=None, weights: torch.Tensor | None = None) -> tuple[dict, float]:
    """Forward/backward over the micro-batches, clip, optimizer step.

    Args:
        micro_batches: train-pair indices per micro-batch (global ones under accelerate:
            each rank trains on its `dist.share` of each).
        ref: reference chosen/rejected log-probs of all train pairs, each (N,).
        names: each train pair's index in the caller's list (named in error messages).
        dist: `distributed.current()`; None for a single process.
        weights: each train pair's loss weight, (N,) with mean 1; None: all count the same.
            The metrics stay plain means (TRL's), only the loss that is optimised is weighted.

    Returns:
        (pair-weighted mean metrics under TRL names, grad norm before clipping).

    Raises:
        TrainingError: non-finite loss or gradient (the optimizer has not stepped).
    """
    dist = dist or LOCAL
    n_pairs = sum(len(mb) for mb in micro_batches)
    totals: dict[str, float] = {}
    bad = None  # under accelerate a rank must not leave the collectives alone: raise after them
    optimizer.zero_grad(set_to_none=True)
    with casts_kept(ctx) if not dist.sharded else contextlib.nullcontext():  # FSDP/DeepSpeed re-gather per forward
        for k, global_mb in enumerate(micro_batches):
            mb, weight = dist.share(global_mb)
            with dist.sync(model, last=k == len(micro_batches) - 1):
                out, lp = _loss_output(model, [train[i] for i in mb], ref[0][mb], ref[1][mb], ctx)
                losses = out.losses if weights is None else out.losses * weights[mb].to(out.losses)
                loss = losses.sum() / n_pairs  # pair-weighted mean over the whole step
                if weight != 1:
                    loss = loss * weight  # DDP averages over ranks: x ranks gives the global sum
                if not torch.isfinite(loss):
                    bad = bad or (loss.item(), mb)
                    if dist.world == 1:
                        break
                dist.backward(loss)
            _accumulate(totals, compute_metrics(out, lp.chosen_logps, lp.rejected_logps), len(mb) * (weight > 0))
    if dist.agree(bad is not None):
        value, mb = bad or (math.nan, [])
        raise TrainingError(f"Step {step}: the loss is not finite ({value}) on pairs "
                            f"{describe_pairs([names[i] for i in mb])}. The last good checkpoint is kept; "
                            "try a lower learning rate, or check those pairs.")
    totals = dist.sum_values(totals)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = dist.clip_grad_norm(model, params, max_grad_norm if max_grad_norm > 0 else math.inf)
    if not math.isfinite(grad_norm):
        batch = describe_pairs([names[i] for mb in micro_batches for i in mb])
        raise TrainingError(f"Step {step}: the gradient is not finite ({grad_norm}) on pairs {batch}. "
                            "The last good checkpoint is kept; try a lower learning rate or max_grad_norm.")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {k: v / n_pairs for k, v in totals.items()}, grad_norm


def score_batches(pairs: Sequence[EncodedPair], ctx: StepContext, batch_size: int) -> list[list[int]]:
    """The no-grad scoring batches (pair indices): whole rankings when answers are grouped
    (`train.groups.scoring_batches`), else pairs of similar length (`encoding.length_batches`)."""
    if ctx.group_answers:
        return scoring_batches(pairs, batch_size)
    return length_batches(pairs, batch_size)


def policy_scores(model, pairs: Sequence[EncodedPair], ctx: StepContext, batch_size: int):
    """Policy log-probs of many pairs without gradients (held-out eval): yields pairs done;
    returns ((N,), (N,)) chosen/rejected on the CPU, input order (`logps.score_pairs`)."""
    batches = score_batches(pairs, ctx, batch_size)
    result = yield from score_pairs(lambda batch: pair_logps(model, batch, ctx)[:2], pairs, batch_size, batches)
    return result[0], result[1]


def heldout_metrics(model, pairs: Sequence[EncodedPair], ref: tuple[torch.Tensor, torch.Tensor],
             ctx: StepContext, batch_size: int) -> dict:
    """Mean metrics (TRL names, unprefixed) of the policy on held-out pairs."""
    was_training = model.training
    model.eval()
    try:
        chosen, rejected = drain(policy_scores(model, pairs, ctx, batch_size))
    finally:
        model.train(was_training)
    tokens = torch.tensor([len(p.chosen_ids) for p in pairs]), torch.tensor([len(p.rejected_ids) for p in pairs])
    out = get_loss(ctx.loss)(chosen, rejected, ref[0], ref[1], chosen_tokens=tokens[0],
                             rejected_tokens=tokens[1], params=ctx.params)
    return compute_metrics(out, chosen, rejected)
