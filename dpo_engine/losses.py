"""The DPO loss family: pure functions of four log-prob tensors (+ token counts).

Every loss has the same signature and returns per-pair losses and the implicit rewards

    r_c = β·(log π(y_w|x) − log π_ref(y_w|x)),   r_r = β·(log π(y_l|x) − log π_ref(y_l|x))

(Rafailov et al. 2023, Eq. 5; TRL logs these as rewards/chosen and rewards/rejected,
unnormalised, whatever the loss). Where TRL (1.16, `DPOTrainer._compute_loss`) defines a
loss, the definition here is TRL's, term for term.

Worked example used in every docstring below (and checked in tests/test_losses.py):
    policy chosen −10, policy rejected −12, reference chosen −11, reference rejected −11,
    chosen tokens 4, rejected tokens 2, β = 0.1
    -> log-ratios +1 and −1, Δ = 2, βΔ = 0.2, rewards +0.1 and −0.1.

Public API:
    LossParams(beta, label_smoothing, rpo_alpha)                 frozen, validated
    LOSSES: dict[name, fn]; fn(pc, pr, rc, rr, *, chosen_tokens, rejected_tokens, params) -> LossOutput
    get_loss(name) -> fn                                          (ConfigError lists the names)
    compute_metrics(output, policy_chosen_logps, policy_rejected_logps) -> dict[str, float]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from dpo_engine.errors import ConfigError


@dataclass(frozen=True)
class LossParams:
    beta: float = 0.1  # KL strength (IPO's τ); 0.1 is the DPO paper's and TRL's default
    label_smoothing: float = 0.0  # robust: assumed fraction of flipped labels ε, in [0, 0.5)
    rpo_alpha: float = 1.0  # rpo: weight α of the NLL term; 1.0 as in the RPO paper (Pang et al. 2024)

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0 (got {self.beta}); 0.1 is a good start.")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5) (got {self.label_smoothing}).")
        if self.rpo_alpha < 0:
            raise ConfigError(f"rpo_alpha must be >= 0 (got {self.rpo_alpha}).")


class LossOutput(NamedTuple):
    """Shapes: all (B,)."""

    losses: torch.Tensor  # per-pair loss; the batch loss is its mean
    chosen_rewards: torch.Tensor  # β·log(π/π_ref) of the chosen response
    rejected_rewards: torch.Tensor  # β·log(π/π_ref) of the rejected response


def _rewards(pc, pr, rc, rr, beta) -> tuple[torch.Tensor, torch.Tensor]:
    return beta * (pc - rc), beta * (pr - rr)


def _beta_delta(pc, pr, rc, rr, beta) -> torch.Tensor:
    """βΔ computed in TRL's order, β·((π_c − ref_c) − (π_r − ref_r)), so rounding matches."""
    return beta * ((pc - rc) - (pr - rr))


def _per_token(x: torch.Tensor, tokens: torch.Tensor | None, name: str) -> torch.Tensor:
    if tokens is None:
        raise ValueError(f"this loss needs {name}")
    return x / tokens.to(x.dtype).clamp(min=1.0)  # TRL's clamp: a 0-token response never divides by 0


def _per_token_delta(pc, pr, rc, rr, chosen_tokens, rejected_tokens) -> torch.Tensor:
    """Δ_c/|y_w| − Δ_r/|y_l|: the log-ratios averaged per response token."""
    return _per_token(pc - rc, chosen_tokens, "chosen_tokens") - _per_token(pr - rr, rejected_tokens, "rejected_tokens")


def sigmoid(pc, pr, rc, rr, *, chosen_tokens=None, rejected_tokens=None, params: LossParams) -> LossOutput:
    """DPO: −log σ(βΔ), Δ = (log π_c − log π_ref,c) − (log π_r − log π_ref,r) (paper Eq. 7).

    Example: βΔ = 0.2 -> log(1 + e^−0.2) = 0.598139.
    """
    cr, rj = _rewards(pc, pr, rc, rr, params.beta)
    return LossOutput(-F.logsigmoid(_beta_delta(pc, pr, rc, rr, params.beta)), cr, rj)


def length_normalized(pc, pr, rc, rr, *, chosen_tokens=None, rejected_tokens=None, params: LossParams) -> LossOutput:
    """TRL's `sigmoid_norm`: −log σ(β(Δ_c/|y_w| − Δ_r/|y_l|)), Δ_* the log-ratios.

    Example: 1/4 − (−1)/2 = 0.75, β·0.75 = 0.075 -> log(1 + e^−0.075) = 0.656350.
    """
    cr, rj = _rewards(pc, pr, rc, rr, params.beta)
    delta = _per_token_delta(pc, pr, rc, rr, chosen_tokens, rejected_tokens)
    return LossOutput(-F.logsigmoid(params.beta * delta), cr, rj)


def ipo(pc, pr, rc, rr, *, chosen_tokens=None, rejected_tokens=None, params: LossParams) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17) on per-token log-ratios as TRL: (h − 1/(2τ))², τ = β,
    h = Δ_c/|y_w| − Δ_r/|y_l|.

    Example: h = 0.75, 1/(2·0.1) = 5 -> (0.75 − 5)² = 18.0625.
    """
    cr, rj = _rewards(pc, pr, rc, rr, params.beta)
    h = _per_token_delta(pc, pr, rc, rr, chosen_tokens, rejected_tokens)
    return LossOutput((h - 1 / (2 * params.beta)) ** 2, cr, rj)


def hinge(pc, pr, rc, rr, *, chosen_tokens=None, rejected_tokens=None, params: LossParams) -> LossOutput:
    """SLiC hinge (Zhao et al. 2023) as TRL: max(0, 1 − βΔ).

    Example: βΔ = 0.2 -> 0.8.
    """
    cr, rj = _rewards(pc, pr, rc, rr, params.beta)
    return LossOutput(torch.relu(1 - _beta_delta(pc, pr, rc, rr, params.beta)), cr, rj)


def robust(pc, pr, rc, rr, *, chosen_tokens=None, rejected_tokens=None, params: LossParams) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, Eq. 9) for labels flipped with probability ε:
    [−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)] / (1 − 2ε). At ε = 0 it is `sigmoid`.

    Example, ε = 0.1: since log σ(−x) = log σ(x) − x, it is −log σ(0.2) − 0.1·0.2/0.8
    = 0.598139 − 0.025 = 0.573139.
    """
    eps = params.label_smoothing
    cr, rj = _rewards(pc, pr, rc, rr, params.beta)
    logits = _beta_delta(pc, pr, rc, rr, params.beta)
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return LossOutput(losses, cr, rj)


def sft(pc, pr, rc, rr, *, chosen_tokens=None, rejected_tokens=None, params: LossParams) -> LossOutput:
    """NLL of the chosen response per token (the no-preference baseline): −log π(y_w|x) / |y_w|.

    TRL averages over all chosen tokens of the batch (a token-weighted mean); this is the
    per-pair mean, the same for batches of one or equal lengths, and independent of how
    pairs are batched. Example: 10 / 4 = 2.5.
    """
    cr, rj = _rewards(pc, pr, rc, rr, params.beta)
    return LossOutput(-_per_token(pc, chosen_tokens, "chosen_tokens"), cr, rj)


def rpo(pc, pr, rc, rr, *, chosen_tokens=None, rejected_tokens=None, params: LossParams) -> LossOutput:
    """RPO (Pang et al. 2024): DPO + α·NLL on chosen. In TRL 1.16 it is loss_type
    ["sigmoid", "sft"] with loss_weights [1, α].

    Example, α = 1: 0.598139 + 2.5 = 3.098139.
    """
    dpo = sigmoid(pc, pr, rc, rr, params=params)
    nll = sft(pc, pr, rc, rr, chosen_tokens=chosen_tokens, params=params)
    return LossOutput(dpo.losses + params.rpo_alpha * nll.losses, dpo.chosen_rewards, dpo.rejected_rewards)


LossFn = Callable[..., LossOutput]
LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid,
    "length_normalized": length_normalized,
    "ipo": ipo,
    "hinge": hinge,
    "robust": robust,
    "sft": sft,
    "rpo": rpo,
}


def get_loss(name: str) -> LossFn:
    """The loss function called `name`; ConfigError naming the choices otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"Unknown loss {name!r}: use one of {', '.join(LOSSES)}.") from None


def compute_metrics(output: LossOutput, policy_chosen_logps, policy_rejected_logps) -> dict[str, float]:
    """Batch means under TRL's metric names. Accuracy counts strict wins (a tie is not one)."""
    cr, rj = output.chosen_rewards.detach().float(), output.rejected_rewards.detach().float()
    return {
        "loss": output.losses.detach().float().mean().item(),
        "rewards/chosen": cr.mean().item(),
        "rewards/rejected": rj.mean().item(),
        "rewards/accuracies": (cr > rj).float().mean().item(),
        "rewards/margins": (cr - rj).mean().item(),
        "logps/chosen": policy_chosen_logps.detach().float().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().float().mean().item(),
    }
