"""Every training path the window offers, in both precisions a person gets: fp32 and bf16.

The rest of the suite pins fp32 (conftest.py), while "auto" picks bf16 on every GPU and on any
CPU with native bf16; bf16 on a CPU without it is emulated, slower, but computes the same
numbers, so this file needs no special machine. It found the bf16 + gradient checkpointing crash
(attention forced to fp32 by a context the checkpoint's recompute did not reproduce:
`dpo_engine.attention`). Each path trains a few steps of a learnable preference and checks what
the run promises: it finishes in the precision asked, its first loss is ln 2 (the reference is
the starting policy, scored the same way), its loss falls, and what it trains moves.
"""

import math

import pytest
import torch
from safetensors.torch import load_file

from dpo_engine.attention import FP32_SDPA, use_fp32_attention
from dpo_engine.devices import pick_device
from dpo_engine.encoding import encode_pair
from dpo_engine.losses import LossParams
from dpo_engine.models import load_model
from dpo_engine.pairs import conversation
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.train.events import EvalEvent, LogLine, PrecisionChosen, StepEvent, TrainSummary
from dpo_engine.train.loop import load_run_config, run_training, train
from dpo_engine.train.model import enable_checkpointing
from dpo_engine.train.step import StepContext, pair_logps
from tests.train_helpers import make_pairs

pytestmark = [pytest.mark.numerical, pytest.mark.usefixtures("private_cache")]

PRECISIONS = ["float32", "bfloat16"]
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)
# The first step's loss is ln 2 when the reference scored each pair exactly as the policy does.
# In bf16 the reference pass batches pairs differently from the step (other padding), and bf16
# matmuls round by their blocking: measured here up to 2e-4 off ln 2 on the tiny model.
FIRST_LOSS_TOL = {"float32": 1e-6, "bfloat16": 1e-3}


@pytest.fixture(params=PRECISIONS)
def precision(request, monkeypatch):
    """What "auto" means for this test (DPO_STUDIO_DTYPE, as a person's machine decides it)."""
    monkeypatch.setenv("DPO_STUDIO_DTYPE", request.param)
    return request.param


def config(model_dir, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(model_dir), lr=1e-3, batch_size=4, grad_accum=1, warmup_ratio=0.0,
                eval_fraction=0.0, device="cpu", seed=3, max_steps=6)
    return TrainConfig(**{**base, **kw})


def run(cfg, pairs, **kw):
    events = list(train(cfg, pairs, **kw))
    summary = events[-1]
    assert isinstance(summary, TrainSummary), events[-3:]
    return events, [e for e in events if isinstance(e, StepEvent)], summary


PATHS = {  # the options the Train page offers, alone and together
    "full": {},
    "full-checkpointing": {"gradient_checkpointing": True},
    "lora": {"lora": LORA, "lr": 1e-2},
    "lora-checkpointing": {"lora": LORA, "lr": 1e-2, "gradient_checkpointing": True},
    "pairwise-noshare": {"group_answers": False, "share_prompt": False},
}


def ranked_pairs(n_prompts: int):
    """Rankings of three answers: each prompt in three pairs (what `group_answers` batches together)."""
    return [conversation(f"Question {i}: agree?", better, worse) for i in range(n_prompts)
            for better, worse in (("yes", "no"), ("yes", "maybe"), ("maybe", "no no"))]


@pytest.mark.parametrize("path", list(PATHS))
def test_each_training_path_trains_in_each_precision(tiny_model_dir, tmp_path, precision, path):
    cfg = config(tiny_model_dir, tmp_path / "run", **PATHS[path])
    events, steps, summary = run(cfg, make_pairs(16), eval_pairs=make_pairs(4, seed=1))
    _check_run(events, steps, summary, precision)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_grouped_rankings_train_in_each_precision(tiny_model_dir, tmp_path, precision, checkpointing):
    cfg = config(tiny_model_dir, tmp_path / "run", group_answers=True, gradient_checkpointing=checkpointing,
                 batch_size=3)
    events, steps, summary = run(cfg, ranked_pairs(6), eval_pairs=ranked_pairs(2))
    _check_run(events, steps, summary, precision)


def _check_run(events, steps, summary, precision):
    assert summary.status == "finished", summary.reason
    chosen = next(e for e in events if isinstance(e, PrecisionChosen))
    assert chosen.dtype == precision and chosen.autocast == (precision == "bfloat16")
    assert steps[0].loss == pytest.approx(math.log(2), abs=FIRST_LOSS_TOL[precision])
    assert steps[-1].loss < steps[0].loss - 0.05  # it learns "yes" over "no"
    held_out = [e for e in events if isinstance(e, EvalEvent)]
    assert held_out and all(math.isfinite(e.loss) and math.isfinite(e.rewards_margins) for e in held_out)
    fp32_attention = any(isinstance(e, LogLine) and "Attention runs in fp32" in e.message for e in events)
    assert fp32_attention == (precision == "bfloat16")  # on a CPU in bf16 (dpo_engine.attention)


def _loss_and_grads(model, pairs, ctx):
    lp = pair_logps(model, pairs, ctx)
    loss = (lp.chosen_logps - lp.rejected_logps).sum() / 10  # any scalar of both: its gradient reaches every weight
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _peak_bytes(fn) -> int:
    """The most bytes torch's CPU allocator held at once while `fn` ran, above what it held before:
    the profiler's memory records in time order (each op's own allocations net of its own frees,
    and the frees outside any op), summed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients_with_a_smaller_peak(tmp_path, precision, lora):
    """What gradient checkpointing promises: the gradients of training without it (to the
    precision's rounding: the recompute runs the same kernels on the same inputs, so here they
    are bit-equal) for less memory held between the forward and the backward."""
    from tests.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "model", hidden=64, layers=6)  # enough layers for the saving to show
    compute = pick_device("cpu", precision)
    loaded = load_model(str(folder), pick_device("cpu", "float32"))
    model = loaded.model.train()
    if lora:
        from dpo_engine.train.model import wrap_lora

        model = wrap_lora(model, LORA)
    if precision == "bfloat16":
        assert use_fp32_attention(model)
    ctx = StepContext("sigmoid", LossParams(), loaded.tokenizer.pad_token_id, torch.device("cpu"), False,
                      compute.autocast)
    pairs = [encode_pair(loaded.tokenizer, conversation(f"Question {i}: agree?", "yes " * 40, "no " * 30))
             for i in range(4)]
    loss, grads = _loss_and_grads(model, pairs, ctx)
    plain_peak = _peak_bytes(lambda: _loss_and_grads(model, pairs, ctx))
    enable_checkpointing(model)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, pairs, ctx)
    ckpt_peak = _peak_bytes(lambda: _loss_and_grads(model, pairs, ctx))
    assert torch.equal(loss_ckpt, loss)
    assert grads_ckpt.keys() == grads.keys() and grads
    assert all(torch.equal(grads_ckpt[n], grads[n]) for n in grads)
    assert ckpt_peak < 0.8 * plain_peak, (ckpt_peak, plain_peak)


def test_a_bf16_run_does_not_reuse_an_fp32_reference(tiny_model_dir, tmp_path, monkeypatch):
    """The reference cache key holds the precision: an fp32 run's reference log-probs, read by a
    bf16 run of the same data, would start it off ln 2 by the two precisions' difference."""
    pairs = make_pairs(8)
    monkeypatch.setenv("DPO_STUDIO_DTYPE", "float32")
    _, steps32, _ = run(config(tiny_model_dir, tmp_path / "fp32", max_steps=1), pairs)
    monkeypatch.setenv("DPO_STUDIO_DTYPE", "bfloat16")
    events, steps16, _ = run(config(tiny_model_dir, tmp_path / "bf16", max_steps=1), pairs)
    assert not any(getattr(e, "cached", False) for e in events)  # scored again, in bf16
    assert steps16[0].loss == pytest.approx(math.log(2), abs=FIRST_LOSS_TOL["bfloat16"])


def test_a_bf16_checkpointed_lora_run_stops_and_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("DPO_STUDIO_DTYPE", "bfloat16")
    pairs = make_pairs(12)
    kw = dict(max_steps=4, grad_accum=2, lora=LORA, lr=1e-2, gradient_checkpointing=True, batch_size=2)
    _, whole, _ = run(config(tiny_model_dir, tmp_path / "whole", **kw), pairs)
    flag = threading.Event()
    summary = run_training(config(tiny_model_dir, tmp_path / "part", **kw), pairs, stop=flag,
                           on_event=lambda e: isinstance(e, StepEvent) and e.step == 2 and flag.set())
    assert summary.status == "stopped" and summary.step == 2
    _, rest, summary = run(load_run_config(tmp_path / "part"), pairs, resume_from=tmp_path / "part")
    assert summary.status == "finished" and [s.step for s in rest] == [3, 4]
    assert [s.loss for s in rest] == [s.loss for s in whole[2:]]


def test_a_bf16_lora_run_merges_onto_the_base_as_stored(tiny_model_dir, tmp_path, monkeypatch):
    """A LoRA run over a bf16 frozen base saves a merged model whose untouched weights are the base
    file's own, in its own dtype: the base trained in bf16, but the merged model must not carry
    bf16 rounding of weights the run never changed (the before/after comparison would show it)."""
    monkeypatch.setenv("DPO_STUDIO_DTYPE", "bfloat16")
    cfg = config(tiny_model_dir, tmp_path / "run", lora=LORA, lr=1e-2, max_steps=2, merge_lora=True)
    *_, summary = run(cfg, make_pairs(8))
    assert summary.status == "finished"
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    merged = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert merged.keys() == base.keys()
    targets = set(LORA.target_modules)
    for name, tensor in base.items():
        assert merged[name].dtype == tensor.dtype, name
        if not any(f".{t}." in name for t in targets):
            assert torch.equal(merged[name], tensor), name
        else:
            assert not torch.equal(merged[name], tensor), name  # the adapter was merged in


def test_fp32_attention_is_the_model_s_own_and_not_saved(tiny_model_dir, tmp_path):
    """`dpo_engine.attention`: q, k and v reach SDPA in fp32 under bf16 autocast, the linears
    stay bf16, and the choice is not written into a saved config (another process could not
    load an unregistered attention implementation)."""
    import json

    import transformers.integrations.sdpa_attention as sdpa_module

    loaded = load_model(str(tiny_model_dir), pick_device("cpu", "float32"))  # a private copy
    assert use_fp32_attention(loaded.model) and loaded.model.config._attn_implementation == FP32_SDPA
    seen, linear_out = [], []
    original = sdpa_module.sdpa_attention_forward

    def spy(module, query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return original(module, query, key, value, *args, **kwargs)

    sdpa_module.sdpa_attention_forward = spy
    try:
        hook = loaded.model.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda m, a, out: linear_out.append(out.dtype))
        with torch.no_grad(), pick_device("cpu", "bfloat16").autocast():
            loaded.model(torch.tensor([[1, 2, 3, 4, 5]]))
        hook.remove()
    finally:
        sdpa_module.sdpa_attention_forward = original
    assert seen and all(s == (torch.float32,) * 3 + (False,) for s in seen)
    assert linear_out == [torch.bfloat16]
    loaded.model.save_pretrained(tmp_path / "saved")
    assert FP32_SDPA not in (tmp_path / "saved" / "config.json").read_text()
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "llama"


def test_sampling_and_held_out_scores_in_each_precision(tiny_model_dir, precision):
    """The Label page's sampler and the Compare page's held-out summary load the model in the
    window's precision: both run in it (bf16 weights without autocast, where nothing in the
    forward may assume fp32) and give what they promise."""
    from dpo_engine.generate import GenerationSettings, generate
    from dpo_engine.heldout import heldout_events
    from dpo_engine.iters import drain

    loaded = load_model(str(tiny_model_dir), pick_device("cpu"))  # "auto": the precision this machine gets
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, precision)}
    greedy = GenerationSettings(max_new_tokens=12, temperature=0, seed=0)
    result = generate(loaded.model, loaded.tokenizer, "Agree?", n=2, settings=greedy)
    assert len(result.texts) == 2 and result.texts[0] == result.texts[1]  # greedy: one answer, twice
    assert all(0 < n <= 12 for n in result.token_counts)
    summary = drain(heldout_events(loaded.model, loaded.model, loaded.tokenizer, make_pairs(6)))
    assert summary.precision == precision and summary.pairs == 6
    assert summary.trained_logp_margin == pytest.approx(summary.base_logp_margin)  # the same model twice
    assert summary.reward_margin == pytest.approx(0.0, abs=1e-6)
