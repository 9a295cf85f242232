"""The project store: one SQLite file per project, opened with `open_project`.

Durability: WAL with synchronous=FULL, so a transaction that has returned is on disk; each
user action is one transaction. Each thread opens its own `Project` (SQLite connections
are not shared across threads). A second *process* on the same file gets
`ProjectLockedError` naming it (an flock on `<file>.lock`, which the OS drops even on
kill -9), or can open the file read-only. A file that is not a project is refused with
`NotAProjectError` before anything is written to it.

Reads (training pairs, stats, browsing) live in `store.read`; the schema in `store.schema`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from sqlite_utils import Database

from dpo_engine.errors import ConfigError, NotAProjectError, StoreError
from dpo_engine.pairs import PreferencePair, conversation
from dpo_engine.store.lock import ProcessLock, check_single_name
from dpo_engine.store.read import ProjectReads, StoredPair  # noqa: F401  (re-exported)
from dpo_engine.store.schema import (
    APPLICATION_ID,
    CURRENT_VERSION,
    MODEL_KINDS,
    RUN_STATUSES,
    SOURCES,
    VERDICTS,
    migrate,
    pair_hash,
)

EVAL_PERCENT = 10  # share of prompts held out for eval; by prompt hash, so it never moves
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 10.0  # another thread's write transaction is short; wait rather than fail

PromptValue = str | tuple[tuple[str, str], ...]


# ----------------------------------------------------------------------------- opening
def _refuse(path: Path, why: str) -> NotAProjectError:
    return NotAProjectError(
        f"{path} is not a DPO Studio project ({why}). It was left untouched; "
        "choose another file, or a new name to create a project.")


def _check_file(path: Path) -> None:
    """Refuse anything but a missing/empty file or one of our SQLite files, reading only."""
    if path.is_dir():
        raise _refuse(path, "it is a folder")
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(SQLITE_MAGIC):
        raise _refuse(path, "not an SQLite file")
    page_size = int.from_bytes(header[16:18], "big") or 65536  # 1 encodes 65536
    pages = int.from_bytes(header[28:32], "big")
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0  # a checkpoint cut short is completed from the WAL
    if not pending and header[24:28] == header[92:96] and path.stat().st_size < page_size * pages:
        raise _refuse(path, "the file is truncated")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            app_id, version = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version"))
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, f"SQLite cannot read it: {exc}") from None
    if check != "ok":
        raise _refuse(path, f"damaged: {check}")
    if app_id != APPLICATION_ID and tables:
        raise _refuse(path, "an SQLite file of another program")
    if version > CURRENT_VERSION:
        raise StoreError(f"{path} was written by a newer DPO Studio (schema {version}, this one reads "
                         f"up to {CURRENT_VERSION}). Update DPO Studio to open it.")


def _connect(path: str | Path, read_only: bool) -> sqlite3.Connection:
    if path == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None)
    elif read_only:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, timeout=BUSY_TIMEOUT_S)
        conn.execute("PRAGMA query_only = ON")
        return conn
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")  # a returned commit survives power loss, not just kill -9
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _lock(path: Path) -> ProcessLock:
    """The process lock of a project opened for writing, creating the (empty) file first so that
    the lock can key on its inode; a file created here is removed again if the lock is refused."""
    created = not path.exists()
    try:
        if created:
            path.touch()
        check_single_name(path)
        return ProcessLock(path)
    except BaseException as exc:
        if created:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StoreError(f"Cannot open {path} for writing: {exc.strerror}. Choose a folder you can write "
                             "to, or open the project read-only.") from None
        raise


def open_project(path: str | Path, read_only: bool = False) -> "Project":
    """Open (creating and migrating if needed) the project at `path`; ":memory:" for tests.

    Raises:
        NotAProjectError: the file exists but is not a project (it is left untouched).
        ProjectLockedError: another process has the project open (read-only still works).
        StoreError: the file cannot be opened or written.
    """
    if str(path) == ":memory:":
        return Project(_connect(":memory:", False), ":memory:", None, read_only=False)
    path = Path(path)
    if not path.parent.is_dir():
        raise StoreError(f"Cannot create {path}: the folder {path.parent} does not exist.")
    if read_only and not path.exists():
        raise StoreError(f"{path} does not exist; open it read-write once to create it.")
    _check_file(path)
    lock = None if read_only else _lock(path)
    try:
        conn = _connect(path, read_only)
        return Project(conn, str(path), lock, read_only)
    except sqlite3.Error as exc:
        if lock:
            lock.release()
        raise StoreError(f"Cannot open {path}: {exc}") from None
    except BaseException:
        if lock:
            lock.release()
        raise


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


def _prompt_row(value: PromptValue, source: str, now: float) -> tuple:
    key = prompt_key(value)
    text = value if isinstance(value, str) else PreferencePair(value, "", "").prompt_text
    messages = None if isinstance(value, str) else json.dumps([list(m) for m in value], ensure_ascii=False)
    return key, text, messages, source, split_of(key), now


def _chunks(items: list, size: int = 500) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ----------------------------------------------------------------------------- project
class Project(ProjectReads):
    """One open project (one connection: use it from the thread that opened it)."""

    def __init__(self, conn: sqlite3.Connection, path: str, lock: ProcessLock | None, read_only: bool):
        self.db = Database(conn)
        self.path = path
        self.read_only = read_only
        self._lock = lock
        if not read_only:
            with self._tx():
                migrate(conn)
        elif conn.execute("PRAGMA user_version").fetchone()[0] != CURRENT_VERSION:
            raise StoreError(f"{path} has an older schema; open it read-write once to upgrade it.")

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
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting up
        to BUSY_TIMEOUT_S for another thread), then `db.atomic()` inside; committed on exit."""
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only; close the other DPO Studio to change it.")
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            with self.db.atomic():
                yield
        except BaseException:
            self.db.rollback()
            raise
        conn.execute("COMMIT")

    # -- prompts and responses
    def _prompt_ids(self, values: list[PromptValue], source: str) -> list[int]:
        now = time.time()
        rows = [_prompt_row(v, source, now) for v in values]
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO prompts (key, text, messages, source, split, created) "
            "VALUES (?, ?, ?, ?, ?, ?)", rows)
        ids: dict[str, int] = {}
        for chunk in _chunks(list({r[0] for r in rows})):
            marks = ",".join("?" * len(chunk))
            ids.update(self.db.conn.execute(f"SELECT key, id FROM prompts WHERE key IN ({marks})", chunk))
        return [ids[r[0]] for r in rows]

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
        without an end-of-turn token; None: unknown, counted as finished). Kept in the
        settings JSON, which `training_pairs` reads back."""
        if not isinstance(text, str):
            raise ConfigError(f"response text must be a string, not {type(text).__name__}")
        if finished is not None:
            settings = {**(settings or {}), "finished": bool(finished)}
        with self._tx():
            cur = self.db.conn.execute(
                "INSERT INTO responses (prompt_id, text, model, settings, created) VALUES (?, ?, ?, ?, ?)",
                (prompt_id, text, model, json.dumps(settings) if settings is not None else None, time.time()))
            return cur.lastrowid

    # -- comparisons
    def _hash_for(self, prompt_id: int, left_id: int, right_id: int, verdict: str) -> str | None:
        row = self.db.conn.execute(
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
        _check_choice("verdict", verdict, VERDICTS)
        _check_choice("source", source, SOURCES)
        with self._tx():
            digest = self._hash_for(prompt_id, left_id, right_id, verdict)
            cur = self.db.conn.execute(
                "INSERT INTO comparisons (prompt_id, left_id, right_id, verdict, strength, note, source, "
                "created, group_id, pair_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (prompt_id, left_id, right_id, verdict, strength, note, source, time.time(), group, digest))
            return cur.lastrowid

    def record_ranking(self, prompt_id: int, ranked_ids: list[int], ties: list[bool] | None = None, *,
                       source: str = "label") -> int:
        """Store a ranking of answers to one prompt (best first; ties[i] places answer i level
        with i-1) as its k(k-1)/2 comparisons, sharing one new group id, in one transaction:
        durable when this returns. Left/right follow response ids (the order the answers were
        shown), so position-bias statistics keep their meaning. Returns the group id."""
        from dpo_engine.ranking import ranking_pairs

        _check_choice("source", source, SOURCES)
        pairs = ranking_pairs(ranked_ids, ties)
        with self._tx():
            conn, now = self.db.conn, time.time()
            # Safe under BEGIN IMMEDIATE: no other writer can take the same id meanwhile.
            group = conn.execute("SELECT coalesce(max(group_id), 0) + 1 FROM comparisons").fetchone()[0]
            rows = []
            for p in pairs:
                left, right = sorted((p.better, p.worse))
                verdict = "tie" if p.tied else ("left" if p.better == left else "right")
                rows.append((prompt_id, left, right, verdict, source, now, group,
                             self._hash_for(prompt_id, left, right, verdict)))
            conn.executemany("INSERT INTO comparisons (prompt_id, left_id, right_id, verdict, source, created, "
                             "group_id, pair_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return group

    def delete_group(self, group: int) -> int:
        """Hide every comparison of a ranking (undo of `record_ranking`); returns how many."""
        return self._set_group_deleted(group, time.time())

    def restore_group(self, group: int) -> int:
        return self._set_group_deleted(group, None)

    def _set_group_deleted(self, group: int, deleted: float | None) -> int:
        with self._tx():
            cur = self.db.conn.execute("UPDATE comparisons SET deleted = ? WHERE group_id = ?", (deleted, group))
            if cur.rowcount == 0:
                raise StoreError(f"ranking group {group} does not exist.")
            return cur.rowcount

    def _set_deleted(self, cid: int, deleted: float | None) -> None:
        with self._tx():
            cur = self.db.conn.execute("UPDATE comparisons SET deleted = ? WHERE id = ?", (deleted, cid))
            if cur.rowcount != 1:
                raise StoreError(f"comparison {cid} does not exist.")

    def delete_comparison(self, cid: int) -> None:
        """Hide a comparison from pairs and stats (kept, so `restore_comparison` can undo)."""
        self._set_deleted(cid, time.time())

    def restore_comparison(self, cid: int) -> None:
        self._set_deleted(cid, None)

    def set_verdict(self, cid: int, verdict: str) -> None:
        """Change a comparison's verdict (e.g. flip left <-> right)."""
        _check_choice("verdict", verdict, VERDICTS)
        with self._tx():
            row = self.db.conn.execute(
                "SELECT prompt_id, left_id, right_id FROM comparisons WHERE id = ?", (cid,)).fetchone()
            if row is None:
                raise StoreError(f"comparison {cid} does not exist.")
            self.db.conn.execute("UPDATE comparisons SET verdict = ?, pair_hash = ? WHERE id = ?",
                                 (verdict, self._hash_for(*row, verdict), cid))

    def import_pairs(self, pairs: list[PreferencePair], source: str = "import",
                     model: str = "import") -> tuple[int, int]:
        """Store pairs as prompt + two responses + a 'left' comparison, in one transaction,
        skipping any whose content hash is already present. Returns (added, duplicates)."""
        _check_choice("source", source, SOURCES)
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
            seen.update(h for (h,) in self.db.conn.execute(
                f"SELECT pair_hash FROM comparisons WHERE deleted IS NULL AND pair_hash IN ({marks})", chunk))
        return [(h, p) for h, p in hashed.items() if h not in seen]

    def _insert_pairs(self, fresh, prompt_ids, source, model) -> None:
        # Ids assigned here: safe because BEGIN IMMEDIATE holds the only write lock.
        conn, now = self.db.conn, time.time()
        next_response = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM responses").fetchone()[0]
        responses, comparisons = [], []
        for i, ((digest, pair), pid) in enumerate(zip(fresh, prompt_ids)):
            left, right = next_response + 2 * i, next_response + 2 * i + 1
            responses += [(left, pid, pair.chosen, model, now), (right, pid, pair.rejected, model, now)]
            comparisons.append((pid, left, right, "left", source, now, digest))
        conn.executemany("INSERT INTO responses (id, prompt_id, text, model, created) VALUES (?, ?, ?, ?, ?)",
                         responses)
        conn.executemany("INSERT INTO comparisons (prompt_id, left_id, right_id, verdict, source, created, "
                         "pair_hash) VALUES (?, ?, ?, ?, ?, ?, ?)", comparisons)

    # -- runs, metrics, models
    def create_run(self, config: dict) -> int:
        with self._tx():
            return self.db.conn.execute("INSERT INTO runs (config, status, started) VALUES (?, 'running', ?)",
                                        (json.dumps(config, default=str), time.time())).lastrowid

    def annotate_run(self, run_id: int, **fields) -> None:
        """Add what the run learned once it started (e.g. `precision`, the dtype that ran and
        why, where the config said "auto") to its stored config, in one transaction."""
        with self._tx():
            row = self.db.conn.execute("SELECT config FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise ConfigError(f"No run {run_id} in this project.")
            config = {**json.loads(row[0] or "{}"), **fields}
            self.db.conn.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps(config, default=str), run_id))

    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        """Store one step's metrics (names as TRL logs them) in one transaction."""
        rows = [(run_id, step, name, float(v)) for name, v in values.items()]
        with self._tx():
            self.db.conn.executemany("INSERT INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)", rows)

    def finish_run(self, run_id: int, status: str, error: str | None = None,
                   checkpoint: str | None = None) -> None:
        _check_choice("status", status, RUN_STATUSES)
        with self._tx():
            self.db.conn.execute("UPDATE runs SET status = ?, ended = ?, error = ?, checkpoint = ? WHERE id = ?",
                                 (status, time.time(), error, checkpoint, run_id))

    def add_model(self, ref: str, kind: str, parent: str | None = None, run_id: int | None = None) -> int:
        """Register a base model or checkpoint (by reference; `parent` is the parent's ref).
        Registering a known ref again returns its id."""
        _check_choice("kind", kind, MODEL_KINDS)
        with self._tx():
            parent_id = self.add_model(parent, "base") if parent else None
            self.db.conn.execute("INSERT OR IGNORE INTO models (ref, kind, parent_id, run_id, created) "
                                 "VALUES (?, ?, ?, ?, ?)", (ref, kind, parent_id, run_id, time.time()))
            return self.db.conn.execute("SELECT id FROM models WHERE ref = ?", (ref,)).fetchone()[0]


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}; got {value!r}.")
