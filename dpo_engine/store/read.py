"""Read side of the project store: training pairs, labeling prompts, browsing, statistics,
runs and models. Mixed into `store.Project`; every method reads through `self.db`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable

from dpo_engine.pairs import PreferencePair
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


@dataclass(frozen=True)
class StoredPair:
    pair: PreferencePair  # chosen = the side the verdict picked
    comparison_id: int
    prompt_id: int
    split: str  # "train" or "eval", fixed by the prompt's hash
    group: int | None = None  # the ranking it came from (None: a pairwise verdict or an import)


@dataclass(frozen=True)
class ComparisonFilter:
    text: str = ""  # substring of prompt, either answer or note (case-insensitive for ASCII)
    verdict: str | None = None  # one of VERDICTS, or None for all
    source: str | None = None  # label / import / compare, or None for all
    split: str | None = None  # train / eval, or None for both


@dataclass(frozen=True)
class ComparisonRow:
    id: int
    prompt_id: int
    verdict: str
    source: str
    split: str
    prompt: str | tuple[tuple[str, str], ...]
    left: str
    right: str
    created: float  # unix time
    strength: float | None
    note: str | None
    group: int | None

    @property
    def prompt_text(self) -> str:
        return PreferencePair(self.prompt, "", "").prompt_text


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


class ProjectReads:
    db = None  # sqlite_utils.Database, set by Project

    def _all(self, sql: str, args=()) -> list[tuple]:
        return self.db.conn.execute(sql, args).fetchall()

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

    def prompts(self, split: str | None = None, unlabeled_first: bool = True) -> list[tuple[int, object]]:
        """(id, prompt) for labeling; prompt is text or ((role, content), ...) like
        PreferencePair.prompt. Prompts with fewest comparisons first when asked."""
        sql = f"SELECT p.id, p.text, p.messages, {_LABEL_COUNT} AS n FROM prompts p"
        args = []
        if split:
            sql += " WHERE p.split = ?"
            args.append(split)
        sql += " ORDER BY n, p.id" if unlabeled_first else " ORDER BY p.id"
        return [(pid, prompt_value(text, messages)) for pid, text, messages, _ in self._all(sql, args)]

    def next_prompt(self, exclude: Iterable[int] = ()) -> tuple[int, object] | None:
        """The prompt to label next, (id, prompt) as in `prompts`, or None: fewest comparisons
        first, oldest first among equals, skipping the ids in `exclude` (those already shown
        this session). One row, so the Label page stays fast on a 10,000-prompt import."""
        skip = sorted(set(exclude))
        sql = ("SELECT p.id, p.text, p.messages FROM prompts p"
               + (f" WHERE p.id NOT IN ({', '.join('?' * len(skip))})" if skip else "")
               + f" ORDER BY {_LABEL_COUNT}, p.id LIMIT 1")
        row = self.db.conn.execute(sql, skip).fetchone()
        return None if row is None else (row[0], prompt_value(row[1], row[2]))

    # -- browsing (the Data page pages through these)
    def count_comparisons(self, f: ComparisonFilter = ComparisonFilter()) -> int:
        where, args = _where(f)
        return self._all("SELECT count(*) " + _BROWSE_FROM + where, args)[0][0]

    def list_comparisons(self, f: ComparisonFilter = ComparisonFilter(), offset: int = 0,
                         limit: int = 200) -> list[ComparisonRow]:
        """One page of comparisons, newest first."""
        where, args = _where(f)
        rows = self._all(
            "SELECT c.id, c.prompt_id, c.verdict, c.source, p.split, p.text, p.messages, l.text, r.text, "
            "c.created, c.strength, c.note, c.group_id " + _BROWSE_FROM + where +
            " ORDER BY c.id DESC LIMIT ? OFFSET ?", args + [limit, offset])
        return [ComparisonRow(r[0], r[1], r[2], r[3], r[4], prompt_value(r[5], r[6]), *r[7:]) for r in rows]

    def comparison(self, cid: int) -> ComparisonRow | None:
        """One comparison by id (deleted ones too), or None."""
        rows = self._all(
            "SELECT c.id, c.prompt_id, c.verdict, c.source, p.split, p.text, p.messages, l.text, r.text, "
            "c.created, c.strength, c.note, c.group_id " + _BROWSE_FROM + " WHERE c.id = ?", (cid,))
        return ComparisonRow(*rows[0][:5], prompt_value(rows[0][5], rows[0][6]), *rows[0][7:]) if rows else None

    # -- statistics
    def counts(self) -> dict[str, int]:
        """Cheap totals for a status line: prompts, comparisons, train and eval pairs."""
        pairs = _split_counts(self._all(
            "SELECT p.split, count(DISTINCT c.pair_hash) FROM comparisons c JOIN prompts p ON p.id = c.prompt_id "
            "WHERE c.deleted IS NULL AND c.pair_hash IS NOT NULL GROUP BY 1"))
        return {"prompts": self._all("SELECT count(*) FROM prompts")[0][0],
                "comparisons": self._all("SELECT count(*) FROM comparisons WHERE deleted IS NULL")[0][0],
                "train_pairs": pairs["train"], "eval_pairs": pairs["eval"]}

    def stats(self) -> dict:
        """Counts and biases of the labeled data (see `dpo-engine stats`)."""
        one = lambda sql: self._all(sql)[0][0]  # noqa: E731
        by_verdict = dict.fromkeys(VERDICTS, 0)
        by_verdict.update(self._all("SELECT verdict, count(*) FROM comparisons WHERE deleted IS NULL GROUP BY 1"))
        pairs = self.training_pairs(split=None)
        decided = [v for (v,) in self._all("SELECT verdict FROM comparisons WHERE deleted IS NULL "
                                            "AND source = 'label' AND verdict IN ('left', 'right')")]
        prompts = one("SELECT count(*) FROM prompts")
        labeled = one("SELECT count(DISTINCT prompt_id) FROM comparisons WHERE deleted IS NULL")
        return {
            "prompts": prompts,
            "prompts_by_split": _split_counts(self._all("SELECT split, count(*) FROM prompts GROUP BY 1")),
            "labeled_prompts": labeled,
            "labeled_fraction": labeled / prompts if prompts else 0.0,
            "comparisons": sum(by_verdict.values()),
            "by_verdict": by_verdict,
            "by_source": dict(self._all("SELECT source, count(*) FROM comparisons WHERE deleted IS NULL "
                                        "GROUP BY 1 ORDER BY 1")),
            "pairs": len(pairs),
            "pairs_by_split": _split_counts([(s, sum(p.split == s for p in pairs)) for s in ("train", "eval")]),
            "labels_per_hour": self._labels_per_hour(),
            "position_bias": {"left_wins": decided.count("left"), "decided": len(decided),
                              "left_rate": decided.count("left") / len(decided) if decided else None},
            "length": {"chosen_mean": _mean([len(p.pair.chosen) for p in pairs]),
                       "rejected_mean": _mean([len(p.pair.rejected) for p in pairs])},
            "runs": one("SELECT count(*) FROM runs"),
        }

    def ranking_groups(self) -> int:
        """How many rankings (k answers ranked at once, stored as one group of comparisons) are live."""
        return self._all("SELECT count(DISTINCT group_id) FROM comparisons WHERE deleted IS NULL "
                         "AND group_id IS NOT NULL")[0][0]

    def compare_votes(self) -> list[tuple[str, str, str]]:
        """(model that wrote the left answer, model of the right one, verdict) of every live Compare
        vote, oldest first (skips included: the caller decides what counts)."""
        return self._all("SELECT l.model, r.model, c.verdict FROM comparisons c "
                         "JOIN responses l ON l.id = c.left_id JOIN responses r ON r.id = c.right_id "
                         "WHERE c.deleted IS NULL AND c.source = 'compare' ORDER BY c.id")

    def _labels_per_hour(self) -> float | None:
        times = [t for (t,) in self._all("SELECT created FROM comparisons WHERE source = 'label' ORDER BY created")]
        active = sum(min(b - a, SESSION_GAP_S) for a, b in zip(times, times[1:]))
        return len(times) / (active / 3600) if active > 0 else None

    # -- runs and models
    def runs(self) -> list[dict]:
        rows = self.db.query("SELECT * FROM runs ORDER BY id")
        return [dict(r, config=json.loads(r["config"])) for r in rows]

    def run_metrics(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for name, step, value in self._all("SELECT name, step, value FROM metrics WHERE run_id = ? "
                                           "ORDER BY name, step, rowid", (run_id,)):
            out.setdefault(name, []).append((step, value))
        return out

    def models(self) -> list[dict]:
        return list(self.db.query("SELECT m.id, m.ref, m.kind, p.ref AS parent, m.run_id, m.created "
                                  "FROM models m LEFT JOIN models p ON p.id = m.parent_id ORDER BY m.id"))


def _split_counts(rows) -> dict[str, int]:
    out = {"train": 0, "eval": 0}
    out.update(rows)
    return out


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None
