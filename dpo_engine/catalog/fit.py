"""Will a model train here, and how? Memory of a DPO step, estimated from the model's shape.

    full = weights + gradients + AdamW state + activations + runtime   (fp32 master weights)
    LoRA = frozen base + adapter (weights, gradients, AdamW) + activations + runtime

A full fine-tune keeps fp32 master weights whatever the file holds (AdamW on bf16 weights
loses small updates: dpo_engine.train.model). A LoRA run keeps its frozen base in the
compute precision (bf16 where the device runs bf16, else fp32) or, where bitsandbytes runs,
in 4-bit NF4 (block linears at 4 bits plus a scale per 64; the embedding stays bf16); the
adapter and its AdamW state are fp32. The reference model costs nothing: its log-probs are
computed once before training (full fine-tune) or by the policy with its adapter off (LoRA).

Activations: every token of every layer keeps about ACT_HIDDEN hidden-wide and ACT_FFN
ffn-wide values for the backward (norm inputs, q/k/v, attention output, gate/up/act), at
4 bytes in fp32 and BF16_VALUE_BYTES (measured) under bf16 autocast; SDPA keeps no T x T
attention matrix. LoRA adds LORA_ACT_HIDDEN / LORA_ACT_FFN bytes per token, layer and width
(each adapter's dropout mask and the bf16 copy of its input). The LM head runs only on
response tokens (dpo_engine.logps.label_logps): all its fp32 logits, their softmax and
gradient up to HEAD_WHOLE_BYTES, else one chunk's. The step holds 2 x batch sequences
(chosen and rejected) of up to max_length tokens.

The trainer's defaults (max length, LoRA rank, the head's chunk sizes) are imported from it,
never copied. The constants come from measured peaks (the comment at each names the benchmark);
bench/README.md, "Real model shapes", holds the table.

Public API:
    ModelShape, MemoryEstimate, FitVerdict, MODES
    training_memory(shape, lora=..., ...) -> MemoryEstimate       (pure)
    fit_verdict(shape, budget_bytes, device, ..., plan=...) -> FitVerdict   (pure; .plan: the mode as a RunPlan)
    memory_budget(device) -> (bytes free, device name)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from dpo_engine.defaults import SmallDataDefaults
from dpo_engine.logps import HEAD_CHUNK_BYTES, HEAD_WHOLE_BYTES
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.weights import free_memory, free_ram  # free_ram: tests replace it here

if TYPE_CHECKING:
    from dpo_engine.run_plan import RunPlan

FULL_FITS = "full fine-tune fits"  # the coarse verdict (what the window's picker keys on) ...
LORA_ONLY = "LoRA only"
TOO_LARGE = "too large"
FULL, FULL_CKPT, LORA_4BIT, NONE = "full", "full+checkpointing", "LoRA 4-bit", "too large"  # ... and the mode:
MODES = (FULL, FULL_CKPT, "LoRA bf16", "LoRA fp32", LORA_4BIT, NONE)  # LoRA <base precision>, checkpointed or not

DEFAULT_BATCH_PAIRS = SmallDataDefaults().batch_size  # the Train page's default micro-batch, in pairs
DEFAULT_MAX_LENGTH = TrainConfig.__dataclass_fields__["max_length"].default  # the trainer's own default
ACT_HIDDEN = 16  # hidden-wide values kept per token and layer, and ACT_FFN ffn-wide (gate, up, product),
ACT_FFN = 4  # bench/catalog_memory.py, SmolLM2 fp32 CPU, 2 AdamW steps: 4x256 tokens peaked at 4.17 GB
# RSS (estimate 4.97), 8x512 at 10.21 GB (estimate 11.54): ~2 MB a token, so activations dominate past ~1,000
LORA_ACT_HIDDEN = 18  # bytes per token and layer that LoRA adds per hidden width: q, k, v, o, gate, up each keep
LORA_ACT_FFN = 3  # a dropout mask (1 B) and a bf16 copy of its input (2 B); down the same at ffn width. With
# ACT_* at 2 B this gives 192 KB a token and layer for Llama-3.2-1B's shape; the tensors autograd saved there
# (counted with saved_tensors_hooks, LoRA r16 dropout 0.05, bf16 base under autocast) were 187.6 KB
BF16_VALUE_BYTES = 3  # bytes an activation costs under bf16 autocast, in RSS: not 2, since the norms, softmax and
# LoRA's inputs run in fp32 beside it and the allocator keeps freed blocks. bench/real_size.py, Llama-3.2-1B LoRA
# bf16 (4 pairs, ~1,450 tokens): 10.18 GB peak RSS; at 2 B the estimate was 8.90 GB, at 3 B it is 10.7
CKPT_LAYERS = 3.5  # layers' activations alive at once under gradient checkpointing (the recomputed one, its
# gradients, blocks the allocator holds): the same run checkpointed peaked 5.06 GB (estimate with 1: 3.94 GB)
RESPONSE_FRACTION = 0.5  # share of tokens the LM head scores: answers are about half a pair's tokens
HEAD_COPIES = 3  # fp32 logits, their softmax and its gradient
LORA_RANK = LoraSettings.rank  # the trainer's default rank; adapters on every linear of each block
NF4_BYTES = 0.5 + 4 / 64  # bitsandbytes NF4: 4 bits a weight plus one fp32 scale per block of 64
RUNTIME_BYTES = 600 * 2**20  # torch, transformers and the tokenizer before any tensor (measured ~0.5 GB)
HEADROOM = 0.9  # use at most 90% of what is free: the OS, the GUI and allocator slack need the rest


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs; any field may be unknown (0) except `parameters`."""

    parameters: int  # total parameter count (tied embeddings counted once)
    hidden: int = 0  # hidden_size / embedding_length
    layers: int = 0  # num_hidden_layers / block_count
    ffn: int = 0  # intermediate_size / feed_forward_length
    vocab: int = 0  # vocab_size
    kv_dim: int = 0  # num_key_value_heads * head_dim (0: same as hidden)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs, by part."""

    weights: int
    gradients: int
    optimizer: int  # AdamW: two fp32 moments per trainable parameter
    activations: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime


@dataclass(frozen=True)
class FitVerdict:
    mode: str  # one of MODES: how it trains here ("too large": no way)
    device: str  # the device the estimate is for ("cpu", "cuda:0 (NVIDIA H200)")
    budget: int  # bytes the step may use there (free memory x HEADROOM)
    full: MemoryEstimate  # a full fine-tune at `batch_pairs`, without checkpointing
    lora: MemoryEstimate  # LoRA over a base in the compute precision, without checkpointing
    batch_pairs: int  # the micro-batch the estimate plans for (the Train page's default)
    max_length: int
    gradient_checkpointing: bool = False  # the verdict holds only with gradient checkpointing on
    checkpointed_activations: int = 0  # activations with gradient checkpointing (either mode)
    base: str = ""  # the stored weights of that mode: "fp32" (full; an fp32 LoRA base), "bf16", "nf4"
    precision: str = "float32"  # the compute precision the estimate assumed
    needed: int = 0  # bytes the chosen mode needs (0: none fits)
    four_bit: str = ""  # why 4-bit is not offered here ("" where it is)
    plan: "RunPlan | None" = None  # the mode that fits, as the run plan it trains with (None: none fits, or
    # the verdict was asked without a plan)
    micro_batch: int = 0  # pairs per micro-batch the mode fits with: `batch_pairs`, or fewer (the same
    # effective batch through more accumulation); 0: none fits

    @property
    def verdict(self) -> str:
        """The coarse verdict, from the mode: FULL_FITS | LORA_ONLY | TOO_LARGE."""
        return TOO_LARGE if self.mode in (NONE, "") else LORA_ONLY if self.mode.startswith("LoRA") else FULL_FITS

    def explain(self) -> str:
        """One line for a person: the verdict and the numbers behind it."""
        how, acts = "", ""
        if self.gradient_checkpointing:
            how = " with gradient checkpointing"
            acts = f" (activations ~{gib(self.full.activations)}, checkpointed ~{gib(self.checkpointed_activations)})"
        if 0 < self.micro_batch < self.batch_pairs:
            how += f" in micro-batches of {self.micro_batch} pair{'s' if self.micro_batch > 1 else ''}"
        what = self.verdict if self.mode in (FULL, FULL_CKPT, NONE, "") else f"{self.mode} fits"
        return (f"{what}{how}: full fine-tune needs ~{gib(self.full.total)}, LoRA ~{gib(self.lora.total)}"
                f"{acts}; {gib(self.budget)} usable on {self.device} (batch {self.batch_pairs} pairs x "
                f"{self.max_length} tokens)")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["verdict"] = self.verdict
        if self.plan is not None:
            out["plan"]["key"], out["plan"]["description"] = self.plan.key, self.plan.describe(self.device)
        out["full"]["total"] = self.full.total
        out["lora"]["total"] = self.lora.total
        out["explanation"] = self.explain()
        return out


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def lora_parameters(shape: ModelShape, rank: int = LORA_RANK) -> int:
    """Adapter size: rank x (in + out) for q, k, v, o, gate, up, down of every layer."""
    h, f = shape.hidden, shape.ffn or 4 * shape.hidden
    kv = shape.kv_dim or h
    per_layer = rank * ((h + h) * 2 + (h + kv) * 2 + (h + f) * 3)
    return shape.layers * per_layer if shape.layers and h else int(shape.parameters * 0.01)


def base_bytes(shape: ModelShape, base: str) -> int:
    """The frozen base's bytes stored as `base` ("fp32", "bf16", "nf4": the embedding stays bf16)."""
    p = shape.parameters
    if base == "nf4":
        embedding = min(p, shape.vocab * shape.hidden)
        return int((p - embedding) * NF4_BYTES) + 2 * embedding
    return p * (2 if base == "bf16" else 4)


def activation_bytes(shape: ModelShape, tokens: int, value_bytes: int, checkpointed: bool = False,
                     lora: bool = False) -> int:
    """Activations kept for the backward over `tokens` tokens (see the module docstring).

    Gradient checkpointing keeps only each layer's input (one hidden-wide value per token and
    layer) and recomputes one layer at a time (CKPT_LAYERS layers' worth alive, measured). Without a known shape, hidden is taken as
    sqrt(parameters / (12 x 24 layers)).
    """
    layers = shape.layers or 24
    hidden = shape.hidden or int(math.sqrt(shape.parameters / (12 * layers)))
    ffn = shape.ffn or 4 * hidden
    per_token_layer = (ACT_HIDDEN * hidden + ACT_FFN * ffn) * value_bytes
    if lora:
        per_token_layer += LORA_ACT_HIDDEN * hidden + LORA_ACT_FFN * ffn
    per_layer = tokens * per_token_layer
    body = tokens * layers * hidden * value_bytes + int(CKPT_LAYERS * per_layer) if checkpointed else layers * per_layer
    logits = int(tokens * RESPONSE_FRACTION) * shape.vocab * 4
    head = (logits if logits <= HEAD_WHOLE_BYTES else HEAD_CHUNK_BYTES) * HEAD_COPIES
    return body + head


def training_memory(shape: ModelShape, lora: bool, batch_pairs: int = DEFAULT_BATCH_PAIRS,
                    max_length: int = DEFAULT_MAX_LENGTH, autocast_bytes: int = 4,
                    checkpointed: bool = False, base: str | None = None) -> MemoryEstimate:
    """Peak bytes of one DPO step: fp32 master weights (full) or a frozen `base` ("fp32", "bf16",
    "nf4"; by default the compute precision: bf16 when `autocast_bytes` < 4) plus an fp32 adapter."""
    p = shape.parameters
    trainable = lora_parameters(shape) if lora else p
    acts = activation_bytes(shape, 2 * batch_pairs * max_length, autocast_bytes, checkpointed, lora)
    base = base or ("bf16" if autocast_bytes < 4 else "fp32")
    weights = base_bytes(shape, base) + 4 * trainable if lora else 4 * p
    return MemoryEstimate(weights=weights, gradients=4 * trainable, optimizer=8 * trainable,
                          activations=acts, runtime=RUNTIME_BYTES)


def fit_verdict(shape: ModelShape, free_bytes: int, device: str = "cpu", batch_pairs: int = DEFAULT_BATCH_PAIRS,
                max_length: int = DEFAULT_MAX_LENGTH, precision: str = "float32",
                four_bit: str | None = "bitsandbytes was not checked", plan: "RunPlan | None" = None) -> FitVerdict:
    """The cheapest way that fits in HEADROOM of `free_bytes`. The ways, in order: a full
    fine-tune, then LoRA over a base in the compute precision, then LoRA over a 4-bit base; each
    first as asked, then with gradient checkpointing, then checkpointed in smaller micro-batches
    (`batch_pairs` halved down to 1 pair: `_micro_batches`); else too large.
    (What is trained, and over which base, changes the result, so a smaller micro-batch, which
    keeps the effective batch through accumulation and the same math, is tried before the next
    kind; checkpointing first, since it saves most memory for ~30% speed; 4-bit dequantises
    every weight at every use and rounds the base, so it comes last.)

    Args:
        batch_pairs: the micro-batch planned for (the Train page's default).
        precision: the compute precision ("bfloat16" halves activations and a LoRA base); a
            `plan`'s compute precision wins over it.
        four_bit: why a 4-bit base cannot be used here, or None where it can
            (`dpo_engine.quant.catalog_reason`).
        plan: the device and precisions decided (`run_plan.plan_run`); the verdict carries it back
            with the mode that fits, and its micro-batch where smaller than `batch_pairs`.
    """
    precision = plan.compute if plan is not None else precision
    value_bytes = BF16_VALUE_BYTES if precision == "bfloat16" else 4
    budget = int(free_bytes * HEADROOM)
    sized = [(mode, lora, ckpt, base, pairs, training_memory(shape, lora, pairs, max_length, value_bytes, ckpt,
                                                             base if lora else None))
             for mode, lora, ckpt, base, pairs in _modes(precision, four_bit is None, batch_pairs)]
    mode, lora, ckpt, base, pairs, memory = next((o for o in sized if o[5].total <= budget),
                                                 (NONE, False, False, "", 0, None))
    fitted = None if plan is None or memory is None else plan.trained(
        lora, base, ckpt, _why(mode, ckpt, pairs, sized, budget, device),
        micro_batch=pairs if pairs < batch_pairs else None)
    first = {(o[1], o[2], o[3]): o[5] for o in reversed(sized)}  # each kind at `batch_pairs`
    lora_base = "bf16" if precision == "bfloat16" else "fp32"
    return FitVerdict(mode, device, budget, first[(False, False, "fp32")], first[(True, False, lora_base)],
                      batch_pairs, max_length, ckpt, first[(False, True, "fp32")].activations, base=base,
                      precision=precision, needed=memory.total if memory else 0, four_bit=four_bit or "",
                      plan=fitted, micro_batch=pairs)


def _micro_batches(batch_pairs: int) -> list[int]:
    """`batch_pairs`, halved (rounded up) down to 1: 4 -> [4, 2, 1]."""
    sizes = [max(batch_pairs, 1)]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _modes(precision: str, four_bit: bool, batch_pairs: int) -> list[tuple[str, bool, bool, str, int]]:
    """(mode, LoRA, checkpointing, base, pairs per micro-batch) in the order fit_verdict tries them."""
    lora_base = "bf16" if precision == "bfloat16" else "fp32"
    kinds = [(FULL, False, "fp32"), (f"LoRA {lora_base}", True, lora_base)] + (
        [(LORA_4BIT, True, "nf4")] if four_bit else [])
    modes = []
    for mode, lora, base in kinds:
        modes.append((mode, lora, False, base, batch_pairs))
        modes += [(FULL_CKPT if not lora else mode, lora, True, base, pairs) for pairs in _micro_batches(batch_pairs)]
    return modes


def _why(mode: str, ckpt: bool, pairs: int, sized: list, budget: int, device: str) -> str:
    """The reason of the mode chosen for memory: it fits, and the closest of the cheaper-to-run
    ways before it in order does not."""
    index = next(i for i, o in enumerate(sized) if o[0] == mode and o[2] == ckpt and o[4] == pairs)
    smaller = f" in micro-batches of {pairs} pair{'s' if pairs > 1 else ''}" if pairs < sized[0][4] else ""
    fits = f"{mode}{' with checkpointing' if ckpt else ''}{smaller} fits ({gib(sized[index][5].total)} of " \
           f"{gib(budget)} usable on {device})"
    if index == 0:
        return fits
    closest = min(sized[:index], key=lambda o: o[5].total)
    more = f" in micro-batches of {closest[4]}" if closest[4] < sized[0][4] else ""
    return f"{fits}; {closest[0]}{' with checkpointing' if closest[2] else ''}{more} needs ~{gib(closest[5].total)}"


# --------------------------------------------------------------------------- the machine


def memory_budget(device: str = "auto") -> tuple[int, str]:
    """(free bytes, device label) for the device that will train: CUDA's free memory, else RAM.

    MPS shares the machine's RAM, so it is judged against free RAM.
    """
    if device == "cpu":
        return free_ram(), "cpu"
    from dpo_engine.devices import pick_device

    choice = pick_device(device, "float32")
    if choice.device.startswith("cuda"):
        return free_memory(choice), choice.describe().rsplit(",", 1)[0]
    return free_ram(), choice.device
