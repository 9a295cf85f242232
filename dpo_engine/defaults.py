"""Training defaults for the data a person labels in minutes, and an estimate of whether
that data is enough. One place: the Train page and `dpo-engine train` both read it.

Measured with `bench/simulated_user.py` (SmolLM2-135M-Instruct, full fine-tune, CPU; the
table is in bench/README.md, "Simulated user"): a scripted labeler who prefers shorter
answers ranks 4 answers (<= 96 tokens) to each of 60 prompts, giving 77-89 pairs; one pass
is 9-11 steps. With these defaults held-out answers got 76% and 46% shorter (two seeds);
through the app itself (`bench/gui_user.py`, 128 tokens, 111-115 pairs) 89% and 74%.
Each line says what was measured and what was not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SMALL_DATA_PAIRS = 1000  # below this, the small-data schedule applies; above, TrainConfig's own defaults
# Evidence thresholds (usable DPO pairs):
FEW_PAIRS = 50  # measured on SmolLM2-135M: 40 pairs (two answers per prompt) changed nothing measurable
ENOUGH_PAIRS = 75  # bench: 60 rankings gave 77 and 89 pairs, and answers 76% and 46% shorter on held-out
# prompts (two seeds, lr 5e-5, cut-off answers trained open). That preference (length) is clear and
# consistent; a subtler one needs more, which the message says


@dataclass(frozen=True)
class SmallDataDefaults:
    beta: float = 0.1  # bench: β 0.05 / 0.1 / 0.2 gave -78/-76/-74% and -54/-46/-43% (two seeds): a few
    # points, inside the seed-to-seed spread; the paper's 0.1 keeps the stronger anchor to the reference
    lr: float = 5e-5  # 10x TrainConfig's 5e-6, for ~10-40 steps; bench (before cut-off answers were trained
    # open): -72%/-25% length at 5e-5 vs -25%/-4% at 2e-5
    epochs: int = 1  # bench: 2 epochs made answers 83-85% shorter but degenerate ("WHOOOO…", "ABOUT YOUR
    # NAME."); fresh samples beat extra epochs (2+ epochs on 40 pairs memorise: train accuracy 1.0, held-out 0.5)
    warmup_ratio: float = 0.1  # not varied in the bench: one step in ten warms up the larger lr
    batch_size: int = 4  # pairs per micro-batch: 8 sequences of <200 tokens fit any CPU's memory
    grad_accum: int = 2  # effective batch 8 pairs: ~10 steps for 80 pairs, ~40 for 300: a curve with points
    weight_rankings: bool = False  # bench: a ranking counting once (its pairs 1/n each) gave -74%/-55% vs
    # -76%/-46% unweighted: no consistent gain, so every pair counts once (as in TRL)

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
        return SmallDataDefaults(lr=5e-6)  # measured: ~2,000 pairs (250 steps) at 5e-6 moved the model clearly
    return SmallDataDefaults()


@dataclass(frozen=True)
class DataEstimate:
    level: str  # "too_few" | "few" | "enough"
    message: str  # one or two sentences for the person


def data_estimate(n_pairs: int) -> DataEstimate:
    """Whether `n_pairs` usable pairs are likely to change the model visibly (thresholds above)."""
    if n_pairs < FEW_PAIRS:
        return DataEstimate("too_few", (
            f"{n_pairs} pairs: likely too few to change the model visibly (measured: 40 pairs changed "
            f"nothing). Aim for {ENOUGH_PAIRS}+; ranking 4 answers gives up to 6 pairs per prompt."))
    if n_pairs < ENOUGH_PAIRS:
        return DataEstimate("few", (
            f"{n_pairs} pairs: training will run, but the change may be small. Measured: 60 rankings "
            f"(77-89 pairs) made answers 46-76% shorter; aim for {ENOUGH_PAIRS}+ ({ENOUGH_PAIRS - n_pairs} more)."))
    return DataEstimate("enough", (
        f"{n_pairs} pairs: likely enough for a visible change if you ranked by one clear preference "
        "(measured: 60 rankings, 77-89 pairs, made answers 46-76% shorter); a subtler preference needs "
        "more. Fresh prompts help more than extra epochs."))
