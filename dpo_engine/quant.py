"""A 4-bit frozen base (QLoRA) through bitsandbytes: whether it runs here, and its load settings.

bitsandbytes is an optional extra (`pip install 'dpo-studio[gpu]'`). It runs NF4 on CUDA and,
from 0.45 on, on x86 CPUs too (measured here: bitsandbytes 0.50.2, torch 2.13 CPU, a 2-core
EPYC with avx512_bf16: an NF4 Linear4bit of 2048 -> 8192 over 512 tokens took 1.45x its bf16
time, forward and backward both run). Whether it runs is checked by doing it once (quantise a
64 x 64 weight, one forward), not assumed from the platform. On an avx512_bf16 CPU, importing
bitsandbytes asks the Hugging Face hub for an optional kernel (`kernels-community`); offline
or untrusted it falls back to its own, and the import takes ~20 s here, so the catalog only
asks whether the package is installed (`installed`) and a run checks it fully (`unavailable`).

Public API:
    installed() -> bool                      cheap: is the package there
    unavailable(device) -> str | None        why 4-bit cannot run on `device`, or None (checked once per device)
    quantization_config(compute_dtype)       transformers' BitsAndBytesConfig for an NF4 base
"""

from __future__ import annotations

import functools
import importlib.util

INSTALL_HINT = "install the optional extra: pip install 'dpo-studio[gpu]' (it brings bitsandbytes)"


@functools.lru_cache(maxsize=1)
def installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def catalog_reason(device: str) -> str | None:
    """Why the model picker should not offer 4-bit on `device` (cheap: no import), or None."""
    if not installed():
        return f"4-bit needs bitsandbytes: {INSTALL_HINT}"
    if device.startswith("mps"):
        return "4-bit (bitsandbytes) does not run on Apple's MPS"
    return None


@functools.lru_cache(maxsize=None)
def unavailable(device: str) -> str | None:
    """Why a 4-bit NF4 base cannot run on `device` ("cpu", "cuda", "cuda:1", "mps"), or None.

    Runs one quantised forward there: a failing import, an unsupported device or a missing
    native library all end up as the reason, in words a person can act on."""
    reason = catalog_reason(device)
    if reason:
        return reason
    try:
        import torch
        from bitsandbytes.nn import Linear4bit, Params4bit

        layer = Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
        layer = layer.to(device)
        out = layer(torch.randn(2, 64, device=device))
        if out.shape != (2, 64) or not torch.isfinite(out).all():
            return f"bitsandbytes' 4-bit layer gave a wrong result on {device}"
    except Exception as exc:  # any failure means: not here (the reason names it)
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        return f"bitsandbytes cannot run 4-bit on {device} ({exc.__class__.__name__}: {first})"
    return None


def quantization_config(compute_dtype):
    """NF4 with the compute dtype of the run (QLoRA's settings; double quantisation off: it saves
    ~0.4 bits a weight at the cost of a second dequantisation on every use)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=False)
