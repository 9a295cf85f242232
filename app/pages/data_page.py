"""Data page: browse, search and filter comparisons; view one in full; flip a verdict;
delete with undo; import and export files. Logic lives in `DataController` (importing runs
on the torch worker, with its progress here); this view only lays out widgets and forwards
their signals. Model output is shown as plain text."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.widgets.comparison_table import VERDICT_TEXT
from app.plumbing.context import AppContext
from app.controllers.data_controller import DataController, ImportOutcome, ImportProgress
from app.pages.report_dialog import ReportDialog
from dpo_engine.errors import DPOStudioError
from dpo_engine.store.rows import ComparisonRow
from dpo_engine.store.schema import COMPARISON_SOURCES

EXPORT_FILTERS = {  # file dialog filter -> (format, suffix)
    "TRL conversational JSONL (*.jsonl)": ("trl", ".jsonl"),
    "OpenAI preference JSONL (*.jsonl)": ("openai", ".jsonl"),
    "CSV (*.csv)": ("csv", ".csv"),
    "Parquet (*.parquet)": ("parquet", ".parquet"),
}
IMPORT_FILTER = "Pairs or prompts (*.jsonl *.json *.csv *.parquet *.txt);;All files (*)"
SEARCH_DELAY_MS = 250  # wait for a pause in typing before querying


def _named(widget, name: str, accessible: str):
    widget.setObjectName(name)
    widget.setAccessibleName(accessible)
    return widget


def _prompt_as_text(row: ComparisonRow) -> str:
    if isinstance(row.prompt, str):
        return row.prompt
    if len(row.prompt) == 1:
        return row.prompt[0][1]
    return "\n\n".join(f"[{role}]\n{content}" for role, content in row.prompt)


class DataPage(QWidget):
    def __init__(self, ctx: AppContext, controller: DataController, parent=None):
        super().__init__(parent)
        self.setObjectName("page_data")
        self.ctx = ctx
        self.report_dialog: ReportDialog | None = None
        self.controller = controller
        self._build()
        self._connect()
        self._on_model_reset()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.addLayout(self._build_filters())
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self._build_table())
        split.addWidget(self._build_detail())
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout.addWidget(split, 1)
        layout.addLayout(self._build_actions())

    def _combo(self, name: str, accessible: str, everything: str, items: dict[str, str]) -> QComboBox:
        combo = _named(QComboBox(), name, accessible)
        combo.addItem(everything, None)
        for value, text in items.items():
            combo.addItem(text, value)
        return combo

    def _build_filters(self) -> QHBoxLayout:
        self.search = _named(QLineEdit(), "dataSearch", "Search prompts and answers")
        self.search.setPlaceholderText("Search prompts, answers and notes…")
        self.search.setClearButtonEnabled(True)
        self.verdict_filter = self._combo("verdictFilter", "Filter by verdict", "All verdicts", VERDICT_TEXT)
        self.source_filter = self._combo("sourceFilter", "Filter by source", "All sources",
                                         {s: s.capitalize() for s in COMPARISON_SOURCES})
        self.split_filter = self._combo("splitFilter", "Filter by split", "Train and eval",
                                        {"train": "Train", "eval": "Eval"})
        self.strict_box = _named(QCheckBox("Strict"), "strictImport", "Strict import")
        self.strict_box.setToolTip("Import nothing from a file that has any bad row.")
        self.import_button = _named(QPushButton("Import…"), "importButton", "Import pairs or prompts")
        self.export_button = _named(QPushButton("Export…"), "exportButton", "Export pairs")
        row = QHBoxLayout()
        row.addWidget(self.search, 2)
        for w in (self.verdict_filter, self.source_filter, self.split_filter):
            row.addWidget(w)
        row.addStretch(1)
        for w in (self.strict_box, self.import_button, self.export_button):
            row.addWidget(w)
        return row

    def _build_table(self) -> QTableView:
        self.table = _named(QTableView(), "comparisonTable", "Comparisons")
        self.table.setModel(self.controller.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        header = _named(self.table.horizontalHeader(), "comparisonTableHeader", "Comparison columns")
        for column, mode in enumerate([QHeaderView.ResizeMode.ResizeToContents] * 4 +
                                      [QHeaderView.ResizeMode.Stretch] * 3 + [QHeaderView.ResizeMode.ResizeToContents]):
            header.setSectionResizeMode(column, mode)
        return self.table

    def _text_view(self, name: str, accessible: str) -> QPlainTextEdit:
        view = _named(QPlainTextEdit(), name, accessible)
        view.setReadOnly(True)  # plain text only: model output is never rendered as HTML
        return view

    def _build_detail(self) -> QWidget:
        self.prompt_view = self._text_view("detailPrompt", "Prompt in full")
        self.left_view = self._text_view("detailLeft", "Left answer in full")
        self.right_view = self._text_view("detailRight", "Right answer in full")
        self.detail_titles = []
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        for title, view in (("Prompt", self.prompt_view), ("Left", self.left_view), ("Right", self.right_view)):
            column = QVBoxLayout()
            label = QLabel(title)
            label.setTextFormat(Qt.TextFormat.PlainText)
            self.detail_titles.append(label)
            column.addWidget(label)
            column.addWidget(view)
            row.addLayout(column, 1)
        return box

    def _build_actions(self) -> QHBoxLayout:
        self.flip_button = _named(QPushButton("Flip verdict  [F]"), "flipButton", "Flip verdict")
        self.delete_button = _named(QPushButton("Delete  [Del]"), "deleteButton", "Delete comparison")
        self.undo_button = _named(QPushButton("Undo  [Ctrl+Z]"), "dataUndoButton", "Undo last change")
        self.summary = QLabel()
        self.summary.setObjectName("dataSummary")
        self.summary.setTextFormat(Qt.TextFormat.PlainText)  # holds file paths and error text
        self.summary.setWordWrap(True)
        self.import_progress = _named(QProgressBar(), "importProgress", "Import progress")
        self.import_progress.setMaximumWidth(160)
        self.import_progress.setVisible(False)
        row = QHBoxLayout()
        for w in (self.flip_button, self.delete_button, self.undo_button):
            row.addWidget(w)
        row.addWidget(self.summary, 1)
        row.addWidget(self.import_progress)
        return row

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self._on_filters_changed)
        self.search.textChanged.connect(self._search_timer.start)
        for combo in (self.verdict_filter, self.source_filter, self.split_filter):
            combo.currentIndexChanged.connect(self._on_filters_changed)
        self.table.selectionModel().selectionChanged.connect(self._on_selection_changed)
        self.controller.model.modelReset.connect(self._on_model_reset)
        self.flip_button.clicked.connect(self._on_flip_clicked)
        self.delete_button.clicked.connect(self._on_delete_clicked)
        self.undo_button.clicked.connect(self._on_undo_clicked)
        self.import_button.clicked.connect(self._on_import_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        for keys, slot in (("F", self._on_flip_clicked), (QKeySequence.StandardKey.Delete, self._on_delete_clicked),
                           (QKeySequence.StandardKey.Undo, self._on_undo_clicked)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)  # not while on the Label page
            shortcut.activated.connect(slot)
        self.controller.importProgress.connect(self._on_controller_importProgress)
        self.controller.importFinished.connect(self._on_controller_importFinished)
        self.controller.importFailed.connect(self._on_controller_importFailed)
        self.controller.exportFinished.connect(self.summary.setText)
        self.controller.exportFailed.connect(self.summary.setText)
        self.ctx.comparisonsChanged.connect(self._on_ctx_comparisonsChanged)
        self.ctx.projectChanged.connect(self._on_ctx_projectChanged)

    # ------------------------------------------------------------------ helpers
    def selected_rows(self) -> list[ComparisonRow]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.controller.model.row_at(r) for r in rows]

    def selected_ids(self) -> list[int]:
        return [row.id for row in self.selected_rows()]

    def select_id(self, cid: int) -> None:
        row = self.controller.model.row_of(cid)
        if row >= 0:
            self.table.selectRow(row)

    def _show_row(self, row: ComparisonRow | None) -> None:
        self.prompt_view.setPlainText(_prompt_as_text(row) if row else "")
        self.left_view.setPlainText(row.left if row else "")
        self.right_view.setPlainText(row.right if row else "")
        marks = {"left": ("chosen", "rejected"), "right": ("rejected", "chosen")}.get(row.verdict if row else "")
        for label, side, mark in zip(self.detail_titles[1:], ("Left", "Right"), marks or ("", "")):
            label.setText(f"{side} — {mark}" if mark else side)
        extra = f" · note: {row.note}" if row and row.note else ""
        self.detail_titles[0].setText(f"Prompt #{row.prompt_id} ({row.split}){extra}" if row else "Prompt")

    def _with_errors(self, action) -> None:
        try:
            action()
        except DPOStudioError as exc:
            self.summary.setText(str(exc))

    # ------------------------------------------------------------------ slots
    def _on_filters_changed(self, *_) -> None:
        self.controller.set_filter(self.search.text(), self.verdict_filter.currentData(),
                                   self.source_filter.currentData(), self.split_filter.currentData())

    def _on_model_reset(self) -> None:
        self.summary.setText(self.controller.summary())
        self._on_selection_changed()

    def _on_selection_changed(self, *_) -> None:
        rows = self.selected_rows()
        ids = [r.id for r in rows]
        self._show_row(rows[0] if len(rows) == 1 else None)
        actions = self.controller.actions(len(ids))
        self.flip_button.setEnabled(actions.flip)
        self.delete_button.setEnabled(actions.delete)
        self.undo_button.setEnabled(actions.undo)
        self.undo_button.setToolTip(actions.undo_tip)
        self.import_button.setEnabled(actions.import_)
        self.export_button.setEnabled(actions.export)

    def _on_flip_clicked(self) -> None:
        ids = self.selected_ids()
        if ids and self.controller.writable:
            self._with_errors(lambda: self.controller.flip(ids))
            self.select_id(ids[0])

    def _on_delete_clicked(self) -> None:
        ids = self.selected_ids()
        if ids and self.controller.writable:
            self._with_errors(lambda: self.controller.delete(ids))

    def _on_undo_clicked(self) -> None:
        if self.controller.writable and self.controller.undo_stack:
            step = self.controller.undo_stack[-1]
            self._with_errors(self.controller.undo)
            self.select_id(step.first_id)

    def _on_import_clicked(self) -> None:
        paths = self._ask_import_paths()
        if paths and self.controller.start_import(paths, strict=self.strict_box.isChecked()):
            self.import_progress.setRange(0, 0)  # busy until the first file's progress
            self.import_progress.setVisible(True)
            self._on_selection_changed()  # no second import meanwhile

    def _on_controller_importProgress(self, progress: ImportProgress) -> None:
        self.import_progress.setRange(0, progress.total)
        self.import_progress.setValue(progress.done)
        self.summary.setText(progress.text)

    def _on_controller_importFinished(self, outcome: ImportOutcome) -> None:
        self.import_progress.setVisible(False)
        self.report_dialog = ReportDialog("Import report", outcome.headline, outcome.text, self)
        self.report_dialog.open()  # window-modal, does not block the event loop
        self._on_model_reset()

    def _on_controller_importFailed(self, message: str) -> None:
        self.import_progress.setVisible(False)
        self._on_model_reset()
        self.summary.setText(message)

    def _on_export_clicked(self) -> None:
        target = self._ask_export_target()
        if target and self.controller.start_export(*target):
            self.summary.setText(f"Exporting to {target[0]}…")

    def _ask_import_paths(self) -> list[Path]:
        names, _ = QFileDialog.getOpenFileNames(self, "Import pairs or prompts", "", IMPORT_FILTER)
        return [Path(n) for n in names]

    def _ask_export_target(self) -> tuple[Path, str] | None:
        name, chosen = QFileDialog.getSaveFileName(self, "Export pairs", "pairs.jsonl", ";;".join(EXPORT_FILTERS))
        if not name:
            return None
        fmt, suffix = EXPORT_FILTERS.get(chosen, ("trl", ".jsonl"))
        path = Path(name)
        return (path if path.suffix else path.with_suffix(suffix)), fmt

    def _on_ctx_comparisonsChanged(self) -> None:
        if not self.controller.notifying:  # our own change: the table is fresh already
            selected = self.selected_ids()
            self.controller.refresh()
            if selected:
                self.select_id(selected[0])

    def _on_ctx_projectChanged(self) -> None:
        self.controller.open(self.ctx.project_path)
