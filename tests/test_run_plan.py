"""The run plan: one decision of how a model runs here, read by the catalog, the trainer (its log
line and reference cache key) and the Train page; one rule for "auto" behind all of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dpo_engine import devices
from dpo_engine.catalog import with_fit
from dpo_engine.catalog.entry import CatalogEntry
from dpo_engine.catalog.fit import ModelShape, fit_verdict
from dpo_engine.run_plan import PlanRequest, plan_run
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.train.model import training_plan

GiB = 2**30
ENGINE = Path(__file__).resolve().parent.parent / "dpo_engine"


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA GPU with bf16, as pick_device sees it (nothing runs on it)."""
    monkeypatch.setattr(devices, "_device", lambda device: ("cuda", "a CUDA GPU is available"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("DPO_STUDIO_DTYPE", raising=False)


@pytest.mark.parametrize("request_, weights, attention, key", [
    (PlanRequest("cpu", "float32"), "float32", "float32", "fp32"),
    (PlanRequest("cpu", "bfloat16"), "float32", "float32", "bf16-fp32-attention"),  # full: fp32 master weights
    (PlanRequest("cpu", "bfloat16", lora=True), "bfloat16", "float32", "bf16-bf16-base-fp32-attention"),
    (PlanRequest("cpu", "bfloat16", lora=True, base_bits=4), "bfloat16", "float32",
     "bf16-bf16-base-nf4-fp32-attention"),
    (PlanRequest("cpu", "float32", lora=True, base_bits=4), "float32", "float32", "fp32-nf4"),
], ids=["fp32", "bf16-full", "bf16-lora", "bf16-nf4", "fp32-nf4"])
def test_each_plan_names_its_weights_attention_and_cache_key(request_, weights, attention, key):
    plan = plan_run(request_)
    assert (plan.weights, plan.attention, plan.key) == (weights, attention, key)
    assert plan.weights_choice().dtype == weights and plan.compute_choice().dtype == request_.dtype
    assert plan.base_bits == request_.base_bits


def test_on_a_gpu_attention_stays_in_the_compute_precision(gpu):
    plan = plan_run(PlanRequest("cuda", lora=True))
    assert (plan.device, plan.compute, plan.attention, plan.base) == ("cuda", "bfloat16", "bfloat16", "bf16")
    assert plan.key == "bf16-bf16-base" and plan.compute_reason == "bf16: the GPU supports it"
    assert plan.describe("cuda:0 (H100)") == ("cuda:0 (H100) in bf16 autocast over a bf16 frozen base "
                                              "(bf16: the GPU supports it)")


def test_the_catalog_and_the_trainer_ask_the_same_rule_and_only_the_trainer_measures(cpu, tmp_path):
    """Native bf16 and no measurement yet: the catalog takes bf16 without timing anything, the
    trainer times it once; then a measurement that finds bf16 slow turns both to fp32."""
    shape = ModelShape(135_000_000, hidden=576, layers=30, ffn=1536, vocab=49_152, kv_dim=192)
    entry = CatalogEntry("smol", "folder", str(tmp_path), parameters=shape.parameters, shape=shape)
    listed = with_fit(entry, 64 * GiB, "cpu").fit.plan
    assert (listed.compute, cpu.measured) == ("bfloat16", 0) and "not measured yet" in listed.compute_reason
    config = TrainConfig(output_dir=str(tmp_path / "out"), device="cpu")
    trained = training_plan(config)
    assert (trained.compute, cpu.measured) == ("bfloat16", 1)
    devices.precision_cache_file().unlink()
    cpu.speedup = 1.0
    assert training_plan(config).compute == "float32" and cpu.measured == 2
    assert with_fit(entry, 64 * GiB, "cpu").fit.plan.compute == "float32" and cpu.measured == 2


def test_the_fit_verdict_is_the_plan_of_the_mode_that_fits(gpu):
    """Llama-3.2-3B's shape on a bf16 GPU where bitsandbytes runs: a full fine-tune with plenty free;
    LoRA over a bf16 base with checkpointing in 2-pair micro-batches at 12 GiB; over NF4 in 2-pair
    micro-batches on an 8 GB card, saying what did not fit; none at 4 GiB."""
    from tests.test_fit_modes import LLAMA_3_2_3B, shape_of

    shape = shape_of(LLAMA_3_2_3B)

    def fitted(free):
        plan = plan_run(PlanRequest("cuda"), shape.parameters, free, measure=False)
        return fit_verdict(shape, free, "cuda", plan=plan, four_bit=None).plan

    roomy = fitted(200 * GiB)
    assert (roomy.mode, roomy.lora, roomy.checkpointing, roomy.scoring) == ("full", False, False, "float32")
    bf16 = fitted(12 * GiB)
    assert (bf16.mode, bf16.base_bits, bf16.checkpointing, bf16.micro_batch) == ("LoRA bf16", None, True, 2)
    assert bf16.scoring == "bfloat16" and "fp32 weights do not fit" in bf16.scoring_reason  # 12.0 GiB of fp32
    tight = fitted(8 * GiB)
    assert (tight.mode, tight.base_bits, tight.checkpointing, tight.micro_batch) == ("LoRA 4-bit", 4, True, 2)
    assert tight.base_reason.startswith("LoRA 4-bit with checkpointing in micro-batches of 2 pairs fits (6.0 GiB "
                                        "of 7.2 GiB") and tight.base_reason.endswith(
        "LoRA 4-bit with checkpointing needs ~8.7 GiB")  # the closest that did not fit: 4 pairs
    assert tight.micro_batch_reason == tight.base_reason
    assert fitted(4 * GiB) is None


def test_the_trainers_log_line_and_reference_key_come_from_the_plan(tiny_model_dir, tmp_path, monkeypatch):
    from dpo_engine.train import loop
    from dpo_engine.train.events import LogLine
    from tests.train_helpers import make_pairs

    seen = {}

    def reference(config, data, ctx, device, key, *rest):
        seen["key"], seen["device"] = key, device
        raise KeyboardInterrupt  # setup is what is checked; no model needs to load

    monkeypatch.setattr(loop, "_reference", reference)
    config = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), lora=LoraSettings(rank=4),
                         device="cpu", dtype="bfloat16", max_steps=1, eval_fraction=0.0)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        for event in loop.train(config, make_pairs(4)):
            lines += [event.message] if isinstance(event, LogLine) else []
    plan = training_plan(config)
    assert f"Training on {plan.describe()}" in lines and seen["key"] == plan.key == "bf16-bf16-base-fp32-attention"
    assert seen["device"] == plan.weights_choice()


def test_no_second_rule_for_auto():
    """Only devices.py (and the measurement it asks, precision.py) reads what the hardware runs in bf16."""
    probes = re.compile(r"is_bf16_supported\(|native_bf16_flags\(|cpu_precision\(|DPO_STUDIO_DTYPE\"\]|"
                        r"environ\.get\(\"DPO_STUDIO_DTYPE")
    found = {path.relative_to(ENGINE).as_posix() for path in ENGINE.rglob("*.py") if probes.search(path.read_text())}
    assert found == {"devices.py", "precision.py"}
