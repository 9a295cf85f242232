"""What the project a model was trained in says about it, for the model card: the labeled data
(counts and biases, as `dpo-engine stats` gives them), the run that wrote the checkpoint (found
by its folder) with its metrics, and the Compare votes on answers this model wrote.

Only numbers and model names leave this module: prompts and answers are the person's and the
model's text, and the card is Markdown a hub renders, so none of it is pasted there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dpo_engine.models import DEFAULT_MODEL_NAME, DEFAULT_MODEL_REF
from dpo_engine.store.opening import open_project
from dpo_engine.store.rows import CompareVote, Stats, StoredRun
from dpo_engine.winrate import win_rate


@dataclass(frozen=True)
class MatchUp:
    """Compare votes between this model and one other (ties and "both bad" count half a win)."""

    opponent: str  # a short, display-safe name of the other model
    wins: int
    losses: int
    ties: int
    rate: float  # win rate of this model (dpo_engine.winrate)
    low: float  # 95% Wilson interval
    high: float

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties


@dataclass(frozen=True)
class ProjectFacts:
    stats: Stats  # the project's, when the model was exported
    ranking_groups: int
    run: StoredRun | None  # the project's run whose checkpoint is this model's folder (None: none is)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # that run's, TRL names
    matchups: tuple[MatchUp, ...] = ()

    def first_last(self, name: str) -> tuple[tuple[int, float], tuple[int, float]] | None:
        """(step, value) of the first and the last logged value of metric `name`, or None."""
        values = self.metrics.get(name) or []
        return (values[0], values[-1]) if values else None


def _same_path(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def _is_model(ref: str, model_ref: str, folder: Path | None) -> bool:
    """Whether a stored model reference names the exported model (paths compared absolute)."""
    if ref == model_ref:
        return True
    return folder is not None and ref not in ("", DEFAULT_MODEL_REF) and _same_path(ref, folder)


def safe_name(text: str, limit: int = 60) -> str:
    """A model name fit for a Markdown table: letters, digits and . _ - / only (a folder name is
    whatever its maker typed); long names keep their end, which tells runs apart."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-/") else "_" for c in text)
    return cleaned if len(cleaned) <= limit else "…" + cleaned[-(limit - 1):]


def display_name(ref: str, base_ref: str | None = None) -> str:
    """How the card names another model: never a full local path (it says where the person's files are)."""
    if ref == DEFAULT_MODEL_REF:
        name = f"{DEFAULT_MODEL_NAME} (the default model)"
    else:
        path = Path(ref).expanduser()
        name = safe_name(path.name if path.is_absolute() or path.exists() else ref)
    if base_ref and (ref == base_ref or (Path(base_ref).is_absolute() and _same_path(ref, Path(base_ref)))):
        name += ", the base model"
    return name


def _find_run(runs: list[StoredRun], folder: Path | None) -> StoredRun | None:
    if folder is None:
        return None
    found = [r for r in runs if r.checkpoint and _same_path(r.checkpoint, folder)]
    return found[-1] if found else None  # a resumed run keeps its row; the newest wins a tie


def _matchups(votes: list[CompareVote], model_ref: str, folder: Path | None,
              base_ref: str | None) -> tuple[MatchUp, ...]:
    """Votes on (this model, another) pairs, per other model, in order of first vote."""
    tallies: dict[str, list[int]] = {}  # other ref -> [wins, losses, ties]
    for vote in votes:
        left, right, verdict = vote.left_model, vote.right_model, vote.verdict
        mine = (_is_model(left, model_ref, folder), _is_model(right, model_ref, folder))
        if mine[0] == mine[1] or verdict == "skip":  # not this model against another; skips are not votes
            continue
        other = right if mine[0] else left
        tally = tallies.setdefault(other, [0, 0, 0])
        if verdict in ("tie", "both_bad"):
            tally[2] += 1
        else:
            tally[0 if (verdict == "left") == mine[0] else 1] += 1
    out = []
    for other, (wins, losses, ties) in tallies.items():
        rate, low, high = win_rate(wins, losses, ties)
        out.append(MatchUp(display_name(other, base_ref), wins, losses, ties, rate, low, high))
    return tuple(out)


def project_facts(project_path: str | Path, model_ref: str, folder: Path | None,
                  base_ref: str | None = None) -> ProjectFacts:
    """Read the project (read-only: the app may have it open) for the card of the model at `folder`.

    Raises:
        StoreError: the project cannot be opened (missing, not a project, a newer schema).
    """
    with open_project(project_path, read_only=True) as project:
        run = _find_run(project.queries.runs(), folder)
        return ProjectFacts(
            stats=project.queries.stats(),
            ranking_groups=project.queries.ranking_groups(),
            run=run,
            metrics=project.queries.metrics(run.id) if run else {},
            matchups=_matchups(project.queries.compare_votes(), model_ref, folder, base_ref),
        )
