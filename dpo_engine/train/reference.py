"""Reference log-probs: computed once before training, cached on disk by fingerprint.

The reference model never changes during a run, so log π_ref(y|x) of every pair is a
constant: scoring it once up front means the loop runs one model (the policy) per step
and full fine-tuning holds a single model in memory. The cache key covers everything the
numbers depend on: the reference weights' identity, the encoded token ids of every pair
(train and eval, in order), max_length and the loss's needs (none beyond log-probs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from dpo_engine.encoding import EncodedPair
from dpo_engine.iters import mapped
from dpo_engine.models import ResolvedModel
from dpo_engine.paths import cache_dir
from dpo_engine.train.events import ReferenceProgress
from dpo_engine.train.model import is_peft
from dpo_engine.train.step import StepContext, policy_scores

CACHE_VERSION = "1"  # bump when the log-prob computation changes, so old caches are not reused


def weights_identity(resolved: ResolvedModel) -> str:
    """Names, sizes and mtimes of a local model's weight files (a hub id stands for itself)."""
    folder = Path(resolved.path)
    if not folder.is_dir():
        return f"hub:{resolved.path}"
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*/*.safetensors"))
    stats = [(f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return f"{folder.resolve()}|{stats}"


def reference_fingerprint(identity: str, pairs: Sequence[EncodedPair], max_length: int, precision: str) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{identity}|{max_length}|{precision}".encode())
    for e in pairs:
        h.update(repr((e.prompt_ids, e.chosen_ids, e.rejected_ids)).encode())
    return h.hexdigest()[:32]


def cache_path(fingerprint: str) -> Path:
    return cache_dir() / "reference-logps" / f"{fingerprint}.safetensors"


def read_cache(fingerprint: str, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = cache_path(fingerprint)
    try:
        data = load_file(str(path))
    except Exception:  # absent or damaged: recompute (a cache is never worth failing a run)
        return None
    if data.get("chosen") is None or data["chosen"].shape != (n,) or data["rejected"].shape != (n,):
        return None
    return data["chosen"], data["rejected"]


def write_cache(fingerprint: str, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path = cache_path(fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    save_file({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}, str(tmp))
    os.replace(tmp, path)  # readers never see half a file


def compute_reference(model, pairs: Sequence[EncodedPair], ctx: StepContext,
                      batch_size: int) -> Iterator[ReferenceProgress]:
    """Score every pair with the reference (a peft policy with its adapter disabled); yields
    progress and returns ((N,), (N,)) chosen/rejected log-probs on the CPU."""
    adapter_off = model.disable_adapter() if is_peft(model) else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with adapter_off:
            result = yield from mapped(policy_scores(model, pairs, ctx, batch_size),
                                       lambda done: ReferenceProgress(done, len(pairs), cached=False))
    finally:
        model.train(was_training)
    return result
