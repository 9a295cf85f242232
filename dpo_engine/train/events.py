"""What `train()` yields: small frozen dataclasses of plain numbers and strings.

No tensor ever crosses into an event (values are `.item()`-ed inside the engine), so a
GUI worker can forward events to another thread as they are. Metric names in `.metrics`
are TRL's (`rewards/chosen`, ...; eval ones prefixed `eval/`), as the store records them.

    LogLine            a line of text for the log pane / terminal
    PrecisionChosen    the precision the run computes in, and why (for the run record)
    ReferenceProgress  reference log-probs being computed (or read from the cache)
    StepEvent          one optimizer step done (a safe point to stop)
    EvalEvent          the held-out pairs scored
    TrainSummary       the last event: finished / stopped / failed, and the checkpoint
"""

from __future__ import annotations

from dataclasses import dataclass

# (field name, TRL metric name): the loss family's metrics, in the order TRL logs them
METRIC_FIELDS = (
    ("loss", "loss"),
    ("rewards_chosen", "rewards/chosen"),
    ("rewards_rejected", "rewards/rejected"),
    ("rewards_accuracies", "rewards/accuracies"),
    ("rewards_margins", "rewards/margins"),
    ("logps_chosen", "logps/chosen"),
    ("logps_rejected", "logps/rejected"),
)


@dataclass(frozen=True)
class LogLine:
    message: str
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True)
class PrecisionChosen:
    device: str  # "cpu", "cuda", ...
    dtype: str  # the compute precision: "float32" | "bfloat16"
    autocast: bool  # True: fp32 weights and optimizer state, the forward under autocast to `dtype`
    reason: str  # e.g. "bf16: CPU has avx512_bf16, matmul 2.0x fp32 (measured 2026-12-02)"

    @property
    def record(self) -> dict:
        """As the run record (project runs table, dpo_studio_run.json) stores it."""
        return {"dtype": self.dtype, "autocast": self.autocast, "device": self.device, "reason": self.reason}


@dataclass(frozen=True)
class ReferenceProgress:
    done: int  # pairs scored so far
    total: int  # pairs to score (train + eval)
    cached: bool  # True when read from the on-disk cache instead of computed

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True)
class StepEvent:
    step: int  # optimizer steps done (1-based)
    total_steps: int
    epoch: float  # fractional epoch reached, e.g. 1.5
    loss: float
    rewards_chosen: float
    rewards_rejected: float
    rewards_accuracies: float
    rewards_margins: float
    logps_chosen: float
    logps_rejected: float
    grad_norm: float  # before clipping
    learning_rate: float  # the rate this step used
    tokens_per_s: float  # non-padding prompt + chosen + rejected tokens per second, this step
    elapsed: float  # seconds of training so far (reference precompute excluded)
    eta: float  # seconds left, from the mean step time so far

    @property
    def metrics(self) -> dict[str, float]:
        """TRL-named metrics of this step, as the store logs them."""
        out = {name: getattr(self, f) for f, name in METRIC_FIELDS}
        out.update(grad_norm=self.grad_norm, learning_rate=self.learning_rate, tokens_per_s=self.tokens_per_s,
                   epoch=self.epoch)
        return out


@dataclass(frozen=True)
class EvalEvent:
    step: int  # the optimizer step after which the eval ran
    num_pairs: int
    loss: float
    rewards_chosen: float
    rewards_rejected: float
    rewards_accuracies: float
    rewards_margins: float
    logps_chosen: float
    logps_rejected: float

    @property
    def metrics(self) -> dict[str, float]:
        return {f"eval/{name}": getattr(self, f) for f, name in METRIC_FIELDS}


@dataclass(frozen=True)
class TrainSummary:
    status: str  # "finished" | "stopped" | "failed"
    step: int  # optimizer steps done
    total_steps: int
    elapsed: float  # seconds, reference precompute included
    checkpoint: str | None  # the last good checkpoint folder (None if none was written)
    reason: str = ""  # why it stopped or failed; empty when finished
    tokens_per_s: float = 0.0  # mean over the run's training steps
    final_loss: float | None = None  # the last step's loss


def metric_fields(values: dict[str, float]) -> dict[str, float]:
    """TRL-named metrics -> keyword arguments for StepEvent / EvalEvent."""
    return {f: float(values[name]) for f, name in METRIC_FIELDS}
