"""Per-pair loss weights: from rankings in the store, rescaled by the run, applied by the step."""

import contextlib
import copy
import math

import pytest
import torch

from dpo_engine.encoding import encode_pair
from dpo_engine.errors import DataError
from dpo_engine.losses import LossParams
from dpo_engine.pairs import conversation
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.data import loss_weights, prepare_data
from dpo_engine.train.step import StepContext, run_step


pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


def test_weights_are_rescaled_to_mean_one_and_bad_ones_refused():
    assert loss_weights([1.0, 1.0, 1.0]) == ()  # all equal: the plain mean, no weighting at all
    assert loss_weights([1.0, 3.0]) == (0.5, 1.5)
    assert loss_weights([1 / 6] * 6 + [1.0]) == pytest.approx((7 / 12,) * 6 + (3.5,))  # a ranking = one verdict
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(DataError, match="#1 has weight"):
            loss_weights([1.0, bad])


def test_ranking_pairs_weigh_one_over_the_pairs_their_ranking_gave(fresh_db):
    pid = fresh_db.add_prompt("rank these", "label")
    ids = [fresh_db.add_response(pid, t, "m") for t in ("a", "bb", "ccc", "dddd")]
    fresh_db.record_ranking(pid, ids, [False, False, True, False])  # a > bb = ccc > dddd: 5 pairs
    other = fresh_db.add_prompt("pick one", "label")
    x, y = (fresh_db.add_response(other, t, "m") for t in ("x", "y"))
    fresh_db.record_comparison(other, x, y, "left")
    plain = fresh_db.queries.training_pairs(None)
    weighed = fresh_db.queries.training_pairs(None, weight_rankings=True)
    assert [sp.pair.weight for sp in plain] == [1.0] * 6
    assert sorted(sp.pair.weight for sp in weighed) == pytest.approx([0.2] * 5 + [1.0])
    assert [sp.group is None for sp in weighed].count(True) == 1
    assert [sp.pair.chosen for sp in weighed] == [sp.pair.chosen for sp in plain]  # same pairs, same order
    train, held = fresh_db.queries.run_pairs(weight_rankings=True)  # one query, split as training_pairs splits
    assert train == [sp.pair for sp in fresh_db.queries.training_pairs("train", True)]
    assert held == [sp.pair for sp in fresh_db.queries.training_pairs("eval", True)] and len(train) + len(held) == 6


def test_the_run_carries_the_weights_of_the_pairs_it_keeps(tiny_loaded, tmp_path):
    pairs = [conversation(f"q{i}", "yes", "no") for i in range(4)]
    pairs[1] = type(pairs[1])(pairs[1].prompt, "yes", "no", weight=3.0)
    config = TrainConfig(output_dir=str(tmp_path), eval_fraction=0.0)
    data = prepare_data(tiny_loaded.tokenizer, pairs, None, config)
    assert data.train_weights == pytest.approx((2 / 3, 2.0, 2 / 3, 2 / 3))  # 1, 3, 1, 1 over their mean 1.5
    plain = prepare_data(tiny_loaded.tokenizer, [conversation(f"q{i}", "yes", "no") for i in range(4)], None, config)
    assert plain.train_weights == () and plain.fingerprint() != data.fingerprint()


def test_a_weighted_step_is_the_step_on_the_weighted_mean(tiny_loaded):
    """Weights (1.5, 1.5, 0) over three pairs give the gradient of the plain mean over the
    first two: the same parameters after one SGD step."""
    tok = tiny_loaded.tokenizer
    encoded = [encode_pair(tok, conversation(f"Question {i}?", "yes " * (i + 1), "no " * (3 - i))) for i in range(3)]
    ref = (torch.tensor([-9.0, -7.0, -5.0]), torch.tensor([-8.0, -6.0, -9.0]))
    ctx = StepContext("sigmoid", LossParams(beta=0.5), tok.pad_token_id, torch.device("cpu"), False,
                      contextlib.nullcontext)
    models = [copy.deepcopy(tiny_loaded.model).float() for _ in range(2)]
    for m in models:
        m.train()
    sgd = [torch.optim.SGD(m.parameters(), lr=0.5) for m in models]
    run_step(models[0], sgd[0], [[0, 1, 2]], encoded, ref, ctx, 0.0, 1, [0, 1, 2],
             weights=torch.tensor([1.5, 1.5, 0.0]))
    run_step(models[1], sgd[1], [[0, 1]], encoded[:2], (ref[0][:2], ref[1][:2]), ctx, 0.0, 1, [0, 1])
    start = dict(tiny_loaded.model.named_parameters())
    moved = 0
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        moved += not torch.equal(a, start[name].float())
    assert moved > 0  # the step did change the model
