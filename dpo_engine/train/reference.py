"""Reference log-probs: computed once before training, cached on disk by fingerprint.

The reference model never changes during a run, so log π_ref(y|x) of every pair is a
constant: scoring it once up front means the loop runs one model (the policy) per step
and full fine-tuning holds a single model in memory. The cache key covers everything the
numbers depend on: the reference weights' identity, the encoded token ids of every pair
(train and eval, in order), max_length, the precision, and the code that computes them
(`computation_version`); the loss needs nothing beyond log-probs.

A cache file is trusted only when it verifies: its metadata names this format, this
computation and this fingerprint, and a sha256 of its tensors' bytes matches them. Anything
else is scored again, and the caller says so. A pass stopped midway is written too, with
`done` marking the pairs scored, and the next run with the same key continues from it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import time
from pathlib import Path
from typing import Callable, Generator, NamedTuple, Sequence

import torch

from dpo_engine.encoding import EncodedPair
from dpo_engine.models import ResolvedModel
from dpo_engine.paths import cache_dir
from dpo_engine.train.events import ReferenceProgress
from dpo_engine.train.model import is_peft
from dpo_engine.train.step import StepContext, pair_logps, score_batches

CACHE_FORMAT = "2"  # the file's layout: 2 added the metadata (checksum, version, fingerprint) and `done`
KEEP_EVERY_S = 30.0  # a pass killed midway (kill -9, power) loses at most this much scoring; writing the
# part costs ~0.5 ms for 10,000 pairs (90 kB and its sha256, measured on this 2-core VM)
# The code a reference log-prob goes through, from the encoded pair to the number: the cache's
# version is a hash of these files, so any change to how log-probs are computed starts a new
# cache (a comment edited costs one reference pass; a stale number would cost a wrong run).
# tests/test_train_safety.py traces a reference pass and fails if it runs engine code not listed here.
SCORING_MODULES = ("dpo_engine.encoding", "dpo_engine.logps", "dpo_engine.shared_prompt", "dpo_engine._compat",
                   "dpo_engine.devices", "dpo_engine.train.groups", "dpo_engine.train.step",
                   "dpo_engine.train.reference", "dpo_engine.attention")  # _compat: the shared prompt's KV
# cache; devices: autocast; attention: fp32 attention inside a bf16 forward on a CPU


class ReferenceScores(NamedTuple):
    """Shapes: all (N,), on the CPU. `done` is all True except for a pass stopped midway."""

    chosen: torch.Tensor  # fp32 summed response log-probs
    rejected: torch.Tensor
    done: torch.Tensor  # bool: the pairs scored

    @classmethod
    def empty(cls, n: int) -> "ReferenceScores":
        return cls(torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.bool))

    @property
    def complete(self) -> bool:
        return bool(self.done.all())


@functools.cache
def computation_version() -> str:
    """A digest of the scoring code (SCORING_MODULES' source) and the torch and transformers
    versions (their kernels and model code make the numbers too)."""
    import transformers

    h = hashlib.sha256(f"{torch.__version__}|{transformers.__version__}".encode())
    for name in SCORING_MODULES:
        h.update(name.encode())
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


def weights_identity(resolved: ResolvedModel) -> str:
    """Names, sizes and mtimes of a local model's weight files (a hub id stands for itself)."""
    folder = Path(resolved.path)
    if not folder.is_dir():
        return f"hub:{resolved.path}"
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*/*.safetensors"))
    stats = [(f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return f"{folder.resolve()}|{stats}"


def reference_fingerprint(identity: str, pairs: Sequence[EncodedPair], max_length: int, precision: str) -> str:
    h = hashlib.sha256(f"v{computation_version()}|{identity}|{max_length}|{precision}".encode())
    for e in pairs:
        h.update(repr((e.prompt_ids, e.chosen_ids, e.rejected_ids)).encode())
    return h.hexdigest()[:32]


def cache_path(fingerprint: str) -> Path:
    return cache_dir() / "reference-logps" / f"{fingerprint}.safetensors"


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in ("chosen", "rejected", "done"):
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def _problem(meta: dict, tensors: dict, fingerprint: str, n: int) -> str:
    """Why a cache file cannot be trusted ("" when it verifies)."""
    if meta.get("format") != CACHE_FORMAT or "sha256" not in meta:
        return "carry no checksum of this DPO Studio's format"
    if meta.get("version") != computation_version() or meta.get("fingerprint") != fingerprint:
        return "were computed by other code or for other pairs"
    if set(tensors) != {"chosen", "rejected", "done"} or any(
            t.shape != (n,) for t in tensors.values()) or tensors["done"].dtype != torch.bool:
        return f"do not hold {n} pairs' scores"
    if _checksum(tensors) != meta["sha256"]:
        return "do not match their checksum (the file changed after it was written)"
    return ""


def read_cache(fingerprint: str, n: int) -> tuple[ReferenceScores | None, str]:
    """The verified scores cached under `fingerprint` (complete, or a stopped pass's part), and
    why a file that is there was not used ("" when it was, or when there is none)."""
    from safetensors import safe_open

    path = cache_path(fingerprint)
    if not path.exists():
        return None, ""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # truncated or garbage: recompute (a cache is never worth failing a run)
        return None, f"cannot be read ({type(exc).__name__})"
    problem = _problem(meta, tensors, fingerprint, n)
    if problem:
        return None, problem
    return ReferenceScores(tensors["chosen"], tensors["rejected"], tensors["done"]), ""


def write_cache(fingerprint: str, scores: ReferenceScores) -> None:
    from safetensors.torch import save_file

    path = cache_path(fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"chosen": scores.chosen.float().contiguous(), "rejected": scores.rejected.float().contiguous(),
               "done": scores.done.bool().contiguous()}
    meta = {"format": CACHE_FORMAT, "version": computation_version(), "fingerprint": fingerprint,
            "sha256": _checksum(tensors)}
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # readers never see half a file


def compute_reference(model, pairs: Sequence[EncodedPair], ctx: StepContext, batch_size: int,
                      start: ReferenceScores | None = None, keep: Callable[[ReferenceScores], None] | None = None
                      ) -> Generator[ReferenceProgress, bool | None, ReferenceScores]:
    """Score every pair with the reference (a peft policy with its adapter disabled).

    Yields progress after each batch; a caller that sends True there (`gen.send(True)`) stops the
    pass at once. Returns the scores, on the CPU: complete, or, when stopped, those done so far.
    `start` (a stopped pass's scores) skips the batches it already holds; `keep(scores)` is called
    every KEEP_EVERY_S seconds of scoring (the trainer writes the part to the cache).
    """
    scores = start if start is not None else ReferenceScores.empty(len(pairs))
    kept = time.monotonic()
    adapter_off = model.disable_adapter() if is_peft(model) else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with adapter_off:
            for idx in score_batches(pairs, ctx, batch_size):
                if scores.done[idx].all():
                    continue
                with torch.no_grad():
                    lp = pair_logps(model, [pairs[i] for i in idx], ctx)
                scores.chosen[idx], scores.rejected[idx] = lp.chosen_logps.float().cpu(), lp.rejected_logps.float().cpu()
                scores.done[idx] = True
                if keep is not None and time.monotonic() - kept >= KEEP_EVERY_S:
                    keep(scores)
                    kept = time.monotonic()
                if (yield ReferenceProgress(int(scores.done.sum()), len(pairs), cached=False)):
                    break
    finally:
        model.train(was_training)
    return scores
