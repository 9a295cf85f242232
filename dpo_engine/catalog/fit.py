"""Will a model train here? Memory of a DPO step, estimated from the model's shape alone.

    full = weights + gradients + AdamW state + activations + runtime
    LoRA = weights + adapter (weights, gradients, AdamW) + activations + runtime

Weights train in fp32 (dpo_engine.train.model: AdamW on bf16 weights loses small updates),
whatever precision or quantisation the file holds, so a Q4 GGUF costs as much as its
dequantised fp32 model. The reference model costs nothing: its log-probs are computed
once before training (full fine-tune) or by the policy with its adapter off (LoRA).

Activations: every token of every layer keeps about ACT_HIDDEN hidden-wide and ACT_FFN
ffn-wide values for the backward (norm inputs, q/k/v, attention output, gate/up/act),
in fp32 on a CPU and roughly half that under bf16 autocast on a GPU; SDPA keeps no
T x T attention matrix. The LM head runs only on response tokens (dpo_engine.logps),
fp32 logits, their softmax and its gradient. The step holds 2 x batch sequences
(chosen and rejected) of up to max_length tokens.

Public API:
    ModelShape, MemoryEstimate, FitVerdict
    training_memory(shape, lora=..., ...) -> MemoryEstimate       (pure)
    fit_verdict(shape, budget_bytes, device, ...) -> FitVerdict   (pure)
    memory_budget(device) -> (bytes free, device name)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from dpo_engine.defaults import SmallDataDefaults

FULL_FITS = "full fine-tune fits"
LORA_ONLY = "LoRA only"
TOO_LARGE = "too large"

DEFAULT_BATCH_PAIRS = SmallDataDefaults().batch_size  # the Train page's default micro-batch, in pairs
DEFAULT_MAX_LENGTH = 512  # TrainConfig.max_length's default (tests/test_catalog.py keeps them equal)
ACT_HIDDEN = 16  # hidden-wide values kept per token and layer, and ACT_FFN ffn-wide (gate, up, product),
ACT_FFN = 4  # bench/catalog_memory.py, SmolLM2 fp32 CPU, 2 AdamW steps: 4x256 tokens peaked at 4.17 GB
# RSS (estimate 4.97), 8x512 at 10.21 GB (estimate 11.54): ~2 MB a token, so activations dominate past ~1,000
RESPONSE_FRACTION = 0.5  # share of tokens the LM head scores: answers are about half a pair's tokens
LORA_RANK = 16  # LoraSettings.rank's default; adapters on every linear of each block
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
    verdict: str  # FULL_FITS | LORA_ONLY | TOO_LARGE
    device: str  # the device the estimate is for ("cpu", "cuda:0 (NVIDIA H200)")
    budget: int  # bytes the step may use there (free memory x HEADROOM)
    full: MemoryEstimate
    lora: MemoryEstimate
    batch_pairs: int
    max_length: int
    gradient_checkpointing: bool = False  # the verdict holds only with gradient checkpointing on
    checkpointed_activations: int = 0  # activations with gradient checkpointing (either mode)

    def explain(self) -> str:
        """One line for a person: the verdict and the numbers behind it."""
        how, acts = "", ""
        if self.gradient_checkpointing:
            how = " with gradient checkpointing"
            acts = f" (activations ~{gib(self.full.activations)}, checkpointed ~{gib(self.checkpointed_activations)})"
        return (f"{self.verdict}{how}: full fine-tune needs ~{gib(self.full.total)}, LoRA ~{gib(self.lora.total)}"
                f"{acts}; {gib(self.budget)} usable on {self.device} (batch {self.batch_pairs} pairs x "
                f"{self.max_length} tokens)")

    def to_dict(self) -> dict:
        out = asdict(self)
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


def activation_bytes(shape: ModelShape, tokens: int, value_bytes: int, checkpointed: bool = False) -> int:
    """Activations kept for the backward over `tokens` tokens (see the module docstring).

    Gradient checkpointing keeps only each layer's input (one hidden-wide value per token and
    layer) and recomputes one layer at a time. Without a known shape, hidden is taken as
    sqrt(parameters / (12 x 24 layers)).
    """
    layers = shape.layers or 24
    hidden = shape.hidden or int(math.sqrt(shape.parameters / (12 * layers)))
    ffn = shape.ffn or 4 * hidden
    per_layer = tokens * (ACT_HIDDEN * hidden + ACT_FFN * ffn) * value_bytes
    body = tokens * layers * hidden * value_bytes + per_layer if checkpointed else layers * per_layer
    head = int(tokens * RESPONSE_FRACTION) * shape.vocab * 4 * 3  # fp32 logits, softmax, their gradient
    return body + head


def training_memory(shape: ModelShape, lora: bool, batch_pairs: int = DEFAULT_BATCH_PAIRS,
                    max_length: int = DEFAULT_MAX_LENGTH, autocast_bytes: int = 4,
                    checkpointed: bool = False) -> MemoryEstimate:
    """Peak bytes of one DPO step (fp32 master weights; `autocast_bytes` 2 under bf16 autocast)."""
    p = shape.parameters
    trainable = lora_parameters(shape) if lora else p
    acts = activation_bytes(shape, 2 * batch_pairs * max_length, autocast_bytes, checkpointed)
    weights = 4 * p + (4 * trainable if lora else 0)
    return MemoryEstimate(weights=weights, gradients=4 * trainable, optimizer=8 * trainable,
                          activations=acts, runtime=RUNTIME_BYTES)


def fit_verdict(shape: ModelShape, free_bytes: int, device: str = "cpu", batch_pairs: int = DEFAULT_BATCH_PAIRS,
                max_length: int = DEFAULT_MAX_LENGTH) -> FitVerdict:
    """The cheapest way that fits in HEADROOM of `free_bytes`, in this order: full fine-tune,
    full with gradient checkpointing, LoRA, LoRA with checkpointing; else too large.
    (Checkpointing costs ~30% speed, so it is only asked for where activations make the difference.)

    On CUDA the forward runs under bf16 autocast, so activations cost 2 bytes a value.
    """
    value_bytes = 2 if device.startswith("cuda") else 4
    budget = int(free_bytes * HEADROOM)
    options = [(mode, ckpt, training_memory(shape, mode == LORA_ONLY, batch_pairs, max_length, value_bytes, ckpt))
               for mode in (FULL_FITS, LORA_ONLY) for ckpt in (False, True)]
    verdict, ckpt = next(((mode, c) for mode, c, m in options if m.total <= budget), (TOO_LARGE, False))
    full, lora = options[0][2], options[2][2]
    return FitVerdict(verdict, device, budget, full, lora, batch_pairs, max_length, ckpt,
                      options[1][2].activations)


# --------------------------------------------------------------------------- the machine


def free_ram() -> int:
    """Bytes of RAM available to a new allocation (psutil; else /proc/meminfo's MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_budget(device: str = "auto") -> tuple[int, str]:
    """(free bytes, device label) for the device that will train: CUDA's free memory, else RAM.

    MPS shares the machine's RAM, so it is judged against free RAM.
    """
    if device == "cpu":
        return free_ram(), "cpu"
    from dpo_engine.devices import pick_device

    choice = pick_device(device, "float32")
    if choice.device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(choice.torch_device)
        return int(free), choice.describe().rsplit(",", 1)[0]
    return free_ram(), choice.device
