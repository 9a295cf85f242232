"""An open project: its connection, its transactions, and what it writes.

Each thread opens its own `Project` with `store.opening.open_project` (SQLite connections are not
shared across threads); each user action is one transaction (`Project.transaction`), so its
writes all land or none does. `Project` writes the labeling data (prompts, answers, verdicts);
`project.runs` writes the training runs with their metrics and models (`store.run_records`);
`project.queries` reads both (`store.queries`, typed rows from `store.rows`). The schema and its
migrations are in `store.schema`. SQL goes through sqlite-utils' table API; the statements left as
SQL are aggregates, a three-table lookup, one many-row UPDATE and transaction control, which that
API does not express (each says so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from typing import Iterable

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from dpo_engine.errors import ConfigError, StoreError, storage_problem
from dpo_engine.pairs import PreferencePair, conversation
from dpo_engine.store.lock import ProcessLock
from dpo_engine.store.queries import Queries
from dpo_engine.store.rows import PromptValue
from dpo_engine.store.run_records import RunRecords
from dpo_engine.store.schema import COMPARISON_SOURCES, VERDICTS, check_choice, pair_hash

EVAL_PERCENT = 10  # share of prompts held out for eval; by prompt hash, so it never moves


# ----------------------------------------------------------------------------- helpers
def prompt_key(value: PromptValue) -> str:
    """sha256 identity of a prompt (plain text and messages never collide)."""
    blob = json.dumps(value if isinstance(value, str) else [list(m) for m in value], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def split_of(key: str) -> str:
    return "eval" if int(key[:8], 16) % 100 < EVAL_PERCENT else "train"


def normalize_prompt(prompt: str | list[dict]) -> PromptValue:
    """A labeling prompt as messages: the app always samples through the chat template,
    so a plain string becomes one user message (validated like any imported prompt)."""
    return conversation(prompt, "-", "+").prompt  # the answers are placeholders


def _prompt_row(value: PromptValue, source: str, now: float) -> dict:
    key = prompt_key(value)
    text = value if isinstance(value, str) else PreferencePair(value, "", "").prompt_text
    messages = None if isinstance(value, str) else json.dumps([list(m) for m in value], ensure_ascii=False)
    return {"key": key, "text": text, "messages": messages, "source": source, "split": split_of(key),
            "created": now}


def _chunks(items: list, size: int = 500) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ----------------------------------------------------------------------------- project
class Project:
    """One open project (one connection: use it from the thread that opened it; `open_project`
    makes it): writes the labeling data; `runs` writes the training runs, `queries` reads both."""

    def __init__(self, conn: sqlite3.Connection, path: str, lock: ProcessLock | None, read_only: bool):
        self.db = Database(conn)
        self.path = path
        self.read_only = read_only
        self._lock = lock
        self.runs = RunRecords(self.db, self._tx)
        self.queries = Queries(self.db)

    # -- lifecycle
    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self):
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting up to the
        connection's busy timeout for another thread), then `db.atomic()` inside; committed on exit."""
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only; close the other DPO Studio to change it.")
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield
            return
        try:
            conn.execute("BEGIN IMMEDIATE")  # transaction control: sqlite-utils' atomic() only issues BEGIN
            try:
                with self.db.atomic():
                    yield
            except BaseException:
                self.db.rollback()
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # disk full, read-only, I/O error: a message, and nothing half-saved
            self.db.rollback()
            why = storage_problem(exc, self.path) or f"SQLite could not write {self.path} ({exc})"
            raise StoreError(f"Not saved: {why}. Nothing of this change was written; everything saved "
                             "before is intact.") from None

    def transaction(self):
        """One person's action as one transaction: the writes inside all land, or none does
        (e.g. a Compare vote stores two answers and the verdict; a bulk flip many rows)."""
        return self._tx()

    # -- prompts and responses
    def _prompt_ids(self, values: list[PromptValue], source: str) -> list[int]:
        now = time.time()
        rows = [_prompt_row(v, source, now) for v in values]
        self.db["prompts"].insert_all(rows, ignore=True)  # a prompt stored before keeps its row and id
        ids: dict[str, int] = {}
        for chunk in _chunks(list({r["key"] for r in rows})):
            marks = ",".join("?" * len(chunk))
            ids.update((r["key"], r["id"]) for r in self.db["prompts"].rows_where(
                f"key IN ({marks})", chunk, select="key, id"))
        return [ids[r["key"]] for r in rows]

    def add_prompt(self, prompt: str | list[dict], source: str) -> int:
        """Store a labeling prompt (text or chat messages) once; returns its id."""
        return self.add_prompts([prompt], source)[0]

    def add_prompts(self, prompts: list[str | list[dict]], source: str) -> list[int]:
        """Store labeling prompts in one transaction; existing ones keep their id."""
        values = [normalize_prompt(p) for p in prompts]
        with self._tx():
            return self._prompt_ids(values, source)

    def add_response(self, prompt_id: int, text: str, model: str, settings: dict | None = None,
                     finished: bool | None = None) -> int:
        """Store one model answer to a prompt; returns its id. `settings`: how it was sampled;
        `finished`: whether the model ended it (False: cut off at the token cap, trained
        without an end-of-turn token; None: unknown, counted as finished)."""
        if not isinstance(text, str):
            raise ConfigError(f"response text must be a string, not {type(text).__name__}")
        with self._tx():
            return self.db["responses"].insert({
                "prompt_id": prompt_id, "text": text, "model": model,
                "settings": json.dumps(settings) if settings is not None else None, "created": time.time(),
                "finished": None if finished is None else int(bool(finished))}).last_rowid

    # -- comparisons
    def _hash_for(self, prompt_id: int, left_id: int, right_id: int, verdict: str) -> str | None:
        # One row from three tables: the table API reads one table at a time, so this stays SQL.
        row = self.db.execute(
            "SELECT p.text, p.messages, l.text, r.text, l.prompt_id, r.prompt_id FROM prompts p, "
            "responses l, responses r WHERE p.id = ? AND l.id = ? AND r.id = ?",
            (prompt_id, left_id, right_id)).fetchone()
        if row is None:
            raise StoreError(f"prompt {prompt_id} or response {left_id}/{right_id} does not exist.")
        if row[4] != prompt_id or row[5] != prompt_id:
            raise StoreError(f"responses {left_id} and {right_id} must both answer prompt {prompt_id}.")
        return pair_hash(verdict, *row[:4])

    def record_comparison(self, prompt_id: int, left_id: int, right_id: int, verdict: str, *,
                          strength: float | None = None, note: str | None = None,
                          group: int | None = None, source: str = "label") -> int:
        """Store one verdict; durable (committed and synced) when this returns."""
        check_choice("verdict", verdict, VERDICTS)
        check_choice("source", source, COMPARISON_SOURCES)
        with self._tx():
            digest = self._hash_for(prompt_id, left_id, right_id, verdict)
            return self.db["comparisons"].insert({
                "prompt_id": prompt_id, "left_id": left_id, "right_id": right_id, "verdict": verdict,
                "strength": strength, "note": note, "source": source, "created": time.time(),
                "group_id": group, "pair_hash": digest}).last_rowid

    def record_ranking(self, prompt_id: int, ranked_ids: list[int], ties: list[bool] | None = None, *,
                       source: str = "label") -> int:
        """Store a ranking of answers to one prompt (best first; ties[i] places answer i level
        with i-1) as its k(k-1)/2 comparisons, sharing one new group id, in one transaction:
        durable when this returns. Left/right follow response ids (the order the answers were
        shown), so position-bias statistics keep their meaning. Returns the group id."""
        from dpo_engine.ranking import ranking_pairs

        check_choice("source", source, COMPARISON_SOURCES)
        pairs = ranking_pairs(ranked_ids, ties)
        with self._tx():
            now = time.time()
            # An aggregate (no table API for max). Safe under BEGIN IMMEDIATE: no other writer
            # can take the same id meanwhile.
            group = self.db.execute("SELECT coalesce(max(group_id), 0) + 1 FROM comparisons").fetchone()[0]
            rows = []
            for p in pairs:
                left, right = sorted((p.better, p.worse))
                verdict = "tie" if p.tied else ("left" if p.better == left else "right")
                rows.append({"prompt_id": prompt_id, "left_id": left, "right_id": right, "verdict": verdict,
                             "source": source, "created": now, "group_id": group,
                             "pair_hash": self._hash_for(prompt_id, left, right, verdict)})
            self.db["comparisons"].insert_all(rows)
            return group

    def delete_group(self, group: int) -> int:
        """Hide every comparison of a ranking (undo of `record_ranking`); returns how many."""
        return self._set_group_deleted(group, time.time())

    def restore_group(self, group: int) -> int:
        return self._set_group_deleted(group, None)

    def _set_group_deleted(self, group: int, deleted: float | None) -> int:
        with self._tx():
            # Many rows by a column other than the key: the table API updates one row by its key.
            cur = self.db.execute("UPDATE comparisons SET deleted = ? WHERE group_id = ?", (deleted, group))
            if cur.rowcount == 0:
                raise StoreError(f"ranking group {group} does not exist.")
            return cur.rowcount

    def _set_deleted(self, cid: int, deleted: float | None) -> None:
        with self._tx():
            try:
                self.db["comparisons"].update(cid, {"deleted": deleted})
            except NotFoundError:
                raise StoreError(f"comparison {cid} does not exist.") from None

    def delete_comparison(self, cid: int) -> None:
        """Hide a comparison from pairs and stats (kept, so `restore_comparison` can undo)."""
        self._set_deleted(cid, time.time())

    def restore_comparison(self, cid: int) -> None:
        self._set_deleted(cid, None)

    def set_verdict(self, cid: int, verdict: str) -> None:
        """Change a comparison's verdict (e.g. flip left <-> right)."""
        check_choice("verdict", verdict, VERDICTS)
        with self._tx():
            comparisons = self.db["comparisons"]
            try:
                row = comparisons.get(cid)
            except NotFoundError:
                raise StoreError(f"comparison {cid} does not exist.") from None
            digest = self._hash_for(row["prompt_id"], row["left_id"], row["right_id"], verdict)
            comparisons.update(cid, {"verdict": verdict, "pair_hash": digest})

    def import_pairs(self, pairs: list[PreferencePair], source: str = "import",
                     model: str = "import") -> tuple[int, int]:
        """Store pairs as prompt + two responses + a 'left' comparison, in one transaction,
        skipping any whose content hash is already present. Returns (added, duplicates)."""
        check_choice("source", source, COMPARISON_SOURCES)
        with self._tx():
            fresh = self._new_pairs(pairs)
            prompt_ids = self._prompt_ids([p.prompt for _, p in fresh], source)
            self._insert_pairs(fresh, prompt_ids, source, model)
        return len(fresh), len(pairs) - len(fresh)

    def _new_pairs(self, pairs: list[PreferencePair]) -> list[tuple[str, PreferencePair]]:
        hashed = {}
        for p in pairs:
            hashed.setdefault(p.content_hash(), p)  # a repeat within the batch is a duplicate too
        seen: set[str] = set()
        for chunk in _chunks(list(hashed)):
            marks = ",".join("?" * len(chunk))
            seen.update(r["pair_hash"] for r in self.db["comparisons"].rows_where(
                f"deleted IS NULL AND pair_hash IN ({marks})", chunk, select="pair_hash"))
        return [(h, p) for h, p in hashed.items() if h not in seen]

    def _insert_pairs(self, fresh, prompt_ids, source, model) -> None:
        # Ids assigned here: safe because BEGIN IMMEDIATE holds the only write lock. An
        # aggregate (no table API for max).
        now = time.time()
        next_response = self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM responses").fetchone()[0]
        responses, comparisons = [], []
        for i, ((digest, pair), pid) in enumerate(zip(fresh, prompt_ids)):
            left, right = next_response + 2 * i, next_response + 2 * i + 1
            responses += [{"id": left, "prompt_id": pid, "text": pair.chosen, "model": model, "created": now},
                          {"id": right, "prompt_id": pid, "text": pair.rejected, "model": model, "created": now}]
            comparisons.append({"prompt_id": pid, "left_id": left, "right_id": right, "verdict": "left",
                                "source": source, "created": now, "pair_hash": digest})
        self.db["responses"].insert_all(responses)
        self.db["comparisons"].insert_all(comparisons)
