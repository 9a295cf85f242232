"""The model picker: every model the catalog found (dpo_engine.catalog), one row each, with
its fit verdict for the device that trains; broken entries greyed with the reason.

Names, paths, licenses and reasons come from files on disk, so they are untrusted: cells
are plain display text (the delegate never renders HTML), the detail pane is a
QPlainTextEdit, and no row has a tooltip (Qt would guess rich text for one).

    dialog = ModelPickerDialog(catalog, lister=lambda folders: list_models(folders=folders))
    # or, listing elsewhere (the window's worker): ModelPickerDialog(None, lister=start_listing), where
    # start_listing(folders) returns None and later calls dialog.show_progress / dialog.set_catalog
    if dialog.exec():
        entry = dialog.selected()      # a CatalogEntry; entry.path is what --model takes
        dialog.plan                     # how it trains here (a RunPlan: LoRA, its base, checkpointing), or None
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QHeaderView,
                               QLabel, QPlainTextEdit, QPushButton, QTableView, QVBoxLayout)

from dpo_engine.catalog import Catalog, ListingProgress, with_fit
from dpo_engine.catalog.entry import CatalogEntry
from dpo_engine.catalog.fit import TOO_LARGE
from dpo_engine.catalog.sources import inspect_path
from dpo_engine.catalog.entry import format_parameters, format_size

MODEL_COLUMNS = ("Name", "Source", "Family", "Parameters", "Precision", "Size", "Chat", "Fit", "Notes")
ENTRY_ROLE = Qt.ItemDataRole.UserRole  # data(index, ENTRY_ROLE) -> the CatalogEntry


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cells(e: CatalogEntry) -> tuple[str, ...]:
    """The row's texts, in MODEL_COLUMNS order."""
    chat = {True: "yes", False: "no (plain text)", None: "?"}[e.chat_template]
    fit = e.fit.verdict if e.fit else ("unusable" if e.error else "unknown")
    if e.fit and e.fit.plan and e.fit.plan.base == "nf4":
        fit += " (4-bit)"
    if e.fit and e.fit.gradient_checkpointing:
        fit += " (checkpointing)"
    notes = e.error or "; ".join([*([f"gated: {e.gated}"] if e.gated else []), *e.notes])
    return (e.name, e.source, e.family or "?", format_parameters(e.parameters, e.parameters_estimated), e.precision or "?",
            format_size(e.size_bytes), chat, fit, _one_line(notes))


def details(e: CatalogEntry) -> str:
    """Everything known about an entry, as plain text for the detail pane."""
    lines = [e.name, f"Path: {e.path}", f"Source: {e.source}"]
    if e.error:
        lines.append(f"Cannot be used: {e.error}")
    if e.fit:
        f = e.fit
        lines.append(f.explain())
        if f.plan is not None:
            lines.append(f"Trains as: {f.plan.mode} on {f.plan.describe(f.device)}")
        for label, m in (("Full fine-tune", f.full), ("LoRA", f.lora)):
            lines.append(f"{label}: weights {m.weights / 2**30:.2f} GiB, gradients {m.gradients / 2**30:.2f}, "
                         f"AdamW {m.optimizer / 2**30:.2f}, activations {m.activations / 2**30:.2f}, "
                         f"runtime {m.runtime / 2**30:.2f}")
    if e.license:
        lines.append(f"License: {e.license}")
    if e.gated:
        lines.append(f"Gated: {e.gated}")
    lines += [f"Note: {n}" for n in e.notes]
    return "\n".join(lines)


def plan_notice(plan, entry: CatalogEntry | None) -> str:
    """What the picker says about how the selected model will train: only where it needs more
    than a plain full fine-tune (the caller turns that on)."""
    if plan is None:
        too_large = entry and entry.fit and entry.fit.verdict == TOO_LARGE
        return ("Too large to train on this device even with LoRA; it can still answer prompts if it loads."
                if too_large else "")
    ckpt = " with gradient checkpointing" if plan.checkpointing else ""
    pairs = plan.micro_batch
    ckpt += f" in micro-batches of {pairs} pair{'s' if pairs > 1 else ''}" if pairs else ""
    if plan.lora:
        base = " over a 4-bit (NF4) base" if plan.base == "nf4" else ""
        return f"Only LoRA{base}{ckpt} fits this model here: training will use it (turned on for you)."
    if ckpt:
        return (f"A full fine-tune fits only{ckpt} (checkpointing is about 30% slower): it will be turned on "
                "for you.")
    return ""


class ModelTableModel(QAbstractTableModel):
    """Catalog entries as rows; a broken entry is not enabled (greyed) and says why in Notes."""

    def __init__(self, entries: list[CatalogEntry] | None = None, parent=None):
        super().__init__(parent)
        self._entries = list(entries or [])

    def set_entries(self, entries: list[CatalogEntry]) -> None:
        self.beginResetModel()
        self._entries = list(entries)
        self.endResetModel()

    def entries(self) -> list[CatalogEntry]:
        return list(self._entries)

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._entries)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(MODEL_COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return MODEL_COLUMNS[section]
        return None

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        if not self._entries[index.row()].usable:
            return Qt.ItemFlag.NoItemFlags  # greyed and not selectable: the Notes cell says why
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        entry = self._entries[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return cells(entry)[index.column()]
        if role == ENTRY_ROLE:
            return entry
        if role == Qt.ItemDataRole.ForegroundRole and not entry.usable:
            return QBrush(QPalette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text))
        return None


class ModelPickerDialog(QDialog):
    """Pick a model from the catalog, add a folder to look in, or choose a file by hand."""

    modelChosen = Signal(str)  # the entry's path: what load_model / --model takes

    def __init__(self, catalog: Catalog | None, lister: Callable[[list[str]], Catalog | None] | None = None,
                 parent=None):
        super().__init__(parent)
        self.setObjectName("modelPicker")
        self.setWindowTitle("Choose a model")
        self.resize(1000, 520)
        self._catalog = catalog  # None until a listing elsewhere arrives (`set_catalog`)
        self._lister = lister  # folders -> a Catalog, or None when it lists elsewhere and calls set_catalog
        self._wanted: str | None = None  # the path to select once the listing arrives
        self.folders: list[str] = []  # folders added in this dialog (the caller may remember them)
        self.model = ModelTableModel(catalog.entries if catalog else [], self)
        self.table = QTableView()
        self.table.setObjectName("modelTable")
        self.table.setAccessibleName("Models found on this machine")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setObjectName("modelTableHeader")
        header.setAccessibleName("Model columns")
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)  # long store paths: elided, resizable
        self.table.setColumnWidth(0, 340)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.verticalHeader().hide()
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection)
        self.table.doubleClicked.connect(self._on_table_double_clicked)
        self.summary = self._label("modelSummary", "Catalog summary")
        self.lora_notice = self._label("modelLoraNotice", "LoRA notice")
        self.detail = QPlainTextEdit()
        self.detail.setObjectName("modelDetail")
        self.detail.setAccessibleName("Selected model details")
        self.detail.setReadOnly(True)
        self.detail.setMaximumHeight(140)
        self.add_folder = self._button("modelAddFolder", "Add folder…", "Add a folder to look in")
        self.add_folder.clicked.connect(self._on_add_folder_clicked)
        self.add_file = self._button("modelChooseFile", "Choose file or folder…", "Choose a model file by hand")
        self.add_file.clicked.connect(self._on_add_file_clicked)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.setObjectName("modelButtons")
        self.ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setObjectName("modelUse")
        self.ok.setText("Use this model")
        self.ok.setAccessibleName("Use the selected model")
        self.ok.setEnabled(False)
        cancel = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        cancel.setObjectName("modelCancel")
        cancel.setAccessibleName("Cancel")
        self.buttons.accepted.connect(self._on_buttons_accepted)
        self.buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.add_folder)
        row.addWidget(self.add_file)
        row.addStretch(1)
        row.addWidget(self.buttons)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.detail)
        layout.addWidget(self.lora_notice)
        layout.addLayout(row)
        self._show_summary()

    def _label(self, name: str, accessible: str) -> QLabel:
        label = QLabel()
        label.setObjectName(name)
        label.setAccessibleName(accessible)
        label.setTextFormat(Qt.TextFormat.PlainText)
        label.setWordWrap(True)
        return label

    def _button(self, name: str, text: str, accessible: str) -> QPushButton:
        button = QPushButton(text)
        button.setObjectName(name)
        button.setAccessibleName(accessible)
        return button

    # -- state
    def selected(self) -> CatalogEntry | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.data(rows[0], ENTRY_ROLE) if rows else None

    @property
    def plan(self):
        """The selected model's run plan: the mode that fits here (`FitVerdict.plan`), or None."""
        entry = self.selected()
        return entry.fit.plan if entry and entry.fit else None

    @property
    def loading(self) -> bool:
        """True while the first listing has not arrived."""
        return self._catalog is None

    def set_catalog(self, catalog: Catalog) -> None:
        """Show a listing made elsewhere (the worker), keeping the path asked for selected."""
        self._catalog = catalog
        self.model.set_entries(catalog.entries)
        self._show_summary()
        if self._wanted:
            self.select_path(self._wanted)

    def show_progress(self, progress: ListingProgress) -> None:
        self.summary.setText(progress.message)

    def show_failure(self, message: str) -> None:
        self.summary.setText(f"Listing the models failed: {message.splitlines()[0] if message else ''}")

    def select_path(self, path: str) -> bool:
        """Select the row whose entry has `path` (False if none, or it is unusable); while the
        listing is on its way, the row is selected when it arrives."""
        self._wanted = path
        for row, entry in enumerate(self.model.entries()):
            if entry.path == path and entry.usable:
                self.table.selectRow(row)
                return True
        return False

    def add_entry(self, entry: CatalogEntry) -> None:
        """Show a model chosen by hand (first, selected if usable)."""
        entry = with_fit(entry, self._catalog.free_bytes, self._catalog.device)
        self.model.set_entries([entry] + [e for e in self.model.entries() if e.path != entry.path])
        self._show_summary()
        if entry.usable:
            self.table.selectRow(0)
        else:
            self.detail.setPlainText(details(entry))

    def add_folders(self, folders: list[str]) -> None:
        """Look in more folders: the lister lists again with every folder added so far."""
        self.folders += [f for f in folders if f not in self.folders]
        if self._lister is not None:
            catalog = self._lister(list(self.folders))
            if catalog is not None:
                self.set_catalog(catalog)

    def _show_summary(self) -> None:
        self.add_file.setEnabled(self._catalog is not None)  # a hand-picked file is judged against the listing's
        if self._catalog is None:
            self.summary.setText("Looking for models on this machine…")
            return
        entries = self.model.entries()
        broken = sum(not e.usable for e in entries)
        self.summary.setText(f"{len(entries)} models found ({broken} unusable, greyed); fit judged for "
                             f"{self._catalog.device} with {self._catalog.free_bytes / 2**30:.1f} GiB free.")

    # -- slots
    def _on_table_selection(self, *_):
        entry = self.selected()
        self.ok.setEnabled(entry is not None)
        self.detail.setPlainText(details(entry) if entry else "")
        self.lora_notice.setText(plan_notice(self.plan, entry))

    def _on_table_double_clicked(self, index):
        if index.isValid() and self.model.data(index, ENTRY_ROLE).usable:
            self._on_buttons_accepted()

    def _on_buttons_accepted(self):
        entry = self.selected()
        if entry is None:
            return
        self.modelChosen.emit(entry.path)
        self.accept()

    def _on_add_folder_clicked(self):
        folder = QFileDialog.getExistingDirectory(self, "Add a folder with models")
        if folder:
            self.add_folders([folder])

    def _on_add_file_clicked(self):
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model file (.gguf, config.json)", "",
                                              "Models (*.gguf config.json);;All files (*)")
        if path:
            chosen = Path(path)
            self.add_entry(inspect_path(chosen.parent if chosen.name == "config.json" else chosen))
