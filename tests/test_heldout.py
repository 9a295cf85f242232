"""Held-out summary and implicit rewards: hand-computed aggregation, and real scoring on
the tiny model against a second tiny model."""

import pytest
import torch

from dpo_engine.devices import pick_device
from dpo_engine.errors import DataError
from dpo_engine.heldout import heldout_events, implicit_rewards, summarize_logps
from dpo_engine.models import load_model
from dpo_engine.pairs import PreferencePair
from tests.tiny_model import build_tiny_model
from dpo_engine.iters import drain

pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


PAIRS = [
    PreferencePair((("user", "Say hi."),), "Hi there!", "No."),
    PreferencePair((("user", "Count to three."),), "1, 2, 3", "one two three four five six"),
    PreferencePair((("user", "Name a colour."),), "Blue.", "Seven."),
    PreferencePair("Plain prompt: ", "plain chosen", "plain rejected text"),
    PreferencePair((("user", "Capital of France?"),), "Paris.", "London is the capital of France."),
]


def run(gen):
    events = []
    return events, drain(gen, events.append)


@pytest.fixture(scope="module")
def other_loaded(tmp_path_factory):
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("other"), seed=1)), pick_device("cpu"))


def test_summary_of_the_worked_example():
    """pc −10, pr −12, rc −11, rr −11, β 0.1: rewards +0.1 / −0.1 (margin 0.2 = 0.1·(2 − 0)),
    base margin 0 is a tie (accuracy 0), trained margin 2 (accuracy 1).
    A second pair pc −5, pr −4, rc −6, rr −3: rewards 0.1 / −0.1 again (margin 0.2), base
    prefers rejected (−6 < −3), trained too (−5 < −4): accuracies base 0, trained 0.5 overall."""
    t = lambda *v: torch.tensor(v)  # noqa: E731
    s = summarize_logps(t(-10.0, -5.0), t(-12.0, -4.0), t(-11.0, -6.0), t(-11.0, -3.0), beta=0.1, skipped=3)
    assert (s.pairs, s.skipped, s.beta) == (2, 3, 0.1)
    assert s.base_accuracy == 0.0 and s.trained_accuracy == 0.5
    assert s.reward_accuracy == 1.0
    assert s.reward_margin == pytest.approx(0.2)
    assert s.base_logp_margin == pytest.approx((0 + -3) / 2)
    assert s.trained_logp_margin == pytest.approx((2 + -1) / 2)


def test_base_against_itself_has_zero_rewards_and_equal_accuracies(tiny_loaded):
    m, tok = tiny_loaded.model, tiny_loaded.tokenizer
    events, s = run(heldout_events(m, m, tok, PAIRS, beta=0.1, batch_size=2))
    assert [e.done for e in events] == [2, 4, 5] and events[-1].total == 5
    assert s.pairs == 5 and s.skipped == 0
    assert s.reward_margin == 0.0 and s.reward_accuracy == 0.0  # r ≡ 0 when policy = reference
    assert s.base_accuracy == s.trained_accuracy
    assert s.base_logp_margin == pytest.approx(s.trained_logp_margin)


def test_trained_summary_obeys_the_margin_identity_and_per_pair_scores(tiny_loaded, other_loaded):
    base, trained, tok = tiny_loaded.model, other_loaded.model, tiny_loaded.tokenizer
    beta = 0.25
    _, s = run(heldout_events(trained, base, tok, PAIRS, beta=beta, batch_size=3))
    assert s.reward_margin == pytest.approx(beta * (s.trained_logp_margin - s.base_logp_margin), abs=1e-5)
    # each pair scored alone (batch of one, no padding) gives the same accuracies
    singles = [implicit_rewards(trained, base, tok, p.messages if p.conversational else p.prompt,
                                (p.chosen, p.rejected), beta) for p in PAIRS if p.conversational]
    conv = [p for p in PAIRS if p.conversational]
    _, s_conv = run(heldout_events(trained, base, tok, conv, beta=beta))
    # accuracies are signs of margins: comparable across two batchings only where no margin is
    # within rounding of 0 (as on these pairs; the margins themselves are compared below)
    for x in singles:
        assert min(abs(x.policy_logps[0] - x.policy_logps[1]), abs(x.reference_logps[0] - x.reference_logps[1])) > 1e-3
        assert abs(x.rewards[0] - x.rewards[1]) > 1e-4
    assert s_conv.trained_accuracy == pytest.approx(sum(x.policy_logps[0] > x.policy_logps[1] for x in singles) / 4)
    assert s_conv.base_accuracy == pytest.approx(sum(x.reference_logps[0] > x.reference_logps[1] for x in singles) / 4)
    assert s_conv.reward_margin == pytest.approx(sum(x.rewards[0] - x.rewards[1] for x in singles) / 4, abs=1e-5)


def test_implicit_rewards_are_beta_times_the_log_ratio(tiny_loaded, other_loaded):
    base, trained, tok = tiny_loaded.model, other_loaded.model, tiny_loaded.tokenizer
    s = implicit_rewards(trained, base, tok, "Say hi.", ("Hello!", "Go away, I am busy."), beta=0.5)
    for i in (0, 1):
        assert s.rewards[i] == pytest.approx(0.5 * (s.policy_logps[i] - s.reference_logps[i]), abs=1e-5)
        assert s.policy_logps[i] < 0 and s.reference_logps[i] < 0
    assert s.tokens[0] < s.tokens[1]  # byte tokenizer: the longer answer has more tokens
    same = implicit_rewards(base, base, tok, "Say hi.", ("Hello!", "Go away."), beta=0.5)
    assert same.rewards == (0.0, 0.0)


def test_no_scorable_pair_says_why(tiny_loaded):
    with pytest.raises(DataError, match="No held-out pair"):
        run(heldout_events(tiny_loaded.model, tiny_loaded.model, tiny_loaded.tokenizer, []))
