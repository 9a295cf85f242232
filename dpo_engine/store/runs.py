"""The training side of the project file: runs, their metrics and config, the models they
produced, and settling runs a crash left `running`. Mixed into `store.Project`; every
method writes through `self._tx()` (one transaction each)."""

from __future__ import annotations

import json
import time

from dpo_engine.atomic import find_checkpoint, read_manifest
from dpo_engine.errors import ConfigError
from dpo_engine.store.schema import MODEL_KINDS, RUN_STATUSES


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}; got {value!r}.")


class ProjectRuns:
    def create_run(self, config: dict) -> int:
        with self._tx():
            return self.db.conn.execute("INSERT INTO runs (config, status, started) VALUES (?, 'running', ?)",
                                        (json.dumps(config, default=str), time.time())).lastrowid

    def set_run_config(self, run_id: int, config: dict) -> None:
        """Replace a run's stored config (its output folder is named after its id)."""
        with self._tx():
            self.db.conn.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps(config, default=str), run_id))

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
        check_choice("status", status, RUN_STATUSES)
        with self._tx():
            self.db.conn.execute("UPDATE runs SET status = ?, ended = ?, error = ?, checkpoint = ? WHERE id = ?",
                                 (status, time.time(), error, checkpoint, run_id))

    def reconcile_interrupted_runs(self) -> list[int]:
        """Close the runs a dead process left `running` (called by `open_project` when this
        process takes the project's lock, so none of them can still be live): each becomes
        `stopped` and resumable with the last complete checkpoint on disk (recovering one a
        kill left in `.prev`), `finished` if that checkpoint was the final one, or `failed`
        when none was written. Returns the ids it changed."""
        changed = []
        for run_id, config, started, known in self.db.conn.execute(
                "SELECT id, config, started, checkpoint FROM runs WHERE status = 'running'").fetchall():
            try:
                settings = json.loads(config)
            except ValueError:
                settings = {}
            folder = known or settings.get("output_dir")
            found = find_checkpoint(folder) if folder else None
            manifest = read_manifest(found) if found else None
            if manifest is not None and not known and manifest.get("written", 0) < started:
                manifest = None  # an older run's checkpoint in the same folder, not this run's
            if manifest is None:
                self.finish_run(run_id, "failed", "The process ended (crash or kill) before the run wrote a "
                                "checkpoint; start a new run.")
            else:
                status = "finished" if manifest.get("status") == "finished" else "stopped"
                note = None if status == "finished" else (
                    f"Interrupted (the process ended) after step {manifest.get('step', '?')}; resume continues "
                    "from its last checkpoint.")
                self.finish_run(run_id, status, note, str(found))
                self.add_model(str(found), "checkpoint", parent=settings.get("model"), run_id=run_id)
            changed.append(run_id)
        return changed

    def add_model(self, ref: str, kind: str, parent: str | None = None, run_id: int | None = None) -> int:
        """Register a base model or checkpoint (by reference; `parent` is the parent's ref).
        Registering a known ref again returns its id."""
        check_choice("kind", kind, MODEL_KINDS)
        with self._tx():
            parent_id = self.add_model(parent, "base") if parent else None
            self.db.conn.execute("INSERT OR IGNORE INTO models (ref, kind, parent_id, run_id, created) "
                                 "VALUES (?, ?, ?, ?, ?)", (ref, kind, parent_id, run_id, time.time()))
            return self.db.conn.execute("SELECT id FROM models WHERE ref = ?", (ref,)).fetchone()[0]
