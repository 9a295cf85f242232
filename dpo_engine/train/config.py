"""What a training run does: one frozen, validated dataclass (plus LoRA settings).

Every field carries the reason for its default; `__post_init__` raises ConfigError at
once, naming the field and how to fix it, so a bad setting never reaches a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dpo_engine.errors import ConfigError
from dpo_engine.losses import LOSSES, LossParams

SCHEDULES = ("linear", "cosine", "constant")
DTYPES = ("auto", "float32", "bfloat16")
MIN_TRAIN_PAIRS = 2  # below this there is no "batch" to speak of, only memorising one example


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16  # enough capacity for preference tuning of a small model; 8-64 is usual
    alpha: int = 32  # 2 x rank: the common scaling, keeps the update size stable across ranks
    dropout: float = 0.05  # light regularisation for the few hundred pairs a person labels
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # ^ every linear of a Llama block: QLoRA's finding that all-linear LoRA matches full tuning best

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be at least 1 (got {self.rank}); 16 is a good start.")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be > 0 (got {self.alpha}); use twice the rank.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout must be in [0, 1) (got {self.dropout}).")
        if not self.target_modules:
            raise ConfigError("LoRA target_modules is empty: name at least one linear layer, e.g. q_proj.")


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str  # where the checkpoint (a loadable model folder) is written; no default on purpose
    model: str = "default"  # the starting policy: 'default', a model folder, a .gguf or a hub id
    reference: str | None = None  # None: the starting policy; set it to train a checkpoint against its base
    loss: str = "sigmoid"  # the DPO paper's loss; see dpo_engine.losses.LOSSES for the others
    beta: float = 0.1  # KL strength; 0.1 is the paper's and TRL's default
    label_smoothing: float = 0.0  # only for loss 'robust': assumed fraction of flipped labels
    rpo_alpha: float = 1.0  # only for loss 'rpo': weight of the NLL term (RPO paper's value)
    lr: float = 5e-6  # full fine-tune of a ~100M model on a few hundred pairs moves visibly at 5e-6
    weight_decay: float = 0.0  # DPO already anchors the policy to the reference; TRL's default too
    epochs: int = 1  # one pass: DPO overfits small preference sets quickly
    max_steps: int | None = None  # when set, overrides epochs (useful for quick tries and benchmarks)
    batch_size: int = 2  # pairs per micro-batch; 2 pairs = 4 sequences fits a CPU's memory
    grad_accum: int = 4  # micro-batches per optimizer step: effective batch 8 pairs, a steadier gradient
    max_length: int = 512  # prompt + response tokens; longer responses are cut (the prompt is kept)
    warmup_ratio: float = 0.1  # fraction of steps spent warming up: avoids a large first update
    warmup_steps: int | None = None  # when set, overrides warmup_ratio
    schedule: str = "linear"  # linear decay after warmup, as TRL; or cosine, or constant
    max_grad_norm: float = 1.0  # clip the global gradient norm (TRL's default); 0 disables clipping
    eval_fraction: float = 0.1  # held out when no eval pairs are given; 0 disables eval
    eval_every: int = 50  # steps between evals (also at the end); 0: only at the end
    save_every: int = 100  # steps between checkpoints (also on stop and at the end); 0: only then
    seed: int = 42  # data split, data order, LoRA init: the same seed gives the same run on a CPU
    lora: LoraSettings | None = None  # None: full fine-tune; set: train adapters, the base stays frozen
    merge_lora: bool = False  # also save the base with the adapter merged in, loadable without peft
    gradient_checkpointing: bool = False  # recomputes activations: less memory, ~30% slower, so opt-in
    device: str = "auto"  # auto: CUDA, then MPS, then CPU (dpo_engine.devices)
    dtype: str = "auto"  # compute precision: bf16 autocast where measured faster (CUDA with bf16; a CPU with
    # native bf16: 2.3x per step here), else fp32; weights and optimizer state stay fp32 (dpo_engine.devices)
    share_prompt: bool = True  # run each pair's prompt once and reuse its keys/values for both answers
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes stored with the run

    def __post_init__(self):
        _validate(self)

    @property
    def loss_params(self) -> LossParams:
        return LossParams(self.beta, self.label_smoothing, self.rpo_alpha)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (stored in checkpoints and the project's runs table)."""
        out = asdict(self)
        if self.lora is not None:
            out["lora"]["target_modules"] = list(self.lora.target_modules)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        if data.get("lora") is not None:
            lora = dict(data["lora"])
            lora["target_modules"] = tuple(lora.get("target_modules", LoraSettings.target_modules))
            data["lora"] = LoraSettings(**lora)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _validate(c: TrainConfig) -> None:
    """Raise ConfigError for the first invalid setting, saying how to fix it."""
    if not str(c.output_dir).strip():
        raise ConfigError("output_dir is empty: give a folder for the trained model (--output DIR).")
    if c.loss not in LOSSES:
        raise ConfigError(f"Unknown loss {c.loss!r}: use one of {', '.join(LOSSES)}.")
    c.loss_params  # validates beta, label_smoothing, rpo_alpha  # noqa: B018
    checks = [
        (c.lr > 0, f"lr must be > 0 (got {c.lr}); 5e-6 for a full fine-tune, 5e-5 with LoRA."),
        (c.weight_decay >= 0, f"weight_decay must be >= 0 (got {c.weight_decay})."),
        (c.epochs >= 1, f"epochs must be at least 1 (got {c.epochs})."),
        (c.max_steps is None or c.max_steps >= 1, f"max_steps must be at least 1 (got {c.max_steps}), or unset."),
        (c.batch_size >= 1, f"batch_size must be at least 1 pair (got {c.batch_size})."),
        (c.grad_accum >= 1, f"grad_accum must be at least 1 (got {c.grad_accum})."),
        (c.max_length >= 8, f"max_length must be at least 8 tokens (got {c.max_length}); 512 is a good start."),
        (0 <= c.warmup_ratio < 1, f"warmup_ratio must be in [0, 1) (got {c.warmup_ratio})."),
        (c.warmup_steps is None or c.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {c.warmup_steps})."),
        (c.schedule in SCHEDULES, f"Unknown schedule {c.schedule!r}: use one of {', '.join(SCHEDULES)}."),
        (c.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (got {c.max_grad_norm}); 0 disables clipping."),
        (0 <= c.eval_fraction < 1, f"eval_fraction must be in [0, 1) (got {c.eval_fraction}); 0.1 holds out 10%."),
        (c.eval_every >= 0, f"eval_every must be >= 0 (got {c.eval_every}); 0 evaluates only at the end."),
        (c.save_every >= 0, f"save_every must be >= 0 (got {c.save_every}); 0 saves only at the end."),
        (c.dtype in DTYPES, f"Unknown dtype {c.dtype!r}: use one of {', '.join(DTYPES)}"
                            + (" (float16 training needs loss scaling, which the trainer does not do)."
                               if c.dtype == "float16" else ".")),
        (not c.merge_lora or c.lora is not None, "merge_lora needs LoRA: turn LoRA on (--lora) or drop merge_lora."),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
