"""The Data page's logic, testable without a screen: the page's own store connection, the
filter, flip/delete with an undo stack, import and export. Every change is one store
transaction, then `on_changed()` tells the rest of the app.

Importing files runs on the torch worker (`start_import`), with its own connection to the
project file and a progress event per file, so a large file never freezes the window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PySide6.QtCore import QObject, Signal

from app.widgets.comparison_table import ComparisonTableModel
from dpo_engine.errors import DPOStudioError, ProjectLockedError
from dpo_engine.store.formats import ImportReport, export_pairs, import_file
from dpo_engine.store.opening import open_project
from dpo_engine.store.queries import ComparisonFilter

FLIPPED = {"left": "right", "right": "left"}


@dataclass(frozen=True)
class UndoStep:
    description: str  # shown on the undo button's tooltip
    kind: str  # "delete" (restore the ids) or "verdict" (set the old verdicts back)
    items: tuple  # ids for delete; (id, old verdict) pairs for verdict

    @property
    def first_id(self) -> int:
        """The comparison to select once this step is undone."""
        return self.items[0] if self.kind == "delete" else self.items[0][0]


@dataclass(frozen=True)
class DataActions:
    """What the selection and the project allow."""

    flip: bool
    delete: bool
    undo: bool
    undo_tip: str  # what Undo would revert
    import_: bool
    export: bool


@dataclass(frozen=True)
class ImportProgress:
    """Importing file `done + 1` of `total` (on the worker)."""

    done: int
    total: int
    path: str

    @property
    def text(self) -> str:
        return f"Importing {Path(self.path).name} ({self.done + 1} of {self.total})…"


@dataclass(frozen=True)
class ImportOutcome:
    """An import, for the person: a headline and the row-level report."""

    reports: tuple[ImportReport, ...]
    headline: str
    text: str  # one line per rejected row (`report_text`)


def import_files(project, paths: list[Path], strict: bool = False) -> Iterator[ImportProgress]:
    """Import each file into `project` (one transaction each), yielding before each; returns the
    reports. A whole-file failure (unreadable, unknown format) becomes a report line."""
    reports = []
    for done, path in enumerate(paths):
        yield ImportProgress(done, len(paths), str(path))
        try:
            reports.append(import_file(project, path, strict=strict))
        except DPOStudioError as exc:
            reports.append(ImportReport(str(path), refused=True, failure=str(exc)))
    return reports


def import_outcome(reports: list[ImportReport], n_files: int) -> ImportOutcome:
    added = sum(r.added for r in reports)
    rejected = sum(len(r.errors) for r in reports)
    headline = f"Imported {added} new items from {n_files} file(s); {rejected} rows rejected."
    return ImportOutcome(tuple(reports), headline, report_text(reports))


class DataController(QObject):
    """Signals:
        importProgress(ImportProgress): the worker started on the next file.
        importFinished(ImportOutcome): the import ended (the table is fresh already).
        importFailed(str): it could not run (the project could not be opened on the worker).
        exportFinished(str): the export's line for the person ("Exported N pairs to ...").
        exportFailed(str): why it could not be written.
    """

    importProgress = Signal(object)
    importFinished = Signal(object)
    importFailed = Signal(str)
    exportFinished = Signal(str)
    exportFailed = Signal(str)

    def __init__(self, project_path: Path, on_changed: Callable[[], None] = lambda: None,
                 submit: Callable[[str, Callable[[], Iterator[Any]]], Any] | None = None):
        super().__init__()
        self.on_changed = on_changed
        self.submit = submit  # queues a job on the torch worker (AppContext.submit); None: import in place
        self.notifying = False  # inside on_changed: the app's listeners hear of our own change
        self.import_job = None
        self.export_job = None
        self.path: Path | None = None
        self.project = None
        self.notice = ""  # why the project is read-only or missing, for the page to show
        self.model = ComparisonTableModel()
        self.undo_stack: list[UndoStep] = []
        self.open(project_path)

    # -- project
    def open(self, path: Path) -> None:
        """(Re)open the page's own connection; falls back to read-only if another app holds it."""
        self.close()
        self.path = Path(path)
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

    def actions(self, n_selected: int) -> DataActions:
        writable = self.writable
        last = self.undo_stack[-1] if self.undo_stack else None
        return DataActions(writable and n_selected > 0, writable and n_selected > 0, writable and last is not None,
                           f"Undo {last.description}" if last else "Nothing to undo",
                           writable and self.import_job is None, self.project is not None)

    def set_filter(self, text: str = "", verdict: str | None = None, source: str | None = None,
                   split: str | None = None) -> None:
        self.model.set_filter(ComparisonFilter(text.strip(), verdict or None, source or None, split or None))

    def summary(self) -> str:
        """One line under the table: what is shown and what it adds up to."""
        if self.project is None:
            return self.notice
        c = self.project.queries.counts()
        text = (f"Showing {self.model.total} of {c.comparisons} comparisons · "
                f"{c.train_pairs + c.eval_pairs} usable pairs (train {c.train_pairs}, "
                f"eval {c.eval_pairs}) · {c.prompts} prompts")
        return f"{text} · {self.notice}" if self.notice else text

    # -- edits
    def flip(self, cids: list[int]) -> int:
        """Swap left/right verdicts (others are left alone); returns how many flipped."""
        old = [(cid, row.verdict) for cid in cids
               if (row := self.project.queries.comparison(cid)) is not None and row.verdict in FLIPPED]
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
        self.notifying = True
        try:
            self.on_changed()
        finally:
            self.notifying = False

    # -- files
    def import_files(self, paths: list[Path], strict: bool = False) -> list[ImportReport]:
        """Import each file here, on this thread (one transaction each); whole-file failures
        become a report line."""
        gen, reports = import_files(self.project, paths, strict), None
        while reports is None:
            try:
                next(gen)
            except StopIteration as stop:
                reports = stop.value
        if any(r.added for r in reports):
            self._changed()
        return reports

    def start_import(self, paths: list[Path], strict: bool = False) -> bool:
        """Import on the torch worker, through its own connection to the project file:
        `importProgress` per file, then `importFinished` once the table shows the result.
        False when another import runs or the project is read-only."""
        if self.import_job is not None or not self.writable:
            return False
        if self.submit is None:
            self.importFinished.emit(import_outcome(self.import_files(paths, strict), len(paths)))
            return True
        path, paths = self.path, list(paths)

        def factory():
            with open_project(path) as project:  # each thread its own connection
                return (yield from import_files(project, paths, strict))

        self.import_job = self.submit("import-files", factory)
        self.import_job.yielded.connect(self.importProgress.emit)
        self.import_job.returned.connect(lambda reports: self._on_import_returned(reports, len(paths)))
        self.import_job.failed.connect(self._on_import_failed)
        self.import_job.finished.connect(self._on_import_finished)
        return True

    def _on_import_returned(self, reports: list[ImportReport], n_files: int) -> None:
        self.import_job = None  # before the listeners ask what is allowed now
        if any(r.added for r in reports):
            self._changed()
        self.importFinished.emit(import_outcome(reports, n_files))

    def _on_import_failed(self, message: str) -> None:
        self.import_job = None
        self.importFailed.emit(f"Import failed: {message.splitlines()[0]}")

    def _on_import_finished(self) -> None:
        self.import_job = None  # also when cancelled (the window closing)

    def export(self, path: Path, fmt: str) -> int:
        """Export here, on this thread: the number of pairs written."""
        return export_pairs(self.project, path, fmt)

    def start_export(self, target: Path, fmt: str) -> bool:
        """Export on the torch worker, through its own connection to the project file (a big
        project's export does not freeze the window): `exportFinished` with the line for the
        person, or `exportFailed`. False while another export runs or there is no project."""
        if self.export_job is not None or self.project is None:
            return False
        target = Path(target)
        if self.submit is None:
            try:
                self.exportFinished.emit(_exported(self.export(target, fmt), target, fmt))
            except DPOStudioError as exc:
                self.exportFailed.emit(f"Export failed: {exc}")
            return True
        path = self.path

        def factory():
            yield str(target)  # jobs are generators: the worker runs them step by step
            with open_project(path, read_only=True) as project:  # each thread its own connection
                return export_pairs(project, target, fmt)

        self.export_job = self.submit("export-pairs", factory)
        self.export_job.returned.connect(lambda n: self.exportFinished.emit(_exported(n, target, fmt)))
        self.export_job.failed.connect(lambda message: self.exportFailed.emit(
            f"Export failed: {message.splitlines()[0]}"))
        self.export_job.finished.connect(self._on_export_finished)
        return True

    def _on_export_finished(self) -> None:
        self.export_job = None  # also when cancelled (the window closing)


def _exported(n: int, target: Path, fmt: str) -> str:
    return f"Exported {n} pairs to {target} ({fmt})."


def report_text(reports: list[ImportReport]) -> str:
    """The row-level import report as plain text, one line per rejected row."""
    return "\n".join(line for r in reports for line in r.lines())
