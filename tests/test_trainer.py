"""The trainer on the tiny model: it learns a learnable preference, every trainable tensor
moves, stop saves, resume continues exactly (full and LoRA), NaN and bad data are refused
with messages, and the output folder loads as a model."""

import math
import threading

import pytest
import torch
from safetensors.torch import load_file

from dpo_engine import losses
from dpo_engine.atomic import find_checkpoint, read_manifest
from dpo_engine.train.checkpoints import read_run_file
from dpo_engine.errors import ConfigError, DataError
from dpo_engine.pairs import conversation
from dpo_engine.shared_prompt import shared_prompt_logps
from dpo_engine.encoding import collate, encode_pair
from dpo_engine.logps import batch_logps
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.train.events import EvalEvent, StepEvent, TrainSummary
from dpo_engine.train.loop import load_run_config, run_training, train
from tests.train_helpers import bf16_step_setup, make_pairs


pytestmark = [pytest.mark.numerical,  # floating-point results: also run under other CPU kernels
              pytest.mark.usefixtures("private_cache")]  # training caches reference log-probs there


def config(tiny_model_dir, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(tiny_model_dir), lr=1e-3, batch_size=4, grad_accum=1,
                warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3)
    return TrainConfig(**{**base, **kw})


def events_of(cfg, pairs, **kw):
    events = list(train(cfg, pairs, **kw))
    assert isinstance(events[-1], TrainSummary) and sum(isinstance(e, TrainSummary) for e in events) == 1
    return [e for e in events if isinstance(e, StepEvent)], [e for e in events if isinstance(e, EvalEvent)], events[-1]


def test_learns_a_learnable_preference(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path / "run", max_steps=12, eval_every=6)
    steps, evals, summary = events_of(cfg, make_pairs(24), eval_pairs=make_pairs(8, seed=1))
    assert summary.status == "finished" and summary.step == 12
    assert steps[0].loss == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert sum(s.loss for s in steps[-3:]) / 3 < steps[0].loss - 0.1
    assert [e.step for e in evals] == [6, 12]
    assert evals[-1].rewards_accuracies >= 0.75 and evals[-1].loss < math.log(2)
    assert evals[-1].rewards_margins > evals[0].rewards_margins > 0
    assert all(s.total_steps == 12 and s.tokens_per_s > 0 and s.learning_rate > 0 for s in steps)
    assert steps[-1].eta == 0 and steps[-1].epoch == pytest.approx(2.0)


def test_every_trainable_tensor_changes_after_one_step(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path / "run", max_steps=1)
    *_, summary = events_of(cfg, make_pairs(8))
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_output_loads_with_transformers_and_the_engine(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from dpo_engine.models import load_model

    cfg = config(tiny_model_dir, tmp_path / "run", max_steps=2)
    events_of(cfg, make_pairs(8))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    ours = load_model(str(tmp_path / "run"), None)
    assert torch.equal(hf.model.embed_tokens.weight, ours.model.model.embed_tokens.weight.cpu())
    info = read_run_file(tmp_path / "run")
    assert info["base"] == str(tiny_model_dir) and info["reference"] == str(tiny_model_dir)
    assert info["status"] == "finished" and info["step"] == 2


def test_shared_prompt_forward_matches_the_concatenated_one(tiny_loaded):
    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    enc = [encode_pair(tok, p) for p in make_pairs(5)]
    a = batch_logps(model, collate(enc, tok.pad_token_id))
    b = shared_prompt_logps(model, enc, tok.pad_token_id)
    torch.testing.assert_close(b.chosen_logps, a.chosen_logps, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(b.rejected_logps, a.rejected_logps, atol=1e-4, rtol=1e-5)
    assert torch.equal(b.chosen_tokens, a.chosen_tokens) and torch.equal(b.rejected_tokens, a.rejected_tokens)
    grads = []
    for lp in (a, b):
        model.zero_grad()
        (lp.chosen_logps - 2 * lp.rejected_logps).sum().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    model.zero_grad()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-3)


def _stop_after(step: int):
    flag = threading.Event()
    return flag, lambda e: isinstance(e, StepEvent) and e.step == step and flag.set()


@pytest.mark.parametrize("lora", [None, LoraSettings(rank=4, alpha=8, dropout=0.0)], ids=["full", "lora"])
def test_stop_saves_and_resume_continues_exactly(tiny_model_dir, tmp_path, monkeypatch, lora):
    pairs = make_pairs(12)  # 3 micro-batches -> 2 steps per epoch: the resume crosses an epoch
    kw = dict(max_steps=5, grad_accum=2, lora=lora, lr=1e-2 if lora else 1e-3, schedule="cosine", warmup_steps=1)
    whole, *_ = events_of(config(tiny_model_dir, tmp_path / "whole", **kw), pairs)

    flag, on_event = _stop_after(3)
    summary = run_training(config(tiny_model_dir, tmp_path / "part", **kw), pairs, stop=flag, on_event=on_event)
    assert summary.status == "stopped" and summary.step == 3
    assert read_manifest(tmp_path / "part")["step"] == 3 and read_run_file(tmp_path / "part")["status"] == "stopped"
    assert (tmp_path / "part" / "trainer_state" / "optimizer.pt").is_file()  # a stopped run keeps what resume needs
    assert not (tmp_path / "whole" / "trainer_state" / "optimizer.pt").exists()  # a finished one drops its moments

    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "fresh-cache"))  # the reference is scored again
    resumed_cfg = load_run_config(tmp_path / "part")
    rest, _, summary = events_of(resumed_cfg, pairs, resume_from=tmp_path / "part")
    assert summary.status == "finished" and [s.step for s in rest] == [4, 5]
    assert [s.loss for s in rest] == [s.loss for s in whole[3:]]  # exactly, not approximately
    assert [s.learning_rate for s in rest] == [s.learning_rate for s in whole[3:]]


def test_lora_merged_output_matches_the_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = LoraSettings(rank=4, alpha=8, dropout=0.0)
    out = tmp_path / "run"
    steps, _, summary = events_of(config(tiny_model_dir, out, max_steps=4, lr=1e-2, lora=lora, merge_lora=True),
                                  make_pairs(8))
    assert summary.status == "finished" and steps[-1].loss < steps[0].loss
    merged = AutoModelForCausalLM.from_pretrained(out)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    ids = torch.tensor([[5, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-6)


def test_non_finite_loss_stops_naming_step_and_pairs(tiny_model_dir, tmp_path, monkeypatch):
    calls = {"n": 0}

    def nan_on_third_step(pc, pr, rc, rr, **kw):
        calls["n"] += 1
        out = losses.sigmoid(pc, pr, rc, rr, **kw)
        return out._replace(losses=out.losses * float("nan")) if calls["n"] == 3 else out

    monkeypatch.setitem(losses.LOSSES, "nan_test", nan_on_third_step)
    out = tmp_path / "run"
    steps, _, summary = events_of(config(tiny_model_dir, out, loss="nan_test", max_steps=5, save_every=2),
                                  make_pairs(8))
    assert summary.status == "failed" and [s.step for s in steps] == [1, 2]
    assert "Step 3" in summary.reason and "not finite" in summary.reason and "pairs #" in summary.reason
    assert summary.checkpoint == str(out.absolute()) and read_manifest(out)["step"] == 2


def test_unusable_data_is_refused_before_any_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    import dpo_engine.train.model
    import dpo_engine.train.loop

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(dpo_engine.train.loop, "load_model", no_load)
    monkeypatch.setattr(dpo_engine.train.model, "load_model", no_load)
    long_prompt = [conversation("x" * 400, "yes", "no") for _ in range(6)]
    with pytest.raises(DataError, match="max_length"):
        list(train(config(tiny_model_dir, tmp_path / "a", max_length=64), long_prompt))
    with pytest.raises(DataError, match="at least 2"):
        list(train(config(tiny_model_dir, tmp_path / "b"), make_pairs(1)))


def test_config_errors_say_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(output_dir=str(tmp_path), lr=0)
    with pytest.raises(ConfigError, match="Unknown loss 'dpo'.*sigmoid"):
        TrainConfig(output_dir=str(tmp_path), loss="dpo")
    with pytest.raises(ConfigError, match="merge_lora needs LoRA"):
        TrainConfig(output_dir=str(tmp_path), merge_lora=True)
    cfg = TrainConfig(output_dir="x", lora=LoraSettings(rank=8))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_refuses_to_overwrite_a_finished_run(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path / "run", max_steps=1)
    events_of(cfg, make_pairs(8))
    with pytest.raises(ConfigError, match="--resume"):
        list(train(cfg, make_pairs(8)))
    assert find_checkpoint(tmp_path / "run") is not None


def test_a_bf16_step_casts_each_weight_once_for_all_its_micro_batches(tiny_model_dir):
    """Two micro-batches under bf16 autocast: every weight is cast to bf16 once per step
    (`step.casts_kept`), and the step trains exactly as one cast per micro-batch did."""
    from contextlib import nullcontext

    from torch.utils._python_dispatch import TorchDispatchMode

    from dpo_engine.train import step
    from dpo_engine.train.step import run_step

    class WeightCasts(TorchDispatchMode):
        def __init__(self, weights):
            super().__init__()
            self.ptrs, self.count = {w.data_ptr() for w in weights}, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.ptrs \
                    and kwargs.get("dtype") == torch.bfloat16:
                self.count += 1
            return func(*args, **kwargs)

    def trained(keep_casts: bool):
        model, ctx, pairs, ref = bf16_step_setup(tiny_model_dir)
        ref = (ref.chosen_logps + 0.1, ref.rejected_logps - 0.1)  # not ln 2 exactly: a gradient of some size
        weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        original = step.casts_kept
        if not keep_casts:
            step.casts_kept = lambda _ctx: nullcontext()  # the step before: one autocast scope per forward
        try:
            with WeightCasts(weights) as casts:
                run_step(model, optimizer, [[0, 1], [2, 3]], pairs, ref, ctx, 0.0, 1, range(4))
        finally:
            step.casts_kept = original
        return casts.count, len(weights), {n: p.detach() for n, p in model.named_parameters()}

    once, n_weights, after = trained(keep_casts=True)
    per_forward, _, before = trained(keep_casts=False)
    assert n_weights > 0 and once == n_weights  # each weight once for the whole step
    assert per_forward == 2 * n_weights  # was: once per micro-batch
    # the same bf16 copies, the same step: equal but for the tied embedding / LM head, whose two
    # gradients (lookup and head) add up in another order (7e-9 apart, one fp32 rounding)
    assert all(torch.allclose(after[n], before[n], rtol=0, atol=1e-7) for n in after)
    assert sum(not torch.equal(after[n], before[n]) for n in after) <= 1
