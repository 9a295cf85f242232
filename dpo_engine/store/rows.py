"""What the project's read queries (`store.queries`) return: frozen rows of plain values.

A row is built from one query's result, never completed by a query per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpo_engine.pairs import PreferencePair

PromptValue = str | tuple[tuple[str, str], ...]  # text, or ((role, content), ...) like PreferencePair.prompt


@dataclass(frozen=True)
class StoredPrompt:
    id: int
    prompt: PromptValue


@dataclass(frozen=True)
class StoredPair:
    pair: PreferencePair  # chosen = the side the verdict picked
    comparison_id: int
    prompt_id: int
    split: str  # "train" or "eval", fixed by the prompt's hash
    group: int | None = None  # the ranking it came from (None: a pairwise verdict or an import)


@dataclass(frozen=True)
class ComparisonRow:
    id: int
    prompt_id: int
    verdict: str
    source: str
    split: str
    prompt: PromptValue
    left: str
    right: str
    created: float  # unix time
    strength: float | None
    note: str | None
    group: int | None

    @property
    def prompt_text(self) -> str:
        return PreferencePair(self.prompt, "", "").prompt_text


@dataclass(frozen=True)
class CompareVote:
    left_model: str  # the model that wrote the answer shown left
    right_model: str
    verdict: str  # one of VERDICTS; skips included (the reader decides what counts)


@dataclass(frozen=True)
class Counts:
    """Cheap totals for a status line."""
    prompts: int
    comparisons: int  # live ones (deleted left out)
    train_pairs: int
    eval_pairs: int


@dataclass(frozen=True)
class PositionBias:
    left_wins: int  # labeled left/right decisions the left answer won
    decided: int
    left_rate: float | None  # None: no decision yet


@dataclass(frozen=True)
class LengthMeans:
    chosen_mean: float | None  # characters; None: no pairs
    rejected_mean: float | None


@dataclass(frozen=True)
class Stats:
    """Counts and biases of the labeled data (`dpo-engine stats`; `dataclasses.asdict` is its JSON)."""
    prompts: int
    prompts_by_split: dict[str, int]  # "train" / "eval" -> prompts
    labeled_prompts: int  # prompts with at least one live comparison
    labeled_fraction: float
    comparisons: int
    by_verdict: dict[str, int]  # every verdict, 0 included
    by_source: dict[str, int]
    pairs: int  # distinct DPO pairs
    pairs_by_split: dict[str, int]
    labels_per_hour: float | None  # None: too few labels to time
    position_bias: PositionBias
    length: LengthMeans
    runs: int


@dataclass(frozen=True)
class StoredRun:
    id: int
    config: dict  # as the run stored it (decoded JSON), with what it learned once started
    status: str  # one of RUN_STATUSES
    started: float  # unix time
    ended: float | None
    error: str | None
    checkpoint: str | None  # its last complete checkpoint's folder


@dataclass(frozen=True)
class RunSummary:
    """A run with the last logged point of the metrics asked for (what a run list shows)."""
    run: StoredRun
    last: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (step, value)

    def value(self, name: str) -> float | None:
        point = self.last.get(name)
        return None if point is None else point[1]


@dataclass(frozen=True)
class StoredModel:
    id: int
    ref: str  # model reference: a folder, a .gguf file, a hub id
    kind: str  # one of MODEL_KINDS
    parent: str | None  # the parent's ref
    run_id: int | None  # the run that produced it
    created: float
