"""The loss family against numbers worked out by hand.

The worked example (the same as in dpo_engine/losses.py's docstrings):
    policy chosen −10, policy rejected −12, reference chosen −11, reference rejected −11,
    chosen tokens 4, rejected tokens 2, β = 0.1, ε = 0.1, α = 1
    log-ratios: chosen −10 − (−11) = +1, rejected −12 − (−11) = −1; Δ = 2; βΔ = 0.2
    rewards: chosen 0.1·1 = 0.1, rejected 0.1·(−1) = −0.1

    sigmoid            −log σ(0.2) = log(1 + e^−0.2)                         = 0.5981389
    length_normalized  per-token: 1/4 − (−1/2) = 0.75; log(1 + e^−0.075)     = 0.6563501
    ipo                (0.75 − 1/(2·0.1))² = (−4.25)²                         = 18.0625
    hinge              max(0, 1 − 0.2)                                        = 0.8
    robust             −log σ(0.2) − ε·0.2/(1 − 2ε) = 0.5981389 − 0.025       = 0.5731389
    sft                −(−10)/4                                               = 2.5
    rpo                0.5981389 + 1·2.5                                      = 3.0981389
"""

import math

import pytest
import torch

from dpo_engine.errors import ConfigError
from dpo_engine.losses import LOSSES, LossOutput, LossParams, compute_metrics, get_loss, sigmoid

pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


PARAMS = LossParams(beta=0.1, label_smoothing=0.1, rpo_alpha=1.0)
HAND = {
    "sigmoid": 0.5981389,
    "length_normalized": 0.6563501,
    "ipo": 18.0625,
    "hinge": 0.8,
    "robust": 0.5731389,
    "sft": 2.5,
    "rpo": 3.0981389,
}


def example(n: int = 1):
    t = lambda v: torch.full((n,), float(v))  # noqa: E731
    counts = dict(chosen_tokens=torch.full((n,), 4), rejected_tokens=torch.full((n,), 2))
    return (t(-10), t(-12), t(-11), t(-11)), counts


def test_table_covers_every_loss():
    assert set(LOSSES) == set(HAND)


@pytest.mark.parametrize("name", sorted(HAND))
def test_loss_matches_hand_computed_value(name):
    logps, counts = example(3)
    out = LOSSES[name](*logps, **counts, params=PARAMS)
    assert out.losses.shape == (3,)
    torch.testing.assert_close(out.losses, torch.full((3,), HAND[name]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, torch.full((3,), 0.1))
    torch.testing.assert_close(out.rejected_rewards, torch.full((3,), -0.1))


@pytest.mark.parametrize("name", ["sigmoid", "length_normalized", "robust"])
def test_policy_equal_to_reference_gives_ln2_and_zero_rewards(name):
    logps = torch.tensor([-3.0, -50.0, -7.5])
    other = torch.tensor([-4.0, -20.0, -9.0])
    counts = dict(chosen_tokens=torch.tensor([3, 40, 7]), rejected_tokens=torch.tensor([5, 18, 9]))
    out = LOSSES[name](logps, other, logps, other, **counts, params=PARAMS)
    torch.testing.assert_close(out.losses, torch.full((3,), math.log(2)))
    assert torch.equal(out.chosen_rewards, torch.zeros(3))
    assert torch.equal(out.rejected_rewards, torch.zeros(3))


def test_hinge_and_ipo_at_zero_margin():
    z = torch.zeros(2)
    counts = dict(chosen_tokens=torch.tensor([1, 2]), rejected_tokens=torch.tensor([3, 4]))
    torch.testing.assert_close(LOSSES["hinge"](z, z, z, z, **counts, params=PARAMS).losses, torch.ones(2))
    # (0 − 1/(2·0.1))² = 25
    torch.testing.assert_close(LOSSES["ipo"](z, z, z, z, **counts, params=PARAMS).losses, torch.full((2,), 25.0))


def test_robust_without_smoothing_is_sigmoid():
    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(5, generator=g) * 10 for _ in range(4)]
    p0 = LossParams(beta=0.3, label_smoothing=0.0)
    torch.testing.assert_close(LOSSES["robust"](*logps, params=p0).losses, sigmoid(*logps, params=p0).losses)


def test_gradient_has_the_closed_form():
    """∂L/∂log π(y_w) = −β·σ(−Δ), ∂L/∂log π(y_l) = +β·σ(−Δ) (the DPO gradient in closed form, Δ the β-scaled margin)."""
    beta = 0.5
    pc = torch.tensor([-10.0, -3.0, -8.0], requires_grad=True)
    pr = torch.tensor([-12.0, -2.0, -8.0], requires_grad=True)
    rc, rr = torch.tensor([-11.0, -4.0, -7.0]), torch.tensor([-11.0, -1.0, -9.0])
    sigmoid(pc, pr, rc, rr, params=LossParams(beta=beta)).losses.sum().backward()
    delta = beta * ((pc - rc) - (pr - rr)).detach()
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-delta))
    torch.testing.assert_close(pr.grad, beta * torch.sigmoid(-delta))


def test_per_token_losses_need_counts():
    logps, _ = example()
    with pytest.raises(ValueError, match="chosen_tokens"):
        LOSSES["ipo"](*logps, params=PARAMS)


def test_metrics_use_trl_names_and_strict_accuracy():
    out = LossOutput(
        losses=torch.tensor([1.0, 2.0, 3.0]),
        chosen_rewards=torch.tensor([0.5, 0.2, -0.1]),
        rejected_rewards=torch.tensor([0.1, 0.2, 0.3]),  # a win, a tie (not a win), a loss
    )
    m = compute_metrics(out, torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0, -5.0, -6.0]))
    assert m == pytest.approx({
        "loss": 2.0,
        "rewards/chosen": 0.2,
        "rewards/rejected": 0.2,
        "rewards/accuracies": 1 / 3,
        "rewards/margins": (0.4 + 0.0 - 0.4) / 3,
        "logps/chosen": -2.0,
        "logps/rejected": -5.0,
    })


def test_config_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="sigmoid"):
        get_loss("dpo")
    with pytest.raises(ConfigError, match="beta"):
        LossParams(beta=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        LossParams(label_smoothing=0.5)
