"""A LoRA run's frozen base in the compute precision (CPU capability mocked both ways): bf16
where the run's precision is bf16, fp32 otherwise, the adapter and its AdamW state always fp32;
full fine-tunes keep fp32 master weights. Over a bf16 base the first step is still at loss
ln 2 (the reference, the policy with its adapter off, scores in the same precision), the
adapter moves and the base does not; in fp32 the adapter-off pass is exactly the base model."""

import math

import pytest
import torch

from dpo_engine.encoding import encode_pair
from dpo_engine.losses import LossParams
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.train.model import load_policy, trainable_parameters, training_plan
from dpo_engine.train.step import StepContext, pair_logps, run_step
from tests.train_helpers import make_pairs


def config(model_dir, tmp_path, lora: bool, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "run"), model=str(model_dir), lr=1e-2, batch_size=4, grad_accum=1,
                       warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3, max_steps=2,
                       lora=LoraSettings(rank=4, alpha=8, dropout=0.0) if lora else None, **kw)


def split(model):
    """(adapter parameters, base parameters) of a peft model."""
    adapter = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    base = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    return adapter, base


@pytest.mark.parametrize("native_bf16", [True, False], ids=["bf16-cpu", "fp32-cpu"])
def test_lora_base_follows_the_compute_precision(tiny_model_dir, tmp_path, cpu, native_bf16):
    cpu.flags = ["avx512_bf16"] if native_bf16 else []
    cfg = config(tiny_model_dir, tmp_path, lora=True)
    plan = training_plan(cfg)
    device, compute = plan.weights_choice(), plan.compute_choice()
    want = torch.bfloat16 if native_bf16 else torch.float32
    assert compute.torch_dtype == want and device.torch_dtype == want
    model = load_policy(cfg, device, None, cfg.model).model
    adapter, base = split(model)
    assert adapter and all(p.dtype == torch.float32 and p.requires_grad for _, p in adapter)
    assert base and all(p.dtype == want and not p.requires_grad for _, p in base)
    assert trainable_parameters(model) == [p for _, p in adapter]


def test_full_fine_tune_keeps_fp32_master_weights_on_a_bf16_cpu(tiny_model_dir, tmp_path, cpu):
    cfg = config(tiny_model_dir, tmp_path, lora=False)
    plan = training_plan(cfg)
    device, compute = plan.weights_choice(), plan.compute_choice()
    assert (device.dtype, compute.dtype) == ("float32", "bfloat16")
    model = load_policy(cfg, device, None, cfg.model).model
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_step_over_a_bf16_base_starts_at_ln2_and_moves_only_the_adapter(tiny_model_dir, tmp_path, cpu):
    cfg = config(tiny_model_dir, tmp_path, lora=True)
    plan = training_plan(cfg)
    device, compute = plan.weights_choice(), plan.compute_choice()
    loaded = load_policy(cfg, device, None, cfg.model)
    model = loaded.model
    ctx = StepContext("sigmoid", LossParams(), loaded.tokenizer.pad_token_id, torch.device("cpu"), True,
                      compute.autocast)
    pairs = [encode_pair(loaded.tokenizer, p) for p in make_pairs(4)]
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        ref = pair_logps(model, pairs, ctx)  # the reference: the base alone, as train.reference does
    model.train()
    adapter, base = split(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    metrics, grad_norm = run_step(model, optimizer, [[0, 1, 2, 3]], pairs, (ref.chosen_logps, ref.rejected_logps),
                                  ctx, 1.0, 1, range(4))
    assert ref.chosen_logps.dtype == torch.float32
    # LoRA's B starts at zero, so the policy is the base: the loss is ln 2 to float rounding of fp32 sums
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6) and grad_norm > 0
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimizer.state.values()) and optimizer.state
    assert any(not torch.equal(before[n], p) for n, p in adapter)
    assert all(torch.equal(before[n], p) for n, p in base)


def test_in_fp32_the_adapter_off_pass_is_the_base_model(tiny_model_dir, tmp_path, tiny_loaded):
    """The reference pass of a LoRA run (adapter disabled, after the adapter trained) scores
    exactly what the plain base model scores: the fp32 base is untouched by LoRA."""
    cfg = config(tiny_model_dir, tmp_path, lora=True, dtype="float32")
    plan = training_plan(cfg)
    device, compute = plan.weights_choice(), plan.compute_choice()
    loaded = load_policy(cfg, device, None, cfg.model)
    model = loaded.model
    with torch.no_grad():
        for _, p in split(model)[0]:
            p.add_(0.05 * torch.randn_like(p))  # a trained-looking adapter: B no longer zero
    ctx = StepContext("sigmoid", LossParams(), loaded.tokenizer.pad_token_id, torch.device("cpu"), True,
                      compute.autocast)
    pairs = [encode_pair(loaded.tokenizer, p) for p in make_pairs(4)]
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            off = pair_logps(model, pairs, ctx)
        on = pair_logps(model, pairs, ctx)
        plain = pair_logps(tiny_loaded.model, pairs, ctx)
    assert torch.equal(off.chosen_logps, plain.chosen_logps) and torch.equal(off.rejected_logps, plain.rejected_logps)
    assert not torch.allclose(on.chosen_logps, plain.chosen_logps)  # the adapter does change the scores


def test_a_lora_run_on_a_bf16_cpu_says_its_base_is_bf16(tiny_model_dir, tmp_path, cpu):
    from dpo_engine.train.events import LogLine, StepEvent
    from dpo_engine.train.loop import train

    events = list(train(config(tiny_model_dir, tmp_path, lora=True), make_pairs(16)))
    lines = [e.message for e in events if isinstance(e, LogLine)]
    assert any("bf16 autocast over a bf16 frozen base" in line for line in lines), lines
    first = next(e for e in events if isinstance(e, StepEvent))
    assert first.loss == pytest.approx(math.log(2), abs=1e-6)
