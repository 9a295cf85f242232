"""Training defaults for the data a person labels in minutes, and an estimate of whether
that data is enough. One place: the Train page and `dpo-engine train` both read it.

Measured with `bench/simulated_user.py` (SmolLM2-135M-Instruct, full fine-tune, CPU; the
numbers and their spread are in bench/README.md, "Simulated user"): a scripted labeler
ranks 4 answers to each of 60 prompts (about 300 pairs). The values below are the ones
that run used; each line says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SMALL_DATA_PAIRS = 1000  # below this, the small-data schedule applies; above, TrainConfig's own defaults
# Evidence thresholds (usable DPO pairs), from the simulated-user benchmark and issue 10's measurement:
FEW_PAIRS = 60  # issue 10: 40 pairs (two answers per prompt) changed nothing measurable
ENOUGH_PAIRS = 250  # 60 rankings of 4 (~300 pairs) moved answer length clearly (bench/README.md)


@dataclass(frozen=True)
class SmallDataDefaults:
    beta: float = 0.1  # the paper's β; with ~300 pairs the policy stays near the reference anyway
    lr: float = 2e-5  # 4x TrainConfig's 5e-6: ~40 steps at 5e-6 left the model's answers unchanged
    epochs: int = 1  # one pass: fresh samples beat extra epochs (issue 10: 2+ epochs memorise)
    warmup_ratio: float = 0.1  # a few warmup steps keep the first, larger-lr updates from overshooting
    batch_size: int = 4  # pairs per micro-batch: 8 sequences of <200 tokens fit any CPU's memory
    grad_accum: int = 2  # effective batch 8 pairs: ~40 steps for 300 pairs, a curve with points
    weight_rankings: bool = False  # all k(k-1)/2 pairs of a ranking count fully (see bench/README.md)

    def to_settings(self) -> dict:
        """The Train page's / CLI's setting names and values."""
        out = asdict(self)
        out.pop("weight_rankings")
        return out


def small_data_defaults(n_pairs: int) -> SmallDataDefaults:
    """The training settings for a project with `n_pairs` usable pairs.

    Small sets (a person's few minutes of ranking) get a larger learning rate so that one
    pass moves the model; large sets keep the conservative full fine-tuning rate, since
    their many steps already move it and a large rate over many steps drifts too far.
    """
    if n_pairs >= SMALL_DATA_PAIRS:
        return SmallDataDefaults(lr=5e-6)
    return SmallDataDefaults()


@dataclass(frozen=True)
class DataEstimate:
    level: str  # "too_few" | "few" | "enough"
    message: str  # one or two sentences for the person


def data_estimate(n_pairs: int, rankings: int = 0) -> DataEstimate:
    """Whether `n_pairs` usable pairs are likely to change the model visibly."""
    if n_pairs < FEW_PAIRS:
        return DataEstimate("too_few", (
            f"{n_pairs} pairs: likely too few to change the model visibly (measured: 40 pairs changed "
            f"nothing). Aim for {ENOUGH_PAIRS}+: ranking 4 answers gives 6 pairs per prompt."))
    if n_pairs < ENOUGH_PAIRS:
        return DataEstimate("few", (
            f"{n_pairs} pairs: training will run, but the change may be small. Measured: ~300 pairs "
            f"(60 rankings of 4) clearly moved the answers; {ENOUGH_PAIRS - n_pairs} more would help."))
    return DataEstimate("enough", (
        f"{n_pairs} pairs: likely enough. Measured: ~300 pairs from 60 rankings of 4 clearly moved the "
        "model's answers in one pass."))
