"""How a model runs here, decided once: the run plan.

One frozen `RunPlan` holds every choice of how a model runs on this machine, each with its
reason: the device; the compute, weights' and attention precision; LoRA and its frozen base
(fp32 / bf16 / NF4); gradient checkpointing; and the precision of scores a person reads.
`plan_run` is the one function that makes it, from the request, the model's size and the
free memory:

    plan_run(PlanRequest(device, dtype, lora, base_bits, checkpointing),
             parameters=None, free_bytes=None, measure=True) -> RunPlan

- device and compute precision: `devices.pick_device`, the one rule for "auto" (bf16 on CUDA
  with bf16; on a CPU with native bf16 where measured faster; fp32 elsewhere). `measure=False`
  (the catalog) never times anything: a cached measurement counts, else native bf16 is taken.
- weights: fp32 master weights for a full fine-tune (AdamW on bf16 weights loses small
  updates); a LoRA run's frozen base in the compute precision, or NF4 with `base_bits=4`.
- attention: fp32 on a CPU under bf16 (torch's bf16 CPU attention kernels are slower:
  `dpo_engine.attention` has the measurements and sets it on the model), else the compute precision.
- lora / base / checkpointing: as requested (a TrainConfig's). The model picker asks the memory
  instead: `catalog.fit.fit_verdict(shape, free_bytes, plan=plan_run(...))` tries the modes
  in order and returns the cheapest that fits as this plan (`FitVerdict.plan`, made with
  `RunPlan.trained`), which then travels to the TrainConfig unchanged. (The catalog sits above
  the trainer, whose defaults it reads, so this module never imports it.)
- scoring: fp32 unless a precision was named or fp32 weights do not fit (`fits_fp32`).

The plan's `key` is the reference cache key, its `describe()` the trainer's log line and
the Train page's "Training on ..." text; `compute_choice()` / `weights_choice()` /
`scoring_choice()` are the `DeviceChoice`s that load models and run forwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dpo_engine.attention import fp32_attention_wanted
from dpo_engine.devices import SHORT, DeviceChoice, pick_device

SCORING_SPARE = 1.2  # fp32 scoring weights need their 4 B a parameter and a fifth more (activations, allocator)
# bench/scoring_precision.py, SmolLM2-135M and Gemma 3 270M on a CPU with avx512_bf16: bf16 moves a summed
# log-prob by up to 5.8e-3 relative under autocast, 7.7e-3 with bf16 weights; only fp32 stays within 1e-3
SCORING_NOTE = ("fp32: scores stay within 1e-3 of fp32 only in fp32 (bf16 moves summed log-probs by up to "
                "~6e-3; bench/README.md, Scoring precision)")
FULL_WEIGHTS = "fp32: a full fine-tune keeps fp32 master weights (AdamW on bf16 weights loses small updates)"


@dataclass(frozen=True)
class PlanRequest:
    """What a person (or a config) asked for."""

    device: str | None = None  # "auto", "cpu", "cuda", "cuda:N", "mps"; None: DPO_STUDIO_DEVICE, else auto
    dtype: str = "auto"  # compute precision; "auto": the hardware's rule (`devices.pick_device`)
    lora: bool = False  # adapters over a frozen base; False: a full fine-tune
    base_bits: int | None = None  # 4: the frozen base in NF4 (bitsandbytes); None: in the compute precision
    checkpointing: bool = False  # gradient checkpointing (the picker turns it on where it is needed to fit)


@dataclass(frozen=True)
class RunPlan:
    """How a model runs here, each choice with its reason (module docstring)."""

    device: str  # "cuda", "cuda:1", "mps" or "cpu": where weights and activations live
    device_reason: str  # why there: "a CUDA GPU is available", "requested", ...
    compute: str  # "float32" | "bfloat16" | "float16": the precision the forward autocasts to
    compute_reason: str  # why, e.g. "bf16: CPU has avx512_bf16, matmul 2.7x fp32 (measured 2026-12-02)"
    attention: str  # the precision SDPA attention runs in (fp32 on a CPU under bf16: faster there)
    attention_reason: str  # why
    lora: bool = False  # adapters over a frozen base; False: every weight trains
    lora_reason: str = "requested"  # why LoRA is on or off
    base: str = "fp32"  # the model's stored weights: "fp32" (full fine-tune; an fp32 LoRA base), "bf16", "nf4"
    base_reason: str = FULL_WEIGHTS  # why stored so
    checkpointing: bool = False  # gradient checkpointing: less memory, ~30% slower
    checkpointing_reason: str = "off: not needed to fit"  # why on or off
    scoring: str = "float32"  # the precision of log-probs a person reads (eval, Compare's rewards)
    scoring_reason: str = SCORING_NOTE  # why
    micro_batch: int | None = None  # pairs per micro-batch memory allows (the picker's fit); None: as configured
    micro_batch_reason: str = "as configured"  # why
    warning: str = ""  # the requested precision runs poorly on this hardware: tell the person
    requested: bool = False  # the compute precision was named (flag, setting, DPO_STUDIO_DTYPE), not "auto"

    @property
    def weights(self) -> str:
        """The dtype the model loads in: fp32 master weights (full; an fp32 LoRA base), else the
        compute precision (a bf16 base; an NF4 base's unquantised parts)."""
        return self.compute if self.lora else "float32"

    @property
    def base_bits(self) -> int | None:
        """TrainConfig.base_bits of this plan: 4 for an NF4 base, else None."""
        return 4 if self.base == "nf4" else None

    @property
    def mode(self) -> str:
        """The picker's name of it: one of `catalog.fit.MODES` (except "too large")."""
        if not self.lora:
            return "full+checkpointing" if self.checkpointing else "full"
        return "LoRA 4-bit" if self.base == "nf4" else f"LoRA {self.base}"

    @property
    def key(self) -> str:
        """The reference cache key: what changes reference log-probs (the forward's precision, a
        bf16 or NF4 base, attention kept in fp32), e.g. "bf16-bf16-base-fp32-attention"."""
        key = "fp32" if self.compute == "float32" else "bf16"
        key += "-bf16-base" if self.weights == "bfloat16" else ""
        key += "-nf4" if self.base == "nf4" else ""
        key += "-fp32-attention" if self.attention != self.compute else ""
        return key

    def describe(self, device_name: str | None = None) -> str:
        """What follows "Training on ": device, precision, base and why, e.g. "cpu in bf16
        autocast over a bf16 frozen base (bf16: CPU has avx512_bf16, ...)"."""
        base = "fp32 weights" if not self.lora else {"nf4": "a 4-bit frozen base", "bf16": "a bf16 frozen base"}.get(
            self.base, f"an {self.base} frozen base")
        how = f"bf16 autocast over {base}" if self.compute != "float32" else (
            "float32" + (f" over {base}" if self.lora else ""))
        name = device_name or self.compute_choice().describe().rsplit(", ", 1)[0]
        pairs = self.micro_batch
        return f"{name} in {how} ({self.compute_reason})" + ("; gradient checkpointing on" if self.checkpointing
                                                             else "") + (
            f"; micro-batches of {pairs} pair{'s' if pairs > 1 else ''}" if pairs else "")

    def compute_choice(self) -> DeviceChoice:
        """The forward's device and precision (autocast)."""
        return DeviceChoice(self.device, self.compute, self.device_reason, self.compute_reason, self.warning,
                            self.requested)

    def weights_choice(self) -> DeviceChoice:
        """Where and in which dtype the weights load (`models.load_model`)."""
        return dataclasses.replace(self.compute_choice(), dtype=self.weights, precision_reason=self.base_reason)

    def scoring_choice(self) -> DeviceChoice:
        """Where and in which dtype models load whose log-probs a person reads."""
        warning = self.warning if self.scoring == self.compute else ""
        return DeviceChoice(self.device, self.scoring, self.device_reason, self.scoring_reason, warning,
                            self.requested)

    def trained(self, lora: bool, base: str, checkpointing: bool, why: str, micro_batch: int | None = None
                ) -> "RunPlan":
        """This plan with a training mode chosen for memory (`catalog.fit.fit_verdict`), `why` its
        reason; `micro_batch`: the pairs per micro-batch it fits with, where fewer than planned."""
        return dataclasses.replace(self, lora=lora, lora_reason=why if lora else self.lora_reason, base=base,
                                   base_reason=why if lora else FULL_WEIGHTS, checkpointing=checkpointing,
                                   checkpointing_reason=why if checkpointing else self.checkpointing_reason,
                                   micro_batch=micro_batch,
                                   micro_batch_reason=why if micro_batch else self.micro_batch_reason)

    def effective_batch(self, batch_size: int, grad_accum: int) -> tuple[int, int]:
        """(batch size, accumulation) for a configured `batch_size` x `grad_accum`: the plan's
        micro-batch where it is smaller, with accumulation raised to keep at least the same
        effective batch; else as configured."""
        if not self.micro_batch or batch_size <= self.micro_batch:
            return batch_size, grad_accum
        return self.micro_batch, -(-batch_size * grad_accum // self.micro_batch)


def fits_fp32(parameters: int, free_bytes: int) -> bool:
    """Whether fp32 copies of a model's weights fit in `free_bytes`, with SCORING_SPARE."""
    return 4 * parameters * SCORING_SPARE <= free_bytes


def plan_run(request: PlanRequest = PlanRequest(), parameters: int | None = None, free_bytes: int | None = None,
             measure: bool = True, choice: DeviceChoice | None = None) -> RunPlan:
    """The plan for `request` on this machine (see the module docstring).

    Args:
        parameters, free_bytes: the model's parameter count and the bytes free where it runs; with
            both, the scoring precision asks whether fp32 weights fit (`fits_fp32`).
        measure: False: never time bf16 against fp32 (the catalog).
        choice: a device and precision already picked (the window's), instead of `pick_device`.
    """
    choice = choice or pick_device(request.device, request.dtype, measure=measure)
    plan = _base_plan(choice, request)
    if parameters and free_bytes is not None and not fits_fp32(parameters, free_bytes) \
            and plan.scoring != plan.compute:
        plan = dataclasses.replace(plan, scoring=plan.compute, scoring_reason=(
            f"{SHORT[plan.compute]}: fp32 weights do not fit ({4 * parameters * SCORING_SPARE / 2**30:.1f} GiB "
            f"needed, {free_bytes / 2**30:.1f} GiB free: 4 bytes a weight and a fifth more to score with); "
            "scores may differ from fp32 by up to ~1e-2 relative"))
    return plan


def _base_plan(choice: DeviceChoice, request: PlanRequest) -> RunPlan:
    """The plan of `request` on `choice`'s device and precision."""
    attention = ("float32", "fp32: torch's bf16 attention kernels on a CPU are slower than its fp32 ones "
                            "(dpo_engine/attention.py)") if fp32_attention_wanted(choice) else (
        choice.dtype, f"{SHORT[choice.dtype]}: the compute precision")
    lora = bool(request.lora)
    if not lora:
        base, base_reason = "fp32", FULL_WEIGHTS
    elif request.base_bits == 4:
        base, base_reason = "nf4", "nf4: 4-bit NF4 through bitsandbytes, requested (a quarter of bf16's memory)"
    else:
        base = SHORT[choice.dtype]
        base_reason = f"{base}: a frozen base in the compute precision (every matmul casts its weight to it)"
    scoring, scoring_reason = (choice.dtype, choice.precision_reason) if choice.requested else (
        "float32", SCORING_NOTE)  # a precision named is kept for scores too
    ckpt = bool(request.checkpointing)
    return RunPlan(choice.device, choice.reason, choice.dtype, choice.precision_reason, *attention, lora=lora,
                   lora_reason="requested" if lora else "off: a full fine-tune",
                   base=base, base_reason=base_reason, checkpointing=ckpt,
                   checkpointing_reason="requested" if ckpt else "off: ~30% slower, only where memory needs it",
                   scoring=scoring, scoring_reason=scoring_reason, warning=choice.warning,
                   requested=choice.requested)
