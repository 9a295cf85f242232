"""What a project reads: typed rows (`store.rows`) of the labeling data and the training runs.

`Queries` is held by an open project as `project.queries` and uses its connection (so its
thread). Every method is a fixed number of statements, whatever the number of rows: a list is
built from one query, never completed by a query per row. The statements left as SQL are joins,
aggregates, window functions and correlated counts, which sqlite-utils' table API (one table's
rows) does not express; single-table reads go through that API.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable

from sqlite_utils import Database

from dpo_engine.pairs import PreferencePair
from dpo_engine.store.rows import (
    CompareVote,
    ComparisonRow,
    Counts,
    LengthMeans,
    PositionBias,
    RunSummary,
    Stats,
    StoredModel,
    StoredPair,
    StoredPrompt,
    StoredRun,
)
from dpo_engine.store.schema import VERDICTS, prompt_value

SESSION_GAP_S = 300.0  # a pause longer than this between labels is a break, not labeling time

_PAIR_SQL = """
SELECT c.id, c.prompt_id, p.split, c.verdict, p.text, p.messages, l.text, r.text, c.pair_hash,
       l.finished, r.finished, c.group_id
FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
JOIN responses l ON l.id = c.left_id JOIN responses r ON r.id = c.right_id
WHERE c.deleted IS NULL AND c.pair_hash IS NOT NULL
"""

# how many live comparisons a prompt has: labeling takes the least-labeled prompts first
_LABEL_COUNT = "(SELECT count(*) FROM comparisons c WHERE c.prompt_id = p.id AND c.deleted IS NULL)"

_BROWSE_FROM = """
FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
JOIN responses l ON l.id = c.left_id JOIN responses r ON r.id = c.right_id
"""
_BROWSE_SELECT = """
SELECT c.id, c.prompt_id, c.verdict, c.source, p.split, p.text, p.messages, l.text, r.text,
       c.created, c.strength, c.note, c.group_id""" + _BROWSE_FROM

# The last point of each metric of each run, as `metrics` orders a series (step, then logging
# order: a resumed run logs a step again): one pass over the metrics index, not a query per run.
_LAST_POINTS = """
SELECT run_id, name, step, value FROM (
    SELECT run_id, name, step, value,
           row_number() OVER (PARTITION BY run_id, name ORDER BY step DESC, rowid DESC) AS k
    FROM metrics WHERE name IN ({marks}))
WHERE k = 1
"""


@dataclass(frozen=True)
class ComparisonFilter:
    text: str = ""  # substring of prompt, either answer or note (case-insensitive for ASCII)
    verdict: str | None = None  # one of VERDICTS, or None for all
    source: str | None = None  # label / import / compare, or None for all
    split: str | None = None  # train / eval, or None for both


def _where(f: ComparisonFilter) -> tuple[str, list]:
    clauses, args = ["c.deleted IS NULL"], []
    for column, value in (("c.verdict", f.verdict), ("c.source", f.source), ("p.split", f.split)):
        if value:
            clauses.append(f"{column} = ?")
            args.append(value)
    if f.text:
        like = "%" + f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in
                                         ("p.text", "p.messages", "l.text", "r.text", "c.note")) + ")")
        args += [like] * 5
    return " WHERE " + " AND ".join(clauses), args


def _comparison(row: tuple) -> ComparisonRow:
    return ComparisonRow(*row[:5], prompt_value(row[5], row[6]), *row[7:])


def _run(row: dict) -> StoredRun:
    return StoredRun(row["id"], json.loads(row["config"]), row["status"], row["started"], row["ended"],
                     row["error"], row["checkpoint"])


class Queries:
    """The read queries of one open project (its connection and thread)."""

    def __init__(self, db: Database):
        self.db = db

    def _all(self, sql: str, args: Iterable = ()) -> list[tuple]:
        """Rows of a join or an aggregate, which the table API does not express: kept as SQL."""
        return self.db.execute(sql, list(args)).fetchall()

    # -- pairs and prompts
    def training_pairs(self, split: str | None = "train", weight_rankings: bool = False) -> list[StoredPair]:
        """DPO pairs from left/right verdicts (ties, both_bad, skips and two identical
        answers are not pairs); a pair stored twice is returned once.

        weight_rankings: give each pair of a ranking the weight 1 / (pairs that ranking gave),
        so a ranking counts as much as one pairwise verdict however many pairs it yields
        (InstructGPT's treatment of its K-answer rankings); otherwise every pair weighs 1."""
        sql, args = _PAIR_SQL, []
        if split:
            sql += " AND p.split = ?"
            args.append(split)
        out, seen = [], set()
        for cid, pid, sp, verdict, text, messages, left, right, digest, lend, rend, group in self._all(
                sql + " ORDER BY c.id", args):
            if digest in seen:
                continue
            seen.add(digest)
            # finished: 1 ended, 0 cut off at the token cap, NULL unknown (counted as ended)
            won, lost = ((left, lend), (right, rend)) if verdict == "left" else ((right, rend), (left, lend))
            pair = PreferencePair(prompt_value(text, messages), won[0], lost[0], won[1] != 0, lost[1] != 0)
            out.append(StoredPair(pair, cid, pid, sp, group))
        if weight_rankings:
            sizes = Counter(sp.group for sp in out if sp.group is not None)
            out = [replace(sp, pair=replace(sp.pair, weight=1 / sizes[sp.group])) if sp.group is not None else sp
                   for sp in out]
        return out

    def run_pairs(self, weight_rankings: bool = False) -> tuple[list[PreferencePair], list[PreferencePair]]:
        """(train pairs, held-out pairs) for a training run, in one query (see `training_pairs`)."""
        both = self.training_pairs(None, weight_rankings)
        return [sp.pair for sp in both if sp.split == "train"], [sp.pair for sp in both if sp.split == "eval"]

    def prompts(self, split: str | None = None, unlabeled_first: bool = True) -> list[StoredPrompt]:
        """The prompts for labeling, those with fewest comparisons first when asked."""
        sql = f"SELECT p.id, p.text, p.messages, {_LABEL_COUNT} AS n FROM prompts p"
        args = []
        if split:
            sql += " WHERE p.split = ?"
            args.append(split)
        sql += " ORDER BY n, p.id" if unlabeled_first else " ORDER BY p.id"
        return [StoredPrompt(pid, prompt_value(text, messages)) for pid, text, messages, _ in self._all(sql, args)]

    def next_prompt(self, exclude: Iterable[int] = ()) -> StoredPrompt | None:
        """The prompt to label next, or None: fewest comparisons first, oldest first among equals,
        skipping the ids in `exclude` (those already shown this session). One row, so the Label
        page stays fast on a 10,000-prompt import."""
        skip = sorted(set(exclude))
        sql = ("SELECT p.id, p.text, p.messages FROM prompts p"
               + (f" WHERE p.id NOT IN ({', '.join('?' * len(skip))})" if skip else "")
               + f" ORDER BY {_LABEL_COUNT}, p.id LIMIT 1")
        rows = self._all(sql, skip)  # ordered by a correlated count: SQL
        return StoredPrompt(rows[0][0], prompt_value(rows[0][1], rows[0][2])) if rows else None

    # -- browsing (the Data page pages through these)
    def count_comparisons(self, f: ComparisonFilter = ComparisonFilter()) -> int:
        where, args = _where(f)
        return self._all("SELECT count(*)" + _BROWSE_FROM + where, args)[0][0]

    def list_comparisons(self, f: ComparisonFilter = ComparisonFilter(), offset: int = 0,
                         limit: int = 200) -> list[ComparisonRow]:
        """One page of comparisons, newest first."""
        where, args = _where(f)
        rows = self._all(_BROWSE_SELECT + where + " ORDER BY c.id DESC LIMIT ? OFFSET ?", args + [limit, offset])
        return [_comparison(r) for r in rows]

    def comparison(self, cid: int) -> ComparisonRow | None:
        """One comparison by id (deleted ones too), or None."""
        rows = self._all(_BROWSE_SELECT + " WHERE c.id = ?", (cid,))
        return _comparison(rows[0]) if rows else None

    def compare_votes(self) -> list[CompareVote]:
        """Every live Compare vote, oldest first (skips included: the caller decides what counts)."""
        return [CompareVote(*r) for r in self._all(
            "SELECT l.model, r.model, c.verdict FROM comparisons c "
            "JOIN responses l ON l.id = c.left_id JOIN responses r ON r.id = c.right_id "
            "WHERE c.deleted IS NULL AND c.source = 'compare' ORDER BY c.id")]

    def ranking_groups(self) -> int:
        """How many rankings (k answers ranked at once, stored as one group of comparisons) are live."""
        return self._all("SELECT count(DISTINCT group_id) FROM comparisons WHERE deleted IS NULL "
                         "AND group_id IS NOT NULL")[0][0]

    # -- statistics
    def counts(self) -> Counts:
        """Cheap totals for a status line: prompts, comparisons, train and eval pairs."""
        pairs = self._pairs_by_split()
        return Counts(self.db["prompts"].count, self.db["comparisons"].count_where("deleted IS NULL"),
                      pairs["train"], pairs["eval"])

    def _pairs_by_split(self) -> dict[str, int]:
        return _split_counts(self._all(
            "SELECT p.split, count(DISTINCT c.pair_hash) FROM comparisons c JOIN prompts p ON p.id = c.prompt_id "
            "WHERE c.deleted IS NULL AND c.pair_hash IS NOT NULL GROUP BY 1"))

    def stats(self) -> Stats:
        """Counts and biases of the labeled data (see `dpo-engine stats`)."""
        by_verdict = dict.fromkeys(VERDICTS, 0)
        by_verdict.update(self._all("SELECT verdict, count(*) FROM comparisons WHERE deleted IS NULL GROUP BY 1"))
        pairs = self.training_pairs(split=None)
        decided = [r["verdict"] for r in self.db["comparisons"].rows_where(
            "deleted IS NULL AND source = 'label' AND verdict IN ('left', 'right')", select="verdict")]
        prompts = self.db["prompts"].count
        labeled = self._all("SELECT count(DISTINCT prompt_id) FROM comparisons WHERE deleted IS NULL")[0][0]
        return Stats(
            prompts=prompts,
            prompts_by_split=_split_counts(self._all("SELECT split, count(*) FROM prompts GROUP BY 1")),
            labeled_prompts=labeled,
            labeled_fraction=labeled / prompts if prompts else 0.0,
            comparisons=sum(by_verdict.values()),
            by_verdict=by_verdict,
            by_source=dict(self._all("SELECT source, count(*) FROM comparisons WHERE deleted IS NULL "
                                     "GROUP BY 1 ORDER BY 1")),
            pairs=len(pairs),
            pairs_by_split=_split_counts([(s, sum(p.split == s for p in pairs)) for s in ("train", "eval")]),
            labels_per_hour=self._labels_per_hour(),
            position_bias=PositionBias(decided.count("left"), len(decided),
                                       decided.count("left") / len(decided) if decided else None),
            length=LengthMeans(_mean([len(p.pair.chosen) for p in pairs]),
                               _mean([len(p.pair.rejected) for p in pairs])),
            runs=self.db["runs"].count,
        )

    def _labels_per_hour(self) -> float | None:
        times = [r["created"] for r in self.db["comparisons"].rows_where("source = 'label'", select="created",
                                                                          order_by="created")]
        active = sum(min(b - a, SESSION_GAP_S) for a, b in zip(times, times[1:]))
        return len(times) / (active / 3600) if active > 0 else None

    # -- runs
    def runs(self) -> list[StoredRun]:
        """Every run, oldest first."""
        return [_run(r) for r in self.db["runs"].rows_where(order_by="id")]

    def run(self, run_id: int) -> StoredRun | None:
        """One run by id, or None."""
        return next((_run(r) for r in self.db["runs"].rows_where("id = ?", [run_id])), None)

    def run_summaries(self, metrics: Iterable[str]) -> list[RunSummary]:
        """Every run, oldest first, with the last logged (step, value) of each of `metrics` it
        logged: two queries, however many runs."""
        names = list(dict.fromkeys(metrics))
        last: dict[int, dict[str, tuple[int, float]]] = {}
        if names:
            for run_id, name, step, value in self._all(_LAST_POINTS.format(marks=", ".join("?" * len(names))),
                                                       names):
                last.setdefault(run_id, {})[name] = (step, value)
        return [RunSummary(run, last.get(run.id, {})) for run in self.runs()]

    def metrics(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """A run's metrics: name -> [(step, value), ...] in step order (a step logged again, after a
        resume, in the order it was logged)."""
        out: dict[str, list[tuple[int, float]]] = {}
        for row in self.db["metrics"].rows_where("run_id = ?", [run_id], select="name, step, value",
                                                 order_by="name, step, rowid"):
            out.setdefault(row["name"], []).append((row["step"], row["value"]))
        return out

    def models(self) -> list[StoredModel]:
        """Every registered model with its parent's ref, oldest first."""
        # A self-join: sqlite-utils' table API reads one table, so this stays SQL.
        return [StoredModel(*r) for r in self._all(
            "SELECT m.id, m.ref, m.kind, p.ref, m.run_id, m.created "
            "FROM models m LEFT JOIN models p ON p.id = m.parent_id ORDER BY m.id")]


def _split_counts(rows) -> dict[str, int]:
    out = {"train": 0, "eval": 0}
    out.update(rows)
    return out


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None
