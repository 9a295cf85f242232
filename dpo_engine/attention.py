"""Attention in fp32 inside a bf16 forward, as a property of the model, not of a context.

torch's bf16 attention kernels on the CPU are slower than its fp32 ones, with or without AMX.
On a 2-core EPYC with avx512_bf16 (no AMX) the backward took 18 ms in bf16 against 5 ms in fp32
at the trainer's answer pass shape (4 rows x 9 heads x 100 tokens over 145), the profiled bf16
step spent 2.2 s in attention against fp32's 1.0 s, and whole steps ran 5-10% faster with
attention in fp32. On 2 cores of an AMX Xeon (Emerald Rapids) the profiled bf16 step spent
0.85 s in bf16 attention against 0.41 s in the fp32 step (bench/README.md, "Where a bf16
training step's time goes"). CUDA keeps bf16 attention (its flash kernels are bf16-native).

The choice lives on the model (its config's attention implementation, FP32_SDPA): gradient
checkpointing recomputes each layer in the backward pass, outside any context the forward ran
in, and must recompute exactly the forward it saved. An earlier version swapped transformers'
process-wide "sdpa" entry for the length of the forward's context; the recompute then ran bf16
attention where the forward had saved fp32 tensors, and every bf16 run with checkpointing died
with torch's CheckpointError. torch's checkpoint restores the autocast state by itself, so with
the attention choice on the model, forward and recompute agree.

    fp32_attention_wanted(compute) -> bool     a CPU forward under bf16 autocast
    use_fp32_attention(model) -> bool          set FP32_SDPA on a model that runs SDPA
"""

from __future__ import annotations

import torch

FP32_SDPA = "sdpa_fp32"  # the attention implementation's registered name (transformers' AttentionInterface)


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with q, k and v in fp32 and autocast off; the output in v's
    dtype (under bf16 autocast the next linear casts its input to bf16 anyway, and over bf16
    weights without autocast it needs bf16). Under fp32 it is plain SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = value.dtype
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(dtype), weights


def _register() -> None:
    """Register FP32_SDPA with transformers once (attention and its mask, SDPA's own mask)."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    if FP32_SDPA not in AttentionInterface():
        AttentionInterface.register(FP32_SDPA, _sdpa_fp32)
        AttentionMaskInterface.register(FP32_SDPA, sdpa_mask)


def fp32_attention_wanted(compute) -> bool:
    """Whether a training forward on `compute` (a DeviceChoice: the forward's precision) runs its
    attention in fp32: on a CPU under bf16 autocast (the module docstring's measurements)."""
    return compute.dtype == "bfloat16" and compute.torch_device.type == "cpu"


def use_fp32_attention(model, on: bool = True) -> bool:
    """Run `model`'s attention in fp32 from now on (FP32_SDPA), where it runs SDPA; a model on
    another implementation (eager for Gemma 2's soft-capping, flash on a GPU) is left as it is.
    `on=False` puts plain SDPA back (benchmarks compare both on one model).
    Not saved with the model: transformers never writes the attention implementation to config.json.

    Returns:
        True when the model now runs FP32_SDPA.
    """
    from dpo_engine.logps import _causal_lm  # the transformers model under a PEFT wrapper

    lm = _causal_lm(model)
    current = getattr(lm.config, "_attn_implementation", None)
    wanted = FP32_SDPA if on else "sdpa"
    if current not in ("sdpa", FP32_SDPA):
        return False
    if current != wanted:
        _register()
        lm.set_attn_implementation(wanted)
    return lm.config._attn_implementation == FP32_SDPA
