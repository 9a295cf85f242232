"""What a training run does: one frozen, validated dataclass (plus LoRA settings).

Every field carries the reason for its default; `__post_init__` raises ConfigError at
once, naming the field and how to fix it, so a bad setting never reaches a model.
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields

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


def setting(default, help: str, *, label: str | None = None, **limits):
    """A TrainConfig field with its help text. `label` puts it on the window's Advanced form
    and among `dpo-engine train`'s options (both built from these fields, so a new setting is
    one line here); `limits` (minimum, maximum, step, decimals, choices) bound its input."""
    return field(default=default, metadata={"help": help, "label": label, **limits})


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = field(metadata={"help": "Folder for the trained model (a loadable model folder); no default on purpose."})
    model: str = setting("default", "The starting policy: 'default', a model folder, a .gguf or a hub id.")
    reference: str | None = setting(None, "Reference model; none: the starting policy. Set it to train a checkpoint "
                                          "against its base.")
    loss: str = setting("sigmoid", "The DPO paper's loss; see dpo_engine.losses for the others.", label="Loss",
                        choices=tuple(LOSSES))
    beta: float = setting(0.1, "KL strength: how far the model may move from the reference. 0.1 is the paper's and "
                               "TRL's default.", label="β", minimum=0.001, maximum=10.0, step=0.05, decimals=3)
    label_smoothing: float = setting(0.0, "Only for loss 'robust': the assumed fraction of flipped labels.")
    rpo_alpha: float = setting(1.0, "Only for loss 'rpo': weight of the NLL term (the RPO paper's value).")
    lr: float = setting(5e-6, "Learning rate (a full fine-tune of a ~100M model on a few hundred pairs moves "
                              "visibly at 5e-6; LoRA needs ~10x more).", label="Learning rate", minimum=1e-8, maximum=1e-2, step=1e-6,
                        decimals=8)
    weight_decay: float = setting(0.0, "DPO already anchors the policy to the reference; TRL's default too.")
    epochs: int = setting(1, "Passes over the pairs: DPO overfits small preference sets quickly.", label="Epochs",
                          minimum=1, maximum=100)
    max_steps: int | None = setting(None, "Optimizer steps; overrides epochs (quick tries and benchmarks).",
                                    label="Max steps", minimum=0, maximum=1_000_000, none="by epochs")
    batch_size: int = setting(2, "Pairs per micro-batch (each pair is 2 sequences).",
                              label="Batch size (pairs)", minimum=1, maximum=256)
    grad_accum: int = setting(4, "Micro-batches per optimizer step: effective batch = batch size x this; larger is a steadier gradient.",
                              label="Grad accumulation", minimum=1, maximum=256)
    max_length: int = setting(512, "Prompt + response tokens; longer responses are cut (the prompt is kept).",
                              label="Max length", minimum=32, maximum=32768, step=64)
    warmup_ratio: float = setting(0.1, "Share of steps spent warming up: avoids a large first update.",
                                  label="Warmup (share of steps)", minimum=0.0, maximum=0.9, step=0.05, decimals=2)
    warmup_steps: int | None = setting(None, "Warmup steps; when set, overrides warmup_ratio.")
    schedule: str = setting("linear", "Learning-rate schedule after warmup: linear decay as TRL, cosine, or "
                                      "constant.", label="Schedule", choices=SCHEDULES)
    max_grad_norm: float = setting(1.0, "Clip the global gradient norm (TRL's default); 0 disables clipping.")
    eval_fraction: float = setting(0.1, "Held out when no eval pairs are given; 0 disables eval.",
                                   label="Eval fraction", minimum=0.0, maximum=0.5, step=0.05, decimals=2)
    eval_every: int = setting(50, "Steps between evals (also at the end); 0: only at the end.",
                              label="Eval every (steps)", minimum=0, maximum=100_000)
    save_every: int = setting(100, "Steps between checkpoints (also on stop and at the end); 0: only then.",
                              label="Save every (steps)", minimum=0, maximum=100_000)
    seed: int = setting(42, "Data split, data order, LoRA init: the same seed gives the same run on a CPU.",
                        label="Seed", minimum=0, maximum=2**31 - 1)
    weight_rankings: bool = setting(False, "A ranking of k answers weighs as one verdict, not k(k-1)/2 pairs "
                                           "(changes which data a run loads, so resume keeps it).",
                                    label="Each ranking counts once")
    lora: LoraSettings | None = setting(None, "None: full fine-tune; set: train adapters, the base stays frozen.")
    merge_lora: bool = setting(False, "Also save the base with the adapter merged in, loadable without peft.")
    gradient_checkpointing: bool = setting(False, "Recomputes activations: less memory, ~30% slower, so opt-in "
                                                  "(the model picker says when a model needs it).",
                                           label="Gradient checkpointing")
    device: str = setting("auto", "auto: CUDA, then MPS, then CPU (dpo_engine.devices).")
    dtype: str = setting("auto", "Compute precision: bf16 autocast where measured faster (CUDA with bf16; a CPU "
                                 "with native bf16: 2.3x per step here), else fp32; trained weights and optimizer "
                                 "state stay fp32, a LoRA run's frozen base is kept in this precision "
                                 "(dpo_engine.devices, train/model.py).")
    base_bits: int | None = setting(None, "None: a LoRA run's frozen base in the compute precision; 4: in 4-bit NF4 "
                                          "through bitsandbytes (QLoRA: a quarter of bf16's memory, slower steps; "
                                          "needs the [gpu] extra and LoRA; dpo_engine.quant).")
    share_prompt: bool = setting(True, "Run each pair's prompt once and reuse its keys/values for both answers.")
    group_answers: bool = setting(True, "Pairs sharing a prompt (a ranking's) are batched together, and each "
                                        "distinct prompt and answer runs once, not once per pair: the same numbers, "
                                        "a ranking of k answers costs k sequences, not k(k-1).")
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
        if "weight_rankings" not in data and isinstance(data.get("extra"), dict):  # runs before the field
            data["weight_rankings"] = bool(data["extra"].get("weight_rankings", False))
        data.setdefault("group_answers", False)  # runs before the field: their batches were pairwise
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
        (c.base_bits in (None, 4), f"base_bits must be 4 (a 4-bit NF4 base) or unset (got {c.base_bits})."),
        (c.base_bits is None or c.lora is not None, "A 4-bit base trains only adapters: turn LoRA on (--lora) or "
                                                    "unset base_bits."),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def form_fields() -> list[Field]:
    """The settings a person sets for a run, in order: the window's Advanced form and
    `dpo-engine train`'s options are built from these (their help, label and limits)."""
    return [f for f in fields(TrainConfig) if f.metadata.get("label")]


def field_kind(f: Field) -> str:
    """'choice', 'bool', 'int' or 'float': which input a form field takes."""
    if "choices" in f.metadata:
        return "choice"
    for kind in ("bool", "int", "float"):
        if str(f.type).startswith(kind):
            return kind
    raise TypeError(f"{f.name}: no input for a field of type {f.type}")
