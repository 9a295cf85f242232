"""The models of a run: its plan (`dpo_engine.run_plan`), loading the policy (full or LoRA), saving it.

Trained weights and their optimizer state are fp32 (AdamW on bf16 weights loses small
updates); where the run's precision is bf16 (CUDA that supports it; a CPU that runs bf16
natively and measurably faster: `dpo_engine.devices`) the forward runs under bf16 autocast,
for the policy and the reference alike, and the log-softmax, sums and loss stay fp32
(logps.py). A LoRA run's frozen base is kept in the compute precision: in bf16 under bf16
autocast (every matmul casts its weight to bf16 anyway, so the base costs half the memory
for the same products), fp32 otherwise, or in 4-bit NF4 where asked and bitsandbytes runs
(`dpo_engine.quant`); its adapter stays fp32.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from dpo_engine.train.checkpoints import RUN_FILE
from dpo_engine.devices import DeviceChoice, pick_device
from dpo_engine.errors import ConfigError
from dpo_engine.models import LoadedModel, load_model
from dpo_engine.run_plan import PlanRequest, RunPlan, plan_run
from dpo_engine.train.config import LoraSettings, TrainConfig

ADAPTER_DIR = "adapter"  # with merge_lora, the adapter goes here and the merged model at the top


def training_plan(config: TrainConfig, assigned: str | None = None, resumed: str | None = None) -> RunPlan:
    """The run plan of `config` (`run_plan.plan_run`): device, precisions, LoRA base, checkpointing.

    Args:
        assigned: the launcher's device for this rank.
        resumed: the dtype the run being resumed trained in: "auto" keeps it, so that the
            run continues exactly even if this machine's measurement changed meanwhile.
    """
    keep = bool(resumed and config.dtype == "auto")
    plan = plan_run(PlanRequest(assigned or config.device, resumed if keep else config.dtype,
                                lora=config.lora is not None, base_bits=config.base_bits,
                                checkpointing=config.gradient_checkpointing))
    if keep:
        plan = dataclasses.replace(plan, compute_reason=plan.compute_reason.replace(
            "requested", "the precision of the run this resumes"))
    if plan.compute == "float16":  # "auto" never picks it; DPO_STUDIO_DTYPE or a flag can
        raise ConfigError("float16 training needs loss scaling, which the trainer does not do: "
                          "use bfloat16 or float32 (or auto).")
    return plan


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def disable_dropout(model) -> None:
    """Turn off the base model's dropout (as TRL does): the policy and its reference log-probs
    must score a sequence alike. LoRA's own dropout stays: it regularises the adapter only."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:
            module.p = 0.0
    config = getattr(model, "config", None)
    for attr in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and isinstance(getattr(config, attr, None), float):
            setattr(config, attr, 0.0)


def wrap_lora(model, lora: LoraSettings, adapter_dir: Path | None = None):
    """A peft model over `model`: fresh adapters, or trainable ones read from `adapter_dir`."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def adapter_folder(checkpoint: Path) -> Path:
    sub = Path(checkpoint) / ADAPTER_DIR
    return sub if (sub / "adapter_config.json").is_file() else Path(checkpoint)


def load_policy(config: TrainConfig, device: DeviceChoice, resume_from: Path | None, base_ref: str,
                tokenizer=None) -> LoadedModel:
    """The model to train, in train mode with dropout off: the base (fresh run), the checkpoint's
    weights (full fine-tune resume), or the base with the checkpoint's adapter (LoRA resume).
    `tokenizer`: the one the caller loaded from the checkpoint (resuming) or else the base,
    reused where the weights come from the same folder."""
    torch.manual_seed(config.seed)  # LoRA's initial A matrices come from here
    if config.lora is None:
        loaded = load_model(str(resume_from) if resume_from else base_ref, device, tokenizer=tokenizer)
    else:
        loaded = load_model(base_ref, device, tokenizer=None if resume_from else tokenizer,
                            quantization=_four_bit(config, device))
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        adapter = adapter_folder(resume_from) if resume_from else None
        loaded.model = wrap_lora(loaded.model, config.lora, adapter).to(device.torch_device)
        for p in trainable_parameters(loaded.model):  # peft upcasts adapters over a bf16 base; make sure
            p.data = p.data.float()
    model = loaded.model
    disable_dropout(model)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    model.config.use_cache = False
    model.train()
    return loaded


def enable_checkpointing(model) -> None:
    """Gradient (activation) checkpointing of every decoder layer, non-reentrant: it keeps the
    layer's inputs only and recomputes the rest in the backward, under the autocast state the
    forward ran in (torch restores it). Whatever else decides how a layer computes must be the
    model's own, not a context around the forward (`dpo_engine.attention`)."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.25's name
    if callable(enable):
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _four_bit(config: TrainConfig, device: DeviceChoice):
    """The NF4 load settings of a 4-bit base (the rest of the model in `device.dtype`), or None;
    a ConfigError saying why where bitsandbytes cannot run 4-bit on this device."""
    if config.base_bits != 4:
        return None
    from dpo_engine import quant

    reason = quant.unavailable(device.device)
    if reason:
        raise ConfigError(f"A 4-bit base cannot be used here: {reason}. Train LoRA over the base in "
                          f"{device.dtype} instead (unset base_bits).")
    return quant.quantization_config(device.torch_dtype)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def portable_ref(ref: str) -> str:
    """A local path made absolute (the checkpoint may be read from another folder); else as is."""
    path = Path(ref).expanduser()
    return str(path.absolute()) if ref != "default" and path.exists() else ref


def run_info(config: TrainConfig, base_ref: str, reference_ref: str, step: int, total: int, status: str,
             precision: dict | None = None) -> dict:
    """What dpo_studio_run.json records: where the weights came from and how they were trained."""
    return {
        "precision": precision,  # precision_record(): the dtype that ran and why (config.dtype may say "auto")
        "base": portable_ref(base_ref),
        "base_model": portable_ref(base_ref),  # the key `dpo-engine eval` reads to find the base
        "reference": portable_ref(reference_ref),
        "lora": config.lora is not None,
        "merged": bool(config.lora is not None and config.merge_lora and status != "running"),
        "step": step,
        "total_steps": total,
        "status": status,
        "saved": time.time(),
        "config": config.to_dict(),
    }


def _merged_copy(model, base_ref: str, adapter: Path):
    """The adapter merged into a copy of the base, in fp32 (the live model keeps its adapter).

    Over a frozen base held in fp32 that is a copy of the live model. Over a bf16 or 4-bit base
    the merge starts from the base as stored instead, read again in fp32 on the CPU: merging into
    the training copy would save every weight the run never changed rounded to bf16 (or 4 bits),
    and the before/after comparison would show that rounding as the run's doing. Costs the base's
    fp32 size in memory while saving.
    """
    from peft import PeftModel

    base_dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
    if base_dtypes == {torch.float32}:
        return copy.deepcopy(model).merge_and_unload()
    base = load_model(base_ref, pick_device("cpu", "float32")).model
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def write_model_files(folder: Path, model, tokenizer, info: dict, state_dict: dict | None = None) -> None:
    """Weights (or adapter) as safetensors, tokenizer and dpo_studio_run.json into `folder`.

    `state_dict`: the full weights where the live model holds only a shard (FSDP, ZeRO-3).
    """
    folder = Path(folder)
    model.config.use_cache = True  # training turns the KV cache off; whoever loads this will generate
    if is_peft(model) and info["merged"]:
        model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
        merged = _merged_copy(model, info["base"], folder / ADAPTER_DIR)
        merged.save_pretrained(folder, safe_serialization=True)
        del merged
    else:
        model.save_pretrained(folder, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    model.config.use_cache = False
    tokenizer.save_pretrained(folder)
    (folder / RUN_FILE).write_text(json.dumps(info, indent=1))
