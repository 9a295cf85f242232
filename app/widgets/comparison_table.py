"""A Qt table model over the project's comparisons that fetches rows page by page, so
a project with 100,000 comparisons costs one page of memory until the user scrolls."""

from __future__ import annotations

import time

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

from dpo_engine.store.queries import ComparisonFilter
from dpo_engine.store.rows import ComparisonRow

PAGE_SIZE = 200  # one query per page; small enough to stay instant on the GUI thread
PREVIEW_CHARS = 160  # a cell shows the start of a text; the detail pane shows all of it
COMPARISON_COLUMNS = ("ID", "Verdict", "Source", "Split", "Prompt", "Left answer", "Right answer", "Created")
VERDICT_TEXT = {"left": "Left better", "right": "Right better", "tie": "Tie", "both_bad": "Both bad",
                "skip": "Skipped"}
CHOSEN_TINT = QColor(46, 160, 67, 60)  # translucent green: readable in light and dark themes
REJECTED_TINT = QColor(218, 54, 51, 40)
ROW_ROLE = Qt.ItemDataRole.UserRole  # data(index, ROW_ROLE) -> the ComparisonRow


def _preview(text: str) -> str:
    flat = " ".join(text.split())  # one line per cell: newlines would make rows uneven
    return flat if len(flat) <= PREVIEW_CHARS else flat[:PREVIEW_CHARS - 1] + "…"


class ComparisonTableModel(QAbstractTableModel):
    """Rows of `project.queries.list_comparisons(filter)`, newest first, loaded lazily."""

    def __init__(self, project=None, parent=None):
        super().__init__(parent)
        self._project = project
        self._filter = ComparisonFilter()
        self._rows: list[ComparisonRow] = []
        self._total = 0
        self.refresh()

    # -- data source
    def set_project(self, project) -> None:
        self._project = project
        self.refresh()

    def set_filter(self, f: ComparisonFilter) -> None:
        self._filter = f
        self.refresh()

    @property
    def filter(self) -> ComparisonFilter:
        return self._filter

    @property
    def total(self) -> int:
        """How many comparisons match the filter (loaded or not)."""
        return self._total

    def refresh(self) -> None:
        """Re-read from the store: count, and the first page only."""
        self.beginResetModel()
        if self._project is None:
            self._rows, self._total = [], 0
        else:
            self._total = self._project.queries.count_comparisons(self._filter)
            self._rows = self._project.queries.list_comparisons(self._filter, 0, PAGE_SIZE)
        self.endResetModel()

    def row_at(self, row: int) -> ComparisonRow | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, cid: int) -> int:
        """The loaded row showing comparison `cid`, or -1."""
        return next((i for i, r in enumerate(self._rows) if r.id == cid), -1)

    # -- lazy loading (QAbstractItemView calls these as the user scrolls)
    def canFetchMore(self, parent=QModelIndex()) -> bool:
        return not parent.isValid() and len(self._rows) < self._total

    def fetchMore(self, parent=QModelIndex()) -> None:
        if parent.isValid() or self._project is None:
            return
        page = self._project.queries.list_comparisons(self._filter, len(self._rows), PAGE_SIZE)
        if not page:
            self._total = len(self._rows)  # rows vanished since the count (another writer)
            return
        self.beginInsertRows(QModelIndex(), len(self._rows), len(self._rows) + len(page) - 1)
        self._rows += page
        self.endInsertRows()

    # -- table
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COMPARISON_COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COMPARISON_COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        row = self.row_at(index.row()) if index.isValid() else None
        if row is None:
            return None
        if role == ROW_ROLE:
            return row
        if role == Qt.ItemDataRole.DisplayRole:
            return self._cell(row, index.column())
        if role == Qt.ItemDataRole.BackgroundRole and index.column() in (5, 6) and row.verdict in ("left", "right"):
            chosen = 5 if row.verdict == "left" else 6
            return QBrush(CHOSEN_TINT if index.column() == chosen else REJECTED_TINT)
        return None

    @staticmethod
    def _cell(row: ComparisonRow, column: int) -> str:
        return [
            lambda: str(row.id),
            lambda: VERDICT_TEXT.get(row.verdict, row.verdict),
            lambda: row.source,
            lambda: row.split,
            lambda: _preview(row.prompt_text),
            lambda: _preview(row.left),
            lambda: _preview(row.right),
            lambda: time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created)),
        ][column]()
