"""One copy of a base model for its LoRA checkpoints: a checkpoint served as a view over the base.

A LoRA run's checkpoint folder (`train.model.write_model_files`) holds its adapter (in `adapter/`
beside the merged model, or alone) and names its base in dpo_studio_run.json. Loading it as a
model of its own puts a second full copy of the base in memory next to the base that a
before/after comparison also loads: at 1B in bf16 that is 2.5 GB more, 5 GB more for the fp32
scoring copies.

Here the checkpoint is a *view* of the base: a second module tree whose parameters and buffers
are the very tensors of the loaded base (nothing is copied but module objects and a few small
attributes), with the adapter's LoRA layers injected into that tree only. So

- the base model object never sees the adapter: it computes exactly as the base loaded alone;
- the view computes W·x + s·B·A·x with the adapter in fp32 (as it trained), equal to the merged
  weights to float rounding;
- nothing is switched on or off between uses: the two can be called in any order, or both in one
  call (implicit rewards take the policy and the reference together), which a single peft model
  toggling `disable_adapter()` could not promise without a switch before every forward.

Public API:
    LoraCheckpoint, lora_checkpoint(ref) -> LoraCheckpoint | None
    model_identity(ref) -> str
    adapter_view(base, checkpoint) -> LoadedModel
    parameters_to_hold(models, held) -> int
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dpo_engine.errors import DPOStudioError, ModelError
from dpo_engine.models import DEFAULT_MODEL_REF, LoadedModel, ResolvedModel, default_model_dir, load_tokenizer

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file name; a folder without it has no adapter to apply


@dataclass(frozen=True)
class LoraCheckpoint:
    """A LoRA run's checkpoint whose base is on this disk."""

    ref: str  # the checkpoint folder, as given
    adapter: Path  # the folder with adapter_config.json + adapter_model.safetensors
    base: str  # the base's reference as the run recorded it ('default', a folder, a hub id)


def lora_checkpoint(ref: str | None) -> LoraCheckpoint | None:
    """`ref` as a LoRA checkpoint to serve over its base, or None: not a folder, no adapter, no base
    named, or a base that is not on this disk (the folder then loads as it is, as before)."""
    from dpo_engine.export.source import base_paths

    source = _folder_source(ref)
    if source is None or source.adapter is None or not source.base_ref:
        return None
    if not (source.adapter / ADAPTER_WEIGHTS).is_file():
        return None
    if not any(p.exists() for p in base_paths(source.base_ref)):
        return None  # a hub id not in the cache, a moved folder: never download or fail for the sake of sharing
    base = _folder_source(source.base_ref)
    if base is not None and base.adapter is not None:
        return None  # trained over another LoRA checkpoint (or a run file naming itself): no view over a view
    return LoraCheckpoint(ref, source.adapter, source.base_ref)


def _folder_source(ref: str | None):
    """What a model folder holds (`export.source.find_source`: files read, nothing loaded or
    converted), or None for what is not a readable model folder."""
    from dpo_engine.export.source import find_source

    if not ref or not Path(ref).expanduser().is_dir():
        return None
    try:
        return find_source(str(Path(ref).expanduser()))
    except DPOStudioError:
        return None  # not a model folder: the ordinary load says why


def model_identity(ref: str | None) -> str:
    """One name per model on this disk, so that a run file's base finds the model loaded under
    another spelling: 'default' for the default model (by name or by its converted folder, as a
    run file may record it), a local path resolved, anything else (a hub id) as given."""
    ref = (ref or DEFAULT_MODEL_REF).strip()
    path = Path(ref).expanduser()
    if ref == DEFAULT_MODEL_REF or not path.exists():
        return ref
    resolved = path.resolve()
    return DEFAULT_MODEL_REF if resolved == default_model_dir().resolve() else str(resolved)


def _tree_over_same_weights(model):
    """A second module tree of `model` whose parameters and buffers are `model`'s own tensors: the
    deep copy finds each of them already "copied" as itself (the memo), so only module objects,
    configs and small plain-attribute tensors (rotary tables) are new."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def adapter_view(base: LoadedModel, checkpoint: LoraCheckpoint) -> LoadedModel:
    """The checkpoint as a model that shares every weight of `base` (loaded from `checkpoint.base`),
    its adapter applied in fp32 (peft keeps adapters fp32 over a bf16 base, as training did);
    the checkpoint's own tokenizer where it saved one.

    Raises:
        ModelError: the adapter does not fit the base (a hand-edited run file names another model).
    """
    from peft import PeftModel

    start = time.perf_counter()
    # peft freezes every parameter of the tree it wraps but the adapter's, and those are the base's own:
    # put the flags back, so the base model object is exactly as it was for its other users. (Not only
    # tidiness: torch 2.13's matmul folds a 3D input into one mm only when the weight requires grad, else
    # the CPU bf16 bmm copies the weight for the batch on every call, pytorch/pytorch#151934: the LM head
    # at each prefill took 3-4 s instead of 0.05 s at 1B.)
    flags = [(p, p.requires_grad) for p in base.model.parameters()]
    try:
        wrapped = PeftModel.from_pretrained(_tree_over_same_weights(base.model), str(checkpoint.adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelError(f"Could not apply the LoRA adapter in {checkpoint.adapter} to its base {checkpoint.base} "
                         f"({lines[0][:200] if lines else exc.__class__.__name__}): it may have been trained on "
                         "another model; name that model as base_model in the run's dpo_studio_run.json.") from None
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    model = wrapped.get_base_model().eval()  # the transformers model, LoRA layers in place: what callers expect
    folder = Path(checkpoint.ref).expanduser()
    resolved = ResolvedModel(checkpoint.ref, str(folder), "folder", folder.name)
    has_own = (folder / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(resolved) if has_own else base.tokenizer
    return LoadedModel(model, tokenizer, resolved, base.device, time.perf_counter() - start)


def parameters_to_hold(models: Iterable, held: Iterable = ()) -> int:
    """Parameters of `models` counted once per tensor (a base that views share is one model; tied
    embeddings one matrix), none that `held` has: what loading these models in another precision
    adds, asked of their copies in the window's precision, where `held` are the window copies of
    the models that precision already holds (a checkpoint whose base is held then adds its adapter)."""
    seen = {p.data_ptr() for model in held for p in model.parameters()}
    total = 0
    for model in models:
        for p in model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel()
    return total
