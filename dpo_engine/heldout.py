"""Scoring a trained model against its base outside training: the implicit reward of an
answer, and a summary of held-out pairs before vs after.

The implicit reward of an answer y to a prompt x under a policy π_θ trained from π_ref
(Rafailov et al. 2023, Eq. 5):

    r(x, y) = β·(log π_θ(y|x) − log π_ref(y|x))

"Before vs after" on held-out pairs needs care. With the base as its own reference every
implicit reward is 0 by definition, so the base's reward accuracy would be 0 and its
reward margin 0 — true, and useless as a baseline. What is comparable across the two
models is each model's *own* preference: does it give the chosen answer a higher
log-probability than the rejected one,

    base accuracy    = mean[ log π_ref(y_w|x) > log π_ref(y_l|x) ]
    trained accuracy = mean[ log π_θ(y_w|x)   > log π_θ(y_l|x) ]

(summed log-probs favour shorter answers, so both numbers carry the same length bias;
their difference is what training moved). The implicit-reward accuracy TRL logs,
mean[ r_w > r_l ], asks a different question — did training move the model towards the
chosen answer relative to where the base stood — and is reported next to them, as is
the reward margin mean(r_w − r_l). The two margins are tied by an identity:

    reward margin = β·(trained log-prob margin − base log-prob margin)

Public API:
    implicit_rewards(policy, reference, tokenizer, prompt, responses, beta) -> ResponseScores
    implicit_rewards_events(...)   the same, yielding between the two models' passes
    heldout_events(policy, reference, tokenizer, pairs, beta) -> yields HeldoutProgress, returns HeldoutSummary
    summarize_logps(pc, pr, rc, rr, beta, skipped=0) -> HeldoutSummary     (pure)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Generator, Iterator, Sequence

import torch

from dpo_engine.encoding import EncodedPair, collate, encode_pair, encode_pairs
from dpo_engine.errors import DataError
from dpo_engine.iters import drain, mapped
from dpo_engine.logps import batch_logps, score_pairs
from dpo_engine.losses import LossParams, compute_metrics, sigmoid
from dpo_engine.pairs import PreferencePair

DEFAULT_BETA = 0.1  # the DPO paper's and TRL's default, for a model whose training β is unknown
MAX_LENGTH = 1024  # held-out pairs longer than this are cut as in training; saves memory on long pairs


@dataclass(frozen=True)
class ResponseScores:
    """Two answers to one prompt, scored under the policy and the reference."""

    policy_logps: tuple[float, float]
    reference_logps: tuple[float, float]
    rewards: tuple[float, float]  # β·(policy − reference) per answer
    tokens: tuple[int, int]  # scored tokens per answer (the answer plus the end-of-turn tokens)


@dataclass(frozen=True)
class HeldoutProgress:
    done: int  # pairs scored so far
    total: int


@dataclass(frozen=True)
class HeldoutSummary:
    pairs: int  # pairs scored
    skipped: int  # pairs that could not be encoded (see encoding.encode_pair)
    beta: float
    base_accuracy: float  # fraction where the base gives chosen the higher log-prob
    trained_accuracy: float  # the same for the trained model: comparable with base_accuracy
    reward_accuracy: float  # fraction where r_w > r_l (TRL's rewards/accuracies); the base's is 0
    reward_margin: float  # mean r_w − r_l (TRL's rewards/margins); the base's is 0 by definition
    base_logp_margin: float  # mean log π_ref(y_w) − log π_ref(y_l)
    trained_logp_margin: float  # mean log π_θ(y_w) − log π_θ(y_l)
    precision: str = "float32"  # the weights' dtype the scores were computed in


@torch.no_grad()
def _logps(model, encoded: Sequence[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected response log-probs of a few pairs in one forward, each (B,) on the CPU."""
    device = next(model.parameters()).device
    out = batch_logps(model, collate(encoded, pad_id).to(device))
    return out.chosen_logps.float().cpu(), out.rejected_logps.float().cpu()


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def as_pair_prompt(prompt) -> str | tuple[tuple[str, str], ...]:
    """A generation prompt (text or message dicts) as PreferencePair.prompt, rendered with the
    chat template exactly as `generate.stream_generate` rendered it."""
    if isinstance(prompt, str):
        return (("user", prompt),)
    return tuple((m["role"], m["content"]) if isinstance(m, dict) else tuple(m) for m in prompt)


def implicit_rewards(policy, reference, tokenizer, prompt, responses: tuple[str, str],
                     beta: float = DEFAULT_BETA) -> ResponseScores:
    """Score two answers to `prompt` (one forward per model: the two answers are a pair).

    Both models must share `tokenizer` (a checkpoint and its base do).
    """
    return drain(implicit_rewards_events(policy, reference, tokenizer, prompt, responses, beta))


def implicit_rewards_events(policy, reference, tokenizer, prompt, responses: tuple[str, str],
                            beta: float = DEFAULT_BETA) -> Generator[None, None, ResponseScores]:
    """`implicit_rewards`, yielding once between the two models' passes: a caller that no longer
    needs the scores stops there (at 1B on a 2-core CPU each fp32 pass takes tens of seconds)."""
    encoded = encode_pair(tokenizer, PreferencePair(as_pair_prompt(prompt), *responses))
    pad = _pad_id(tokenizer)
    pc, pr = _logps(policy, [encoded], pad)
    yield
    rc, rr = _logps(reference, [encoded], pad)
    out = sigmoid(pc, pr, rc, rr, params=LossParams(beta))
    return ResponseScores((pc.item(), pr.item()), (rc.item(), rr.item()),
                          (out.chosen_rewards.item(), out.rejected_rewards.item()),
                          (len(encoded.chosen_ids), len(encoded.rejected_ids)))


def summarize_logps(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
                    beta: float, skipped: int = 0) -> HeldoutSummary:
    """The summary from per-pair log-probs. Shapes: all (N,), N ≥ 1; p* policy, r* reference.

    Example (the losses' worked example): pc −10, pr −12, rc −11, rr −11, β 0.1 ->
    base margin 0 (a tie, so base accuracy 0), trained margin 2 (accuracy 1),
    rewards +0.1 / −0.1, reward margin 0.2 = 0.1·(2 − 0).
    """
    assert pc.shape == pr.shape == rc.shape == rr.shape and pc.dim() == 1 and pc.numel() > 0
    metrics = compute_metrics(sigmoid(pc, pr, rc, rr, params=LossParams(beta)), pc, pr)
    return HeldoutSummary(
        pairs=pc.numel(), skipped=skipped, beta=beta,
        base_accuracy=(rc > rr).float().mean().item(),
        trained_accuracy=(pc > pr).float().mean().item(),
        reward_accuracy=metrics["rewards/accuracies"],
        reward_margin=metrics["rewards/margins"],
        base_logp_margin=(rc - rr).mean().item(),
        trained_logp_margin=(pc - pr).mean().item(),
    )


def heldout_events(policy, reference, tokenizer, pairs: Sequence[PreferencePair], beta: float = DEFAULT_BETA,
                   batch_size: int = 4, max_length: int = MAX_LENGTH) -> Iterator[HeldoutProgress]:
    """Score held-out pairs under both models, yielding progress after each batch (a safe
    stopping point); returns the HeldoutSummary.

    Raises:
        DataError: no pair could be scored (none given, or none encodes).
    """
    kept, skipped = encode_pairs(tokenizer, pairs, max_length)
    if not kept:
        reason = f": {skipped[0][1]}" if skipped else ""
        raise DataError(f"No held-out pair to score{reason}. Label more prompts; about 1 in 10 is held out.")
    encoded = [e for _, e in kept]
    pad = _pad_id(tokenizer)
    n = len(encoded)

    def both(batch):  # one batch under the policy, then under the reference: progress is per pair scored
        return (*_logps(policy, batch, pad), *_logps(reference, batch, pad))

    pc, pr, rc, rr = yield from mapped(score_pairs(both, encoded, batch_size), lambda done: HeldoutProgress(done, n))
    dtypes = {str(next(m.parameters()).dtype).removeprefix("torch.") for m in (policy, reference)}
    return dataclasses.replace(summarize_logps(pc, pr, rc, rr, beta, skipped=len(skipped)),
                               precision=" / ".join(sorted(dtypes)))
