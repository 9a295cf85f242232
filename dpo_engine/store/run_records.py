"""The training side of the project file: runs, their metrics and config, the models they
produced, and settling runs a crash left `running`. `RunRecords` is held by a `Project` as
`project.runs`; every write is one transaction of that project (`Project.transaction`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, ContextManager

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from dpo_engine.atomic import find_checkpoint, prev_folder, read_manifest
from dpo_engine.errors import ConfigError
from dpo_engine.store.schema import MODEL_KINDS, RUN_STATUSES, check_choice


class RunRecords:
    """The runs, metrics and models tables of one open project (its connection and thread)."""

    def __init__(self, db: Database, transaction: Callable[[], ContextManager]):
        self.db = db
        self._tx = transaction

    # -- writes
    def create(self, config: dict) -> int:
        """A new run row, `running` from now; returns its id."""
        with self._tx():
            return self.db["runs"].insert({"config": json.dumps(config, default=str), "status": "running",
                                           "started": time.time()}).last_rowid

    def set_config(self, run_id: int, config: dict) -> None:
        """Replace a run's stored config (its output folder is named after its id)."""
        with self._tx():
            self._update(run_id, {"config": json.dumps(config, default=str)})

    def annotate(self, run_id: int, **fields) -> None:
        """Add what the run learned once it started (e.g. `precision`, the dtype that ran and
        why, where the config said "auto") to its stored config, in one transaction."""
        with self._tx():
            row = next(self.db["runs"].rows_where("id = ?", [run_id], select="config"), None)
            if row is None:
                raise ConfigError(f"No run {run_id} in this project.")
            config = {**json.loads(row["config"] or "{}"), **fields}
            self._update(run_id, {"config": json.dumps(config, default=str)})

    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        """Store one step's metrics (names as TRL logs them) in one transaction."""
        rows = [{"run_id": run_id, "step": step, "name": name, "value": float(v)} for name, v in values.items()]
        with self._tx():
            self.db["metrics"].insert_all(rows)

    def finish(self, run_id: int, status: str, error: str | None = None, checkpoint: str | None = None) -> None:
        """Set a run's status (`running` again when a stopped run is resumed), end time, error
        and checkpoint."""
        check_choice("status", status, RUN_STATUSES)
        with self._tx():
            self._update(run_id, {"status": status, "ended": time.time(), "error": error, "checkpoint": checkpoint})

    def _update(self, run_id: int, values: dict) -> None:
        try:
            self.db["runs"].update(run_id, values)
        except NotFoundError:
            raise ConfigError(f"No run {run_id} in this project.") from None

    def end_interrupted(self, run_id: int, reason: str, output_dir: str | None, since: float | None = None,
                        status: str = "stopped") -> str | None:
        """Record a run that ended without its summary (a second Ctrl-C or SIGTERM, an error in
        the trainer, a closed generator), keeping what the record knows: `status` with the last
        complete checkpoint the run wrote in `output_dir` (after `since`, default: the run's
        start) or, failing that, the one the row already names; `failed` when there is none.
        Returns the checkpoint linked."""
        row = self._row(run_id)
        settings = _settings(row)
        found = _own_checkpoint(output_dir, row["checkpoint"], row["started"] if since is None else since)
        with self._tx():
            if found is None:
                self.finish(run_id, "failed", f"{reason.rstrip('.')}; no checkpoint was written: start a new run.")
                return None
            if status == "stopped":
                reason = reason.rstrip(".") + f"; resume continues from its last checkpoint (step {_step(found)})."
            self.finish(run_id, status, reason, str(found))
            self.add_model(str(found), "checkpoint", parent=settings.get("model"), run_id=run_id)
        return str(found)

    def reconcile_interrupted(self) -> list[int]:
        """Settle what dead processes left (called by `open_project` when this process takes the
        project's lock, so none of those runs can still be live); returns the ids it changed.

        A run left `running` (a kill -9) becomes `stopped` and resumable with the last complete
        checkpoint on disk (recovering one a kill left in `.prev`), `finished` if that checkpoint
        was the final one, or `failed` when none was written. A run that ended naming no
        checkpoint while one it wrote is complete in its output folder (a second Ctrl-C before
        this version) is linked to it, its status kept.
        """
        changed = []
        for row in list(self.db["runs"].rows_where("status = 'running'", select="id, config, started, checkpoint")):
            self._settle_running(row)
            changed.append(row["id"])
        for row in list(self.db["runs"].rows_where("status != 'running' AND checkpoint IS NULL",
                                                   select="id, config, started, ended")):
            if self._relink(row):
                changed.append(row["id"])
        return changed

    def _settle_running(self, row: dict) -> None:
        run_id, known, settings = row["id"], row["checkpoint"], _settings(row)
        found = _own_checkpoint(settings.get("output_dir"), known, row["started"])
        manifest = read_manifest(found) if found else None
        if manifest is None:
            self.finish(run_id, "failed", "The process ended (crash or kill) before the run wrote a "
                        "checkpoint; start a new run.")
            return
        status = "finished" if manifest.get("status") == "finished" else "stopped"
        note = None if status == "finished" else (
            f"Interrupted (the process ended) after step {manifest.get('step', '?')}; resume continues "
            "from its last checkpoint.")
        with self._tx():
            self.finish(run_id, status, note, str(found))
            self.add_model(str(found), "checkpoint", parent=settings.get("model"), run_id=run_id)

    def _relink(self, row: dict) -> bool:
        settings = _settings(row)
        # Only read: the folder of a run that ended long ago may be another process's output now,
        # and moving its `.prev` back could break that process's save between its two renames.
        found = _own_checkpoint(settings.get("output_dir"), None, row["started"], until=row["ended"], recover=False)
        if found is None:
            return False
        with self._tx():
            self._update(row["id"], {"checkpoint": str(found)})
            self.add_model(str(found), "checkpoint", parent=settings.get("model"), run_id=row["id"])
        return True

    def _row(self, run_id: int) -> dict:
        row = next(self.db["runs"].rows_where("id = ?", [run_id]), None)
        if row is None:
            raise ConfigError(f"No run {run_id} in this project.")
        return row

    def add_model(self, ref: str, kind: str, parent: str | None = None, run_id: int | None = None) -> int:
        """Register a base model or checkpoint (by reference; `parent` is the parent's ref).
        Registering a known ref again returns its id."""
        check_choice("kind", kind, MODEL_KINDS)
        with self._tx():
            parent_id = self.add_model(parent, "base") if parent else None
            models = self.db["models"]
            models.insert({"ref": ref, "kind": kind, "parent_id": parent_id, "run_id": run_id,
                           "created": time.time()}, ignore=True)
            return next(models.rows_where("ref = ?", [ref], select="id"))["id"]

    # -- reads
    def all(self) -> list[dict]:
        """Every run, oldest first, its config decoded."""
        return [dict(r, config=json.loads(r["config"])) for r in self.db["runs"].rows_where(order_by="id")]

    def metrics(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """A run's metrics: name -> [(step, value), ...] in the order they were logged."""
        out: dict[str, list[tuple[int, float]]] = {}
        for row in self.db["metrics"].rows_where("run_id = ?", [run_id], select="name, step, value",
                                                 order_by="name, step, rowid"):
            out.setdefault(row["name"], []).append((row["step"], row["value"]))
        return out

    def models(self) -> list[dict]:
        """Every registered model with its parent's ref, oldest first."""
        # A self-join: sqlite-utils' table API reads one table, so this stays SQL.
        return list(self.db.query("SELECT m.id, m.ref, m.kind, p.ref AS parent, m.run_id, m.created "
                                  "FROM models m LEFT JOIN models p ON p.id = m.parent_id ORDER BY m.id"))


def _settings(row: dict) -> dict:
    try:
        settings = json.loads(row["config"] or "{}")
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def _step(checkpoint: Path) -> str:
    return str((read_manifest(checkpoint) or {}).get("step", "?"))


def _complete(out: Path, recover: bool) -> tuple[Path, dict | None]:
    """(`out`, its manifest) if a complete checkpoint is there or in its `.prev`; `recover`
    moves one from `.prev` back into place (find_checkpoint), else the folders are only read."""
    if recover:
        found = find_checkpoint(out)
        return out, read_manifest(found) if found else None
    return out, read_manifest(out) or read_manifest(prev_folder(out))


def _own_checkpoint(output_dir: str | None, known: str | None, since: float,
                    until: float | None = None, recover: bool = True) -> Path | None:
    """The last complete checkpoint of a run: the one in `output_dir` if the run wrote it
    (its manifest written between `since` and `until`, so an older or later run's checkpoint in
    the same folder is not taken) or it is the `known` one, else `known` if it is still complete.
    `recover`: as in `_complete`."""
    if output_dir:
        found, manifest = _complete(Path(output_dir), recover)
        if manifest is not None:
            written = manifest.get("written")
            own = isinstance(written, (int, float)) and since <= written and (until is None or written <= until)
            if own or (known and Path(known).absolute() == found.absolute()):
                return found.absolute()  # the row names it so: a relative --output depends on the cwd
    found = find_checkpoint(known) if known else None
    return found.absolute() if found else None
