"""Fit verdicts by mode (full / full+checkpointing / LoRA bf16 / LoRA 4-bit / too large) for the
published configs of real models, read through the catalog's own config reader; the head
estimate follows the chunked head; 4-bit is offered only where bitsandbytes runs, and a 4-bit
run is refused with the reason where it does not."""


import pytest

from dpo_engine import quant
from dpo_engine.catalog import fit as fit_mod
from dpo_engine.catalog.readers import shape_from_config
from dpo_engine.catalog.fit import FULL_FITS, LORA_ONLY, TOO_LARGE, fit_verdict

GB = 10**9
GiB = 2**30
# config.json as published on the models' Hugging Face pages (the fields that shape the network)
LLAMA_3_2_3B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
                "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
                "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
GEMMA_2_2B = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": 256000,
              "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 256, "final_logit_softcapping": 30.0, "torch_dtype": "float32"}
LLAMA_3_2_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
                "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
LLAMA_3_1_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
                "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def shape_of(config: dict, tmp_path=None):
    """The catalog's shape of a published config.json (the parameter count estimated from it,
    as for a model listed from a hub cache before its weights are read)."""
    shape, estimated = shape_from_config(config, None)
    assert estimated
    return shape


@pytest.mark.parametrize("config, billions", [(LLAMA_3_2_3B, 3.2), (GEMMA_2_2B, 2.6)], ids=["llama-3.2-3b", "gemma-2-2b"])
def test_3b_class_models_train_with_lora_on_a_16gb_bf16_cpu(config, billions, tmp_path):
    shape = shape_of(config, tmp_path)
    assert shape.parameters == pytest.approx(billions * 1e9, rel=0.05)
    v = fit_verdict(shape, 16 * GiB, "cpu", precision="bfloat16", four_bit="bitsandbytes not installed")
    assert (v.verdict, v.mode, v.base) == (LORA_ONLY, "LoRA bf16", "bf16")
    # bench/real_size.py's batch (4 pairs, rows of ~220 tokens): within 12 GB, beside the OS and the window
    assert fit_verdict(shape, 16 * GiB, "cpu", precision="bfloat16", max_length=220, four_bit="no").needed <= 12 * GB
    assert v.explain().startswith("LoRA bf16 fits")
    # the same machine without native bf16 runs fp32: the base alone is 4 bytes a weight
    fp32 = fit_verdict(shape, 16 * GiB, "cpu", precision="float32", four_bit="bitsandbytes not installed")
    assert fp32.lora.weights >= 4 * shape.parameters > v.lora.weights


def test_the_modes_in_order_as_memory_shrinks(tmp_path):
    """Llama-3.2-1B in bf16, as memory shrinks: a full fine-tune, then with checkpointing, then
    checkpointed in smaller micro-batches (4 -> 2 -> 1 pair); then LoRA over a bf16 base in the same
    steps; then over a 4-bit one (only where bitsandbytes runs); then too large. What is trained and
    over which base changes the result, a micro-batch does not, so the micro-batch goes first."""
    shape = shape_of(LLAMA_3_2_1B, tmp_path)

    def mode(free: float, four_bit=None):
        v = fit_verdict(shape, int(free * GiB), "cuda:0", precision="bfloat16", four_bit=four_bit)
        return v.mode, v.verdict, v.gradient_checkpointing, v.micro_batch

    def need(lora, ckpt, base=None, pairs=4):
        return fit_mod.training_memory(shape, lora, pairs, autocast_bytes=fit_mod.BF16_VALUE_BYTES,
                                       checkpointed=ckpt, base=base).total / GiB

    full, full_ckpt, full_ckpt_1 = need(False, False), need(False, True), need(False, True, pairs=1)
    lora, lora_ckpt, nf4_ckpt = need(True, False), need(True, True), need(True, True, "nf4")
    lora_ckpt_2, lora_ckpt_1 = need(True, True, pairs=2), need(True, True, pairs=1)
    nf4_ckpt_2, nf4_ckpt_1 = need(True, True, "nf4", 2), need(True, True, "nf4", 1)
    assert lora_ckpt_1 < lora_ckpt_2 < lora_ckpt < lora < full_ckpt_1 < full_ckpt < full
    assert nf4_ckpt_1 < nf4_ckpt_2 < lora_ckpt_1 < nf4_ckpt  # a bf16 base in 1-pair micro-batches before 4-bit
    assert need(True, False, "nf4") > lora_ckpt  # at 4 x 512 tokens activations, not weights, decide
    room = 1 / fit_mod.HEADROOM
    assert mode(full * room + 0.01) == ("full", FULL_FITS, False, 4)
    assert mode(full_ckpt * room + 0.01) == ("full+checkpointing", FULL_FITS, True, 4)
    assert mode(full_ckpt_1 * room + 0.01) == ("full+checkpointing", FULL_FITS, True, 1)
    assert mode(lora * room + 0.01) == ("LoRA bf16", LORA_ONLY, False, 4)
    assert mode(lora_ckpt * room + 0.01) == ("LoRA bf16", LORA_ONLY, True, 4)
    assert mode(lora_ckpt_2 * room + 0.01) == ("LoRA bf16", LORA_ONLY, True, 2)
    assert mode(lora_ckpt_1 * room + 0.01) == ("LoRA bf16", LORA_ONLY, True, 1)
    assert mode(nf4_ckpt_2 * room + 0.01) == ("LoRA 4-bit", LORA_ONLY, True, 2)
    assert mode(nf4_ckpt_1 * room + 0.01) == ("LoRA 4-bit", LORA_ONLY, True, 1)
    assert mode(nf4_ckpt_1 * room + 0.01, four_bit="no bitsandbytes") == ("too large", TOO_LARGE, False, 0)
    assert mode(nf4_ckpt_1 * room - 0.01)[0] == "too large"


def test_a_smaller_micro_batch_travels_in_the_plan_with_the_same_effective_batch(tmp_path):
    """Where only 1-pair micro-batches fit, the plan says so, with its reason, and turns the Train
    page's 4 x 2 into 1 x 8 (never a smaller effective batch; a form already small is left alone)."""
    from dpo_engine.run_plan import PlanRequest, plan_run

    shape = shape_of(LLAMA_3_2_1B, tmp_path)
    budget = fit_mod.training_memory(shape, True, 1, autocast_bytes=fit_mod.BF16_VALUE_BYTES, checkpointed=True,
                                     base="bf16").total / fit_mod.HEADROOM + 2**20
    v = fit_verdict(shape, int(budget), "cpu", four_bit="no", plan=plan_run(PlanRequest("cpu", "bfloat16"),
                                                                              measure=False))
    assert (v.mode, v.micro_batch, v.plan.micro_batch, v.plan.checkpointing) == ("LoRA bf16", 1, 1, True)
    assert "in micro-batches of 1 pair fits" in v.plan.micro_batch_reason and "micro-batches of 1 pair" in v.explain()
    assert "micro-batches of 1 pair" in v.plan.describe("cpu")
    assert v.plan.effective_batch(4, 2) == (1, 8)
    assert v.plan.effective_batch(3, 3) == (1, 9) and v.plan.effective_batch(1, 5) == (1, 5)
    roomy = fit_verdict(shape, 64 * GiB, "cpu", four_bit="no", plan=plan_run(PlanRequest("cpu", "bfloat16"),
                                                                             measure=False))
    assert roomy.plan.micro_batch is None and roomy.plan.effective_batch(4, 2) == (4, 2)
    assert roomy.to_dict()["verdict"] == FULL_FITS


def test_nf4_base_bytes_by_hand():
    """1,000 weights of which a 10 x 20 embedding: 800 at 4 bits + an fp32 scale per 64 = 450 B,
    the embedding in bf16 = 400 B."""
    shape = fit_mod.ModelShape(1000, hidden=20, layers=1, ffn=40, vocab=10)
    assert fit_mod.base_bytes(shape, "nf4") == 450 + 400
    assert fit_mod.base_bytes(shape, "bf16") == 2000 and fit_mod.base_bytes(shape, "fp32") == 4000


def test_the_head_estimate_is_one_chunk_not_every_logit(tmp_path):
    shape = shape_of(GEMMA_2_2B, tmp_path)
    small = fit_mod.activation_bytes(shape, 8, 2)
    big = fit_mod.activation_bytes(shape, 8000, 2)
    body = fit_mod.activation_bytes(fit_mod.ModelShape(shape.parameters, shape.hidden, shape.layers, shape.ffn, 0,
                                                       shape.kv_dim), 8000, 2)
    assert big - body == fit_mod.HEAD_CHUNK_BYTES * fit_mod.HEAD_COPIES  # 4,000 scored tokens: capped at a chunk
    assert small == fit_mod.activation_bytes(fit_mod.ModelShape(shape.parameters, shape.hidden, shape.layers,
                                                                shape.ffn, 0, shape.kv_dim), 8, 2) + 4 * 256000 * 4 * 3


def test_8b_on_a_24gb_gpu_needs_a_4bit_base_or_small_micro_batches(tmp_path):
    """Llama-3.1-8B: 16 GB of bf16 weights leave too little of 24 GB for the activations of the
    picker's batch (4 pairs x 512 tokens), yet enough for 2-pair micro-batches with checkpointing;
    20 GB leaves room only for a 4-bit base, and without bitsandbytes nothing fits there."""
    shape = shape_of(LLAMA_3_1_8B, tmp_path)
    v = fit_verdict(shape, 24 * GiB, "cuda:0", precision="bfloat16", four_bit=None)
    assert (v.mode, v.base, v.gradient_checkpointing, v.micro_batch) == ("LoRA bf16", "bf16", True, 2)
    assert v.lora.weights > 2 * shape.parameters  # the bf16 base alone
    v = fit_verdict(shape, 20 * GiB, "cuda:0", precision="bfloat16", four_bit=None)
    assert (v.mode, v.base, v.gradient_checkpointing, v.micro_batch) == ("LoRA 4-bit", "nf4", True, 4)
    assert fit_verdict(shape, 20 * GiB, "cuda:0", precision="bfloat16", four_bit="no bitsandbytes").mode == "too large"


# --------------------------------------------------------------------------- 4-bit availability


def test_four_bit_is_refused_with_the_reason_without_bitsandbytes(monkeypatch, tiny_model_dir, tmp_path):
    from dpo_engine.errors import ConfigError
    from dpo_engine.train.config import LoraSettings, TrainConfig
    from dpo_engine.train.loop import train
    from tests.train_helpers import make_pairs

    monkeypatch.setattr(quant, "installed", lambda: False)
    quant.unavailable.cache_clear()
    try:
        reason = quant.unavailable("cpu")
        assert "pip install 'dpo-studio[gpu]'" in reason
        cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), lora=LoraSettings(rank=4),
                          base_bits=4, max_steps=1, batch_size=2, grad_accum=1, eval_fraction=0.0, device="cpu")
        with pytest.raises(ConfigError, match=r"4-bit base cannot be used here: 4-bit needs bitsandbytes.*"
                                              r"unset base_bits"):
            list(train(cfg, make_pairs(4)))
    finally:
        quant.unavailable.cache_clear()
    assert quant.catalog_reason("mps") is not None
    verdict = fit_verdict(fit_mod.ModelShape(10**9, 2048, 16, 8192, 128256), 1 * GiB, "cpu",
                          four_bit=quant.catalog_reason("cpu") if not quant.installed() else "x")
    assert verdict.mode == "too large" and verdict.four_bit


def test_four_bit_needs_lora():
    from dpo_engine.errors import ConfigError
    from dpo_engine.train.config import TrainConfig

    with pytest.raises(ConfigError, match="4-bit base trains only adapters"):
        TrainConfig(output_dir="x", base_bits=4)
    with pytest.raises(ConfigError, match="base_bits must be 4"):
        TrainConfig(output_dir="x", base_bits=8)


def test_the_cli_takes_a_4bit_base(monkeypatch, tiny_model_dir, tmp_path):
    """`dpo-engine train --base-bits 4` reaches TrainConfig.base_bits: refused without --lora, and
    where bitsandbytes does not run, refused with the reason (before any training)."""
    import json

    from click.testing import CliRunner

    from dpo_engine.cli.main import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": " yes", "rejected": " no"}) + "\n"
                            for i in range(4)))
    args = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--max-steps", "1", "--device", "cpu",
            "--base-bits", "4"]
    result = CliRunner().invoke(main, args + ["--output", str(tmp_path / "a")])
    assert result.exit_code == 1 and "A 4-bit base trains only adapters" in result.output
    monkeypatch.setattr(quant, "installed", lambda: False)
    quant.unavailable.cache_clear()
    try:
        result = CliRunner().invoke(main, args + ["--lora", "--output", str(tmp_path / "b")])
    finally:
        quant.unavailable.cache_clear()
    assert result.exit_code == 1 and "A 4-bit base cannot be used here: 4-bit needs bitsandbytes" in result.output


@pytest.mark.skipif(not quant.installed(), reason="bitsandbytes (the [gpu] extra) is not installed")
def test_a_4bit_lora_step_runs_where_bitsandbytes_does(tmp_path):
    """Where bitsandbytes runs 4-bit (CUDA; this x86 CPU with bitsandbytes 0.50), the base's
    linears load as NF4 Linear4bit, the adapter is fp32 and trains. (Hidden 128: bitsandbytes'
    CPU layout needs every linear at least 64 wide, the session tiny model's k_proj is 16.)"""
    import torch

    from tests.tiny_model import build_tiny_model

    tiny_model_dir = build_tiny_model(tmp_path / "model", hidden=128)

    from dpo_engine.train.config import LoraSettings, TrainConfig
    from dpo_engine.train.events import StepEvent
    from dpo_engine.train.model import load_policy, training_plan

    if quant.unavailable("cpu"):
        pytest.skip(quant.unavailable("cpu"))
    from bitsandbytes.nn import Linear4bit

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), lora=LoraSettings(rank=4),
                      base_bits=4, max_steps=2, batch_size=2, grad_accum=1, eval_fraction=0.0, device="cpu", lr=1e-3)
    plan = training_plan(cfg)
    device = plan.weights_choice()
    model = load_policy(cfg, device, None, cfg.model).model
    quantised = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert quantised and all(m.weight.dtype == torch.uint8 for m in quantised)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    from dpo_engine.train.loop import train
    from tests.train_helpers import make_pairs

    steps = [e for e in train(cfg, make_pairs(8)) if isinstance(e, StepEvent)]
    assert len(steps) == 2 and all(e.grad_norm > 0 for e in steps)
