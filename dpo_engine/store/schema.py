"""The project file's schema and its migrations.

The schema version lives in `PRAGMA user_version`; `PRAGMA application_id` marks the file
as a DPO Studio project so that another program's SQLite file is refused, not altered.
Each migration is a function from version N to N+1, run inside the caller's transaction;
version 1 is the first schema ever shipped and stays frozen here so that old projects can
always be brought forward. Migrations and PRAGMAs are plain SQL on the connection: a
migration is frozen history that must run the same in every later version, and sqlite-utils
has no API for PRAGMAs (its `transform()` would copy a table where ALTER adds a column).
"""

from __future__ import annotations

import json
import sqlite3

from dpo_engine.errors import ConfigError
from dpo_engine.pairs import PreferencePair

APPLICATION_ID = 0x44504F53  # "DPOS": identifies our files among all SQLite files
VERDICTS = ("left", "right", "tie", "both_bad", "skip")
COMPARISON_SOURCES = ("label", "import", "compare")
RUN_STATUSES = ("running", "finished", "stopped", "failed")
MODEL_KINDS = ("base", "checkpoint")


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse a value outside one of the tuples above before SQLite's CHECK would."""
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}; got {value!r}.")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# Version 1: the first release. Frozen: never edit, add a migration instead.
SCHEMA_V1 = f"""
CREATE TABLE prompts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,          -- sha256 of the prompt value: dedupe and split
    text TEXT NOT NULL,                -- plain prompt, or the last user message for display
    messages TEXT,                     -- JSON [[role, content], ...], or NULL for a plain prompt
    source TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'eval')),
    created REAL NOT NULL
);
CREATE TABLE responses (
    id INTEGER PRIMARY KEY,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    settings TEXT,                     -- JSON generation settings
    created REAL NOT NULL
);
CREATE INDEX responses_prompt ON responses(prompt_id);
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    left_id INTEGER NOT NULL REFERENCES responses(id),
    right_id INTEGER NOT NULL REFERENCES responses(id),
    verdict TEXT NOT NULL CHECK (verdict IN {_in(VERDICTS)}),
    strength REAL,
    note TEXT,
    source TEXT NOT NULL CHECK (source IN {_in(COMPARISON_SOURCES)}),
    created REAL NOT NULL
);
CREATE INDEX comparisons_prompt ON comparisons(prompt_id);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {_in(RUN_STATUSES)}),
    started REAL NOT NULL,
    ended REAL,
    error TEXT,
    checkpoint TEXT
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX metrics_run ON metrics(run_id, name, step);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN {_in(MODEL_KINDS)}),
    parent_id INTEGER REFERENCES models(id),
    run_id INTEGER REFERENCES runs(id),
    created REAL NOT NULL
);
"""


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Ranking groups, soft delete (undo), and pair hashes for duplicate detection."""
    conn.execute("ALTER TABLE comparisons ADD COLUMN group_id INTEGER")
    conn.execute("ALTER TABLE comparisons ADD COLUMN deleted REAL")
    conn.execute("ALTER TABLE comparisons ADD COLUMN pair_hash TEXT")
    conn.execute("CREATE INDEX comparisons_hash ON comparisons(pair_hash)")
    conn.execute("CREATE INDEX comparisons_group ON comparisons(group_id)")
    rows = conn.execute(
        "SELECT c.id, c.verdict, p.text, p.messages, l.text, r.text FROM comparisons c "
        "JOIN prompts p ON p.id = c.prompt_id JOIN responses l ON l.id = c.left_id "
        "JOIN responses r ON r.id = c.right_id WHERE c.verdict IN ('left', 'right')"
    ).fetchall()
    updates = [(pair_hash(verdict, text, messages, left, right), cid)
               for cid, verdict, text, messages, left, right in rows]
    conn.executemany("UPDATE comparisons SET pair_hash = ? WHERE id = ?", updates)


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    """Whether an answer ended by itself becomes a column (it hid in the settings JSON as
    "finished"): 1 ended, 0 cut off at the token cap (trained without an end-of-turn token),
    NULL unknown (imported, older), counted as ended."""
    conn.execute("ALTER TABLE responses ADD COLUMN finished INTEGER CHECK (finished IN (0, 1))")
    conn.execute("""
        UPDATE responses SET
            finished = CASE json_type(settings, '$.finished') WHEN 'true' THEN 1 WHEN 'false' THEN 0 END,
            settings = CASE WHEN json_type(settings) = 'object' THEN json_remove(settings, '$.finished')
                            ELSE settings END
        WHERE settings IS NOT NULL AND json_valid(settings)""")


MIGRATIONS = [_v1_to_v2, _v2_to_v3]  # MIGRATIONS[i] takes version i+1 to i+2
CURRENT_VERSION = len(MIGRATIONS) + 1


def prompt_value(text: str, messages: str | None) -> str | tuple[tuple[str, str], ...]:
    """A stored prompt as PreferencePair.prompt: plain text or ((role, content), ...)."""
    if messages is None:
        return text
    return tuple((role, content) for role, content in json.loads(messages))


def pair_hash(verdict: str, text: str, messages: str | None, left: str, right: str) -> str | None:
    """The content hash of the pair a comparison yields, or None when it yields none:
    tie/both_bad/skip, or two identical texts (nothing to prefer, nothing to learn)."""
    if verdict not in ("left", "right") or left == right:
        return None
    chosen, rejected = (left, right) if verdict == "left" else (right, left)
    return PreferencePair(prompt_value(text, messages), chosen, rejected).content_hash()


def create_v1(conn: sqlite3.Connection) -> None:
    """Lay down the version-1 schema in an empty database (used by tests of migration)."""
    for statement in SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to CURRENT_VERSION (the caller holds a write transaction).

    Returns:
        The version the file had before.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        create_v1(conn)
        start = 1
    else:
        start = version
    for step in MIGRATIONS[start - 1:]:
        step(conn)
    conn.execute(f"PRAGMA user_version = {CURRENT_VERSION}")
    return version
