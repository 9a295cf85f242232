"""The Data page's logic, testable without a screen: the page's own store connection, the
filter, flip/delete with an undo stack, import and export. Every change is one store
transaction, then `on_changed()` tells the rest of the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app.widgets.comparison_table import ComparisonTableModel
from dpo_engine.errors import DPOStudioError, ProjectLockedError
from dpo_engine.store.formats import ImportReport, export_pairs, import_file
from dpo_engine.store.project import open_project
from dpo_engine.store.project import ComparisonFilter

FLIPPED = {"left": "right", "right": "left"}


@dataclass(frozen=True)
class UndoStep:
    description: str  # shown on the undo button's tooltip
    kind: str  # "delete" (restore the ids) or "verdict" (set the old verdicts back)
    items: tuple  # ids for delete; (id, old verdict) pairs for verdict


class DataController:
    def __init__(self, project_path: Path, on_changed: Callable[[], None] = lambda: None):
        self.on_changed = on_changed
        self.project = None
        self.notice = ""  # why the project is read-only or missing, for the page to show
        self.model = ComparisonTableModel()
        self.undo_stack: list[UndoStep] = []
        self.open(project_path)

    # -- project
    def open(self, path: Path) -> None:
        """(Re)open the page's own connection; falls back to read-only if another app holds it."""
        self.close()
        self.notice = ""
        try:
            self.project = open_project(path)
        except ProjectLockedError as exc:
            self.project = open_project(path, read_only=True)
            self.notice = f"Read-only: {exc}"
        except DPOStudioError as exc:
            self.notice = str(exc)
        self.undo_stack.clear()
        self.model.set_project(self.project)

    def close(self) -> None:
        if self.project is not None:
            self.project.close()
            self.project = None

    @property
    def writable(self) -> bool:
        return self.project is not None and not self.project.read_only

    def refresh(self) -> None:
        self.model.refresh()

    def set_filter(self, text: str = "", verdict: str | None = None, source: str | None = None,
                   split: str | None = None) -> None:
        self.model.set_filter(ComparisonFilter(text.strip(), verdict or None, source or None, split or None))

    def summary(self) -> str:
        """One line under the table: what is shown and what it adds up to."""
        if self.project is None:
            return self.notice
        c = self.project.counts()
        text = (f"Showing {self.model.total} of {c['comparisons']} comparisons · "
                f"{c['train_pairs'] + c['eval_pairs']} usable pairs (train {c['train_pairs']}, "
                f"eval {c['eval_pairs']}) · {c['prompts']} prompts")
        return f"{text} · {self.notice}" if self.notice else text

    # -- edits
    def flip(self, cids: list[int]) -> int:
        """Swap left/right verdicts (others are left alone); returns how many flipped."""
        old = [(cid, row.verdict) for cid in cids
               if (row := self.project.comparison(cid)) is not None and row.verdict in FLIPPED]
        with self.project.transaction():  # one action, one transaction: all flipped or none
            for cid, verdict in old:
                self.project.set_verdict(cid, FLIPPED[verdict])
        if old:
            self._done(UndoStep(f"flip {len(old)} verdict(s)", "verdict", tuple(old)))
        return len(old)

    def delete(self, cids: list[int]) -> None:
        with self.project.transaction():
            for cid in cids:
                self.project.delete_comparison(cid)
        if cids:
            self._done(UndoStep(f"delete {len(cids)} comparison(s)", "delete", tuple(cids)))

    def undo(self) -> UndoStep | None:
        """Revert the last flip or delete; returns it (None when there is nothing to undo)."""
        if not self.undo_stack:
            return None
        step = self.undo_stack[-1]
        with self.project.transaction():
            if step.kind == "delete":
                for cid in step.items:
                    self.project.restore_comparison(cid)
            else:
                for cid, verdict in step.items:
                    self.project.set_verdict(cid, verdict)
        self.undo_stack.pop()  # only once it is saved: a failed undo can be retried
        self._changed()
        return step

    def _done(self, step: UndoStep) -> None:
        self.undo_stack.append(step)
        self._changed()

    def _changed(self) -> None:
        self.model.refresh()
        self.on_changed()

    # -- files
    def import_files(self, paths: list[Path], strict: bool = False) -> list[ImportReport]:
        """Import each file (one transaction each); whole-file failures become a report line."""
        reports = []
        for path in paths:
            try:
                reports.append(import_file(self.project, path, strict=strict))
            except DPOStudioError as exc:
                reports.append(ImportReport(str(path), refused=True, failure=str(exc)))
        if any(r.added for r in reports):
            self._changed()
        return reports

    def export(self, path: Path, fmt: str) -> int:
        return export_pairs(self.project, path, fmt)


def report_text(reports: list[ImportReport]) -> str:
    """The row-level import report as plain text, one line per rejected row."""
    return "\n".join(line for r in reports for line in r.lines())
