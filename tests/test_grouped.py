"""Rankings cost their answers, not their pairs: the grouped pass (each distinct prompt and
answer of a micro-batch once) gives the pairwise numbers — loss, metrics, gradients, the
reference log-probs and a whole run's losses — on ranking groups with ties, weights and
cut-off answers; its batches keep a ranking together; the held-out split never cuts one."""

import dataclasses
import math
import random

import pytest
import torch

from dpo_engine.encoding import encode_pair
from dpo_engine.iters import drain
from dpo_engine.pairs import PreferencePair
from dpo_engine.ranking import ranking_pairs
from dpo_engine.train import loop
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.data import epoch_batches, pair_groups, prepare_data, split_eval
from dpo_engine.train.events import EvalEvent, StepEvent, TrainSummary
from dpo_engine.train.groups import answer_groups, grouped_logps, prompt_groups, scoring_batches
from dpo_engine.train.step import StepContext, run_step, policy_scores
from dpo_engine.train.loop import load_run_config, run_training, train

pytestmark = [pytest.mark.numerical,  # floating-point results: also run under other CPU kernels
              pytest.mark.usefixtures("private_cache")]  # training caches reference log-probs there


WORDS = ["yes", "no", "maybe", "sure", "never", "always", "perhaps", "fine"]


def ranking(prompt: str, k: int, rng: random.Random, ties=None, cut: int | None = None, weight: float = 1.0):
    """The pairs of one ranking of k answers (best first); `cut`: that answer did not finish
    (it appears in several pairs, cut off in every one); tied answers give no pair."""
    answers = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) + f" {i}" for i in range(k)]
    out = []
    for rp in ranking_pairs(list(range(k)), ties):
        if rp.tied:
            continue
        out.append(PreferencePair(((("user", prompt),)), answers[rp.better], answers[rp.worse],
                                  chosen_finished=rp.better != cut, rejected_finished=rp.worse != cut,
                                  weight=weight))
    return out


def ranking_data(seed: int = 0) -> list[PreferencePair]:
    """Rankings of 3 and 4 (one with a tie: 5 pairs, one with a cut-off answer, weighted
    differently), a plain pair, and the same answer text finished in one ranking and cut off
    in another under the same prompt."""
    rng = random.Random(seed)
    pairs = (ranking("Rank these: colours?", 4, rng, weight=2.0)
             + ranking("Rank these: animals?", 3, rng, cut=1)
             + ranking("Rank these: numbers?", 4, rng, ties=[False, False, True, False], weight=0.5)
             + [PreferencePair("A plain question?", "a plain yes", "a plain no")]
             + ranking("Rank these: cities?", 3, rng, cut=0, weight=3.0))
    same = pairs[-3]  # cities' best (cut off) over its second
    pairs.append(dataclasses.replace(same, chosen_finished=True, rejected_finished=True, weight=1.0))
    return pairs


@pytest.fixture()
def encoded(tiny_loaded):
    pairs = ranking_data()
    return pairs, [encode_pair(tiny_loaded.tokenizer, p) for p in pairs]


def _ctx(tiny_loaded, grouped: bool, share: bool = True) -> StepContext:
    import contextlib

    from dpo_engine.losses import LossParams

    return StepContext("sigmoid", LossParams(0.1, 0.0, 1.0), tiny_loaded.tokenizer.pad_token_id,
                       torch.device("cpu"), share, contextlib.nullcontext, group_answers=grouped)


def test_answers_are_keyed_by_token_ids_not_text(encoded):
    pairs, enc = encoded
    groups = answer_groups(enc)
    assert len(groups.prompts) == 5  # four rankings and the plain pair
    # 4 + 3 + 4 + 2 + 3 answers, and the cut-off answer's finished twin is one more
    assert len(groups.answers) == 17 and len(enc) == 6 + 3 + 5 + 1 + 3 + 1
    twin = enc[-1], enc[-4]  # the same texts: finished in one, the chosen cut off in the other
    assert twin[0].chosen_ids != twin[1].chosen_ids and twin[0].rejected_ids == twin[1].rejected_ids
    assert groups.chosen[-1] != groups.chosen[-4] and groups.rejected[-1] == groups.rejected[-4]
    for p, c, r in zip(enc, groups.chosen, groups.rejected):
        assert groups.answers[c] == p.chosen_ids and groups.answers[r] == p.rejected_ids
        assert groups.prompts[groups.owners[c]] == groups.prompts[groups.owners[r]] == p.prompt_ids


@pytest.mark.parametrize("share", [True, False], ids=["shared-prompt", "rows"])
def test_grouped_step_equals_the_pairwise_step(tiny_loaded, encoded, share):
    """Loss, metrics, grad norm and every gradient of one optimizer step: grouped == pairwise."""
    model = tiny_loaded.model
    pairs, enc = encoded
    n = len(enc)
    ref = (torch.linspace(-30, -5, n), torch.linspace(-28, -9, n).flip(0))  # a reference unlike the policy
    weights = torch.tensor([p.weight for p in pairs])
    weights = weights / weights.mean()
    micro = [list(range(0, 11)), list(range(11, n))]  # a micro-batch holds whole and partial rankings
    results = []
    for grouped in (False, True):
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in params]
        grads = {}

        class Spy(torch.optim.SGD):  # records the gradients the step applies, then leaves the weights
            def step(self, closure=None):
                grads.update({i: p.grad.detach().clone() for i, p in enumerate(params)})

        opt = Spy(params, lr=0.0)
        metrics, norm = run_step(model, opt, micro, enc, ref, _ctx(tiny_loaded, grouped, share), 1.0, 1,
                                 list(range(n)), weights=weights)
        for p, s in zip(params, saved):
            assert torch.equal(p.detach(), s)
        results.append((metrics, norm, grads))
    (m0, n0, g0), (m1, n1, g1) = results
    assert m0.keys() == m1.keys() and "loss" in m0
    for key in m0:
        assert m1[key] == pytest.approx(m0[key], rel=1e-5, abs=1e-6), key
    assert n1 == pytest.approx(n0, rel=1e-5)
    assert m0["loss"] != pytest.approx(math.log(2), abs=1e-3)  # a step that carries information
    for i in g0:
        torch.testing.assert_close(g1[i], g0[i], rtol=1e-5, atol=1e-6 * max(1.0, g0[i].abs().max().item()))


def test_grouped_logps_equal_pairwise_and_run_each_answer_once(tiny_loaded, encoded, monkeypatch):
    from dpo_engine.train import groups as groups_module

    model = tiny_loaded.model
    _, enc = encoded
    pad = tiny_loaded.tokenizer.pad_token_id
    from dpo_engine.shared_prompt import shared_prompt_logps

    with torch.no_grad():
        a = shared_prompt_logps(model, enc, pad)
        seen = []
        real = groups_module.answer_logps
        monkeypatch.setattr(groups_module, "answer_logps",
                            lambda m, prompts, owners, answers, *rest: seen.append((len(prompts), len(answers)))
                            or real(m, prompts, owners, answers, *rest))
        b = grouped_logps(model, enc, pad)
    assert seen == [(5, 17)]  # 5 prompts and 17 answers run, where pairwise runs 19 prompts and 38 answers
    torch.testing.assert_close(b.chosen_logps, a.chosen_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.rejected_logps, a.rejected_logps, rtol=1e-5, atol=1e-5)
    assert torch.equal(b.chosen_tokens, a.chosen_tokens) and torch.equal(b.rejected_tokens, a.rejected_tokens)


def test_reference_logps_are_the_pairwise_ones(tiny_loaded, encoded):
    model = tiny_loaded.model  # shared by the session's tests: leave it in the mode it came in
    _, enc = encoded
    was_training = model.training
    model.eval()
    try:
        pairwise = drain(policy_scores(model, enc, _ctx(tiny_loaded, False), 2))
        gen = policy_scores(model, enc, _ctx(tiny_loaded, True), 2)
        progress = []
        try:
            while True:
                progress.append(next(gen))
        except StopIteration as stop:
            grouped = stop.value
    finally:
        model.train(was_training)
    assert progress[-1] == len(enc) and progress == sorted(progress)
    for a, b in zip(pairwise, grouped):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_scoring_batches_hold_whole_rankings_within_the_row_budget(encoded):
    _, enc = encoded
    for batch_size in (1, 2, 4, 8):
        batches = scoring_batches(enc, batch_size)
        assert sorted(i for b in batches for i in b) == list(range(len(enc)))
        for b in batches:
            rows = len(answer_groups([enc[i] for i in b]).answers)
            assert rows <= max(2 * batch_size, 2)
    # with room for 8 rows, no ranking (at most 4 answers here) is split over two batches
    where = {i: n for n, b in enumerate(scoring_batches(enc, 4)) for i in b}
    for group in prompt_groups(enc):
        assert len({where[i] for i in group}) == 1


def synthetic_rankings(n: int, seed: int = 0):
    """EncodedPairs of n rankings of 4 or 8 answers (all pairs), of varied lengths."""
    from dpo_engine.encoding import EncodedPair

    rng = random.Random(seed)
    out = []
    for g in range(n):
        k = rng.choice([4, 8])
        prompt = tuple([1000 + g] * rng.randint(3, 30))
        answers = [tuple([a + 1] * rng.randint(1, 40)) for a in range(k)]
        out += [EncodedPair(prompt, answers[i], answers[j]) for i in range(k) for j in range(i + 1, k)]
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("batch_size", [2, 4, 8])
def test_epoch_batches_keep_rankings_together_and_the_pairwise_shape(batch_size):
    enc = synthetic_rankings(30)
    lengths = [p.length for p in enc]
    groups = prompt_groups(enc)
    assert len(groups) == 30
    singletons = [[i] for i in range(len(enc))]

    def rows(batches):
        return sum(len(answer_groups([enc[i] for i in b]).answers) for b in batches)

    for epoch in range(3):
        plain = epoch_batches(lengths, batch_size, 7, epoch)
        assert epoch_batches(lengths, batch_size, 7, epoch, singletons) == plain  # groups of one: as before
        grouped = epoch_batches(lengths, batch_size, 7, epoch, groups)
        assert sorted(len(b) for b in grouped) == sorted(len(b) for b in plain)  # same pairs per micro-batch
        assert sorted(i for b in grouped for i in b) == list(range(len(enc)))
        where = {i: n for n, b in enumerate(grouped) for i in b}
        for g in groups:  # a ranking's pairs lie side by side: at most one batch more than they fill
            assert len({where[i] for i in g}) <= math.ceil(len(g) / batch_size) + 1
        # a batch of b pairs from one ranking touches ~sqrt(2b) + 1 answers, not 2b
        assert rows(grouped) < {2: 0.85, 4: 0.8, 8: 0.65}[batch_size] * rows(plain), (rows(grouped), rows(plain))


def test_held_out_split_never_cuts_a_ranking():
    pairs = []
    rng = random.Random(1)
    for g in range(12):
        pairs += ranking(f"Ranking {g}?", rng.choice([3, 4]), rng)
    rng.shuffle(pairs)
    groups = pair_groups(pairs)
    assert len(groups) == 12
    for seed in range(20):
        train_idx, eval_idx = split_eval(len(pairs), 0.2, seed, groups)
        assert sorted(train_idx + eval_idx) == list(range(len(pairs))) and eval_idx
        held = {pairs[i].prompt for i in eval_idx}
        assert held.isdisjoint(pairs[i].prompt for i in train_idx)
        assert len(eval_idx) >= round(0.2 * len(pairs))
    # pairs of distinct prompts: the very split of before (every pair its own group)
    assert split_eval(30, 0.1, 5, [[i] for i in range(30)]) == split_eval(30, 0.1, 5)
    assert split_eval(5, 0.5, 1, [[0, 1, 2, 3, 4]]) == ([0, 1, 2, 3, 4], [])  # one ranking: nothing to hold out


def test_prepare_data_splits_by_prompt_when_grouping(tiny_loaded, tmp_path):
    pairs = []
    rng = random.Random(2)
    for g in range(10):
        pairs += ranking(f"Q{g}?", 4, rng)
    cfg = TrainConfig(output_dir=str(tmp_path), eval_fraction=0.25, seed=4)
    data = prepare_data(tiny_loaded.tokenizer, pairs, None, cfg)
    train_prompts = {pairs[i].prompt for i in data.train_index}
    eval_prompts = {pairs[i].prompt for i in data.eval_index}
    assert train_prompts.isdisjoint(eval_prompts) and eval_prompts


def _config(tiny_model_dir, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(tiny_model_dir), lr=1e-3, batch_size=4, grad_accum=2,
                warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3, max_steps=4, eval_every=0)
    return TrainConfig(**{**base, **kw})


def _steps(cfg, pairs, evals: list | None = None, **kw):
    events = list(train(cfg, pairs, **kw))
    assert isinstance(events[-1], TrainSummary) and events[-1].status == "finished", events[-1]
    if evals is not None:
        evals += [e for e in events if isinstance(e, EvalEvent)]
    return [e for e in events if isinstance(e, StepEvent)]


def _pairwise_compute(monkeypatch):
    """The grouped batches, computed pair by pair (the switch's compute half off)."""
    real = StepContext
    monkeypatch.setattr(loop, "StepContext", lambda *a, **k: real(*a, **{**k, "group_answers": False}))


def test_a_grouped_run_has_the_pairwise_losses(tiny_model_dir, tmp_path, monkeypatch):
    pairs = ranking_data() + ranking_data(seed=1)
    evals: tuple[list, list] = ([], [])
    grouped = _steps(_config(tiny_model_dir, tmp_path / "grouped", eval_fraction=0.2, eval_every=2), pairs, evals[0])
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache-2"))  # the reference scored again, pairwise
    with monkeypatch.context() as m:
        _pairwise_compute(m)
        pairwise = _steps(_config(tiny_model_dir, tmp_path / "pairwise", eval_fraction=0.2, eval_every=2), pairs,
                          evals[1])
    assert len(grouped) == len(pairwise) == 4
    for a, b in zip(grouped, pairwise):
        # Step 1 scores the policy before its first update, when it equals its reference: every
        # margin is rounding noise around 0 and the share of margins > 0 flips with the CPU's
        # matmul kernels (0.0 vs 0.125 on an AMX Xeon). The margins themselves are compared at
        # every step; their sign only once the policy has moved (margins ~1e-2, noise ~1e-6).
        names = ("loss", "rewards_margins", "logps_chosen", "logps_rejected", "grad_norm")
        for name in names + (("rewards_accuracies",) if a.step > 1 else ()):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-4, abs=1e-5), (a.step, name)
    assert abs(grouped[0].rewards_margins) < 1e-4 < min(abs(s.rewards_margins) for s in grouped[1:])
    assert len({round(s.loss, 6) for s in grouped}) == 4  # the steps moved the policy
    assert [e.step for e in evals[0]] == [e.step for e in evals[1]] == [2, 4]
    for a, b in zip(*evals):  # the held-out pass (grouped scoring) too
        assert a.num_pairs == b.num_pairs > 0
        for name in ("loss", "rewards_accuracies", "rewards_margins", "logps_chosen", "logps_rejected"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-4, abs=1e-5), (a.step, name)


def test_on_pairs_of_distinct_prompts_the_switch_changes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    pairs = [PreferencePair(f"Question {i}?", "yes " * (1 + i % 3), "no " * (1 + i % 2)) for i in range(16)]
    on = _steps(_config(tiny_model_dir, tmp_path / "on", eval_fraction=0.2), pairs)
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache-2"))
    off = _steps(_config(tiny_model_dir, tmp_path / "off", eval_fraction=0.2, group_answers=False), pairs)
    # the same batches, scored by two code paths (grouped and shared-prompt): equal up to the
    # rounding of different row layouts; a change of batching or split moves a loss by ~1e-2
    assert [s.loss for s in on] == pytest.approx([s.loss for s in off], rel=1e-5)


def test_a_grouped_run_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    import threading

    pairs = ranking_data() + ranking_data(seed=1)  # 38 pairs: 10 micro-batches -> 5 steps per epoch
    kw = dict(max_steps=7, schedule="cosine", warmup_steps=1, batch_size=4, grad_accum=2)
    whole = _steps(_config(tiny_model_dir, tmp_path / "whole", **kw), pairs)
    flag = threading.Event()
    summary = run_training(_config(tiny_model_dir, tmp_path / "part", **kw), pairs, stop=flag,
                           on_event=lambda e: isinstance(e, StepEvent) and e.step == 3 and flag.set())
    assert summary.status == "stopped" and summary.step == 3
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "fresh-cache"))
    resumed = load_run_config(tmp_path / "part")
    assert resumed.group_answers
    rest = _steps(resumed, pairs, resume_from=tmp_path / "part")
    assert [s.step for s in rest] == [4, 5, 6, 7]
    assert [s.loss for s in rest] == [s.loss for s in whole[3:]]  # exactly, across an epoch boundary


def test_a_run_saved_before_the_switch_resumes_pairwise(tmp_path):
    old = TrainConfig(output_dir=str(tmp_path)).to_dict()
    del old["group_answers"]
    assert TrainConfig.from_dict(old).group_answers is False
    assert TrainConfig.from_dict(TrainConfig(output_dir=str(tmp_path)).to_dict()).group_answers is True
