"""Export a trained model for the tools people chat in: a transformers folder, the LoRA
adapter, one GGUF file (llama.cpp, LM Studio) or an Ollama folder with its Modelfile.

A view only: `app.controllers.export_controller.ExportController` runs the export and
`ollama create` on the torch worker; this dialog shows the choices, the progress and the
result, and forwards the person's clicks."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from app.controllers.export_controller import (FILE_FORMATS, FORMAT_LABELS, QUANT_FORMATS, QUANT_LABELS,
                                               ExportController, ExportDone, FormatRow, OllamaDone)


class ExportDialog(QDialog):
    def __init__(self, controller: ExportController, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller
        self.model_ref = controller.model_ref
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export this model")
        self.resize(640, 360)
        self.source = self._label("exportSource", "Model to export", f"Model: {self.model_ref}")
        self.format = self._named(QComboBox(), "exportFormat", "Export format")
        for key, label in FORMAT_LABELS.items():
            self.format.addItem(label, key)
        self.quant = self._named(QComboBox(), "exportQuant", "GGUF precision")
        for key, label in QUANT_LABELS.items():
            self.quant.addItem(label, key)
        self.size = self._label("exportSize", "Size of the export", "Working out the sizes…")
        self.path = self._named(QLineEdit(), "exportPath", "Export to")
        self.path.setText(str(controller.default_output("gguf")))
        browse = self._named(QPushButton("Choose…"), "exportBrowse", "Choose where to export")
        browse.clicked.connect(self._on_browse_clicked)
        where = QHBoxLayout()
        where.addWidget(self.path, 1)
        where.addWidget(browse)
        form = QFormLayout()
        form.addRow("Format", self.format)
        form.addRow("GGUF precision", self.quant)
        form.addRow("Size", self.size)
        form.addRow("Export to", where)
        self.progress = self._named(QProgressBar(), "exportProgress", "Export progress")
        self.progress.setRange(0, 100)
        self.status = self._label("exportStatus", "Export status", "")
        self.output = self._named(QPlainTextEdit(), "exportResult", "What was written")
        self.output.setReadOnly(True)
        self.export_button = self._named(QPushButton("Export"), "exportStart", "Start the export")
        self.export_button.clicked.connect(self.start)
        self.cancel_button = self._named(QPushButton("Cancel export"), "exportCancel", "Cancel the export")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.ollama_button = self._named(QPushButton("Run ollama create"), "exportRunOllama",
                                         "Create the model in Ollama")
        self.ollama_button.clicked.connect(self._on_ollama_clicked)
        self.ollama_button.setVisible(False)
        close = self._named(QPushButton("Close"), "exportClose", "Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.ollama_button)
        buttons.addStretch(1)
        for b in (self.export_button, self.cancel_button, close):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.source)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.output, 1)
        layout.addLayout(buttons)
        self.format.currentIndexChanged.connect(self._on_format_changed)
        self.quant.currentIndexChanged.connect(self._show_size)
        self._connect_controller()
        controller.load_options()

    def _connect_controller(self) -> None:
        c = self.controller
        c.formatsReady.connect(self._on_controller_formatsReady)
        c.sizeText.connect(self.size.setText)
        c.progress.connect(self._on_controller_progress)
        c.exported.connect(self._on_controller_exported)
        c.cancelled.connect(self._on_controller_cancelled)
        c.failed.connect(self.status.setText)
        c.runningChanged.connect(self._on_controller_runningChanged)
        c.ollamaDone.connect(self._on_controller_ollamaDone)

    # ------------------------------------------------------------------ layout helpers
    @staticmethod
    def _named(widget, name: str, accessible: str):
        widget.setObjectName(name)
        widget.setAccessibleName(accessible)
        return widget

    def _label(self, name: str, accessible: str, text: str) -> QLabel:
        label = self._named(QLabel(text), name, accessible)
        label.setTextFormat(Qt.TextFormat.PlainText)  # paths and messages are text, never HTML
        label.setWordWrap(True)
        return label

    def _show_size(self, *_) -> None:
        text = self.controller.size_of(self.format.currentData(), self.quant.currentData())
        if text:
            self.size.setText(text)

    # ------------------------------------------------------------------ forwarded
    def start(self) -> None:
        self.controller.start(self.format.currentData(), self.quant.currentData(), self.path.text())

    def cancel(self) -> None:
        if self.controller.job is not None:
            self.controller.cancel()
            self.status.setText("Cancelling: nothing will be left at the chosen place…")

    def _on_ollama_clicked(self) -> None:
        if self.controller.create_in_ollama():
            self.output.appendPlainText("\nRunning ollama create…")

    def _on_format_changed(self, *_) -> None:
        fmt = self.format.currentData()
        self.quant.setEnabled(fmt in QUANT_FORMATS)
        self.path.setText(str(self.controller.default_output(fmt)))
        self._show_size()

    def _on_browse_clicked(self) -> None:
        fmt = self.format.currentData()
        if fmt in FILE_FORMATS:
            path, _ = QFileDialog.getSaveFileName(self, "Export the GGUF file", self.path.text(), "GGUF (*.gguf)")
        else:
            path = QFileDialog.getExistingDirectory(self, "Folder to export into (a new folder is made in it)")
            path = str(Path(path) / self.controller.default_output(fmt).name) if path else ""
        if path:
            self.path.setText(path)

    # ------------------------------------------------------------------ presented
    def _on_controller_formatsReady(self, rows: list[FormatRow]) -> None:
        view = self.format.model()
        for index, row in enumerate(rows):
            item = view.item(self.format.findData(row.format))
            item.setEnabled(row.enabled)
            item.setText(row.label)
            item.setToolTip(row.reason)
        self._show_size()

    def _on_controller_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(100 * fraction))
        self.status.setText(message)

    def _on_controller_runningChanged(self, running: bool) -> None:
        self.export_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running and self.controller.result is None:  # a new export: clear the last one
            self.ollama_button.setVisible(False)
            self.output.clear()
            self.progress.setValue(0)
            self.status.setText(f"Exporting as {self.format.currentData()}…")

    def _on_controller_exported(self, done: ExportDone) -> None:
        self.progress.setValue(100)
        self.status.setText(done.status)
        self.output.setPlainText(done.details)
        self.ollama_button.setVisible(done.can_create_in_ollama)

    def _on_controller_cancelled(self) -> None:
        self.status.setText("Export cancelled; nothing was written.")
        self.progress.setValue(0)

    def _on_controller_ollamaDone(self, done: OllamaDone) -> None:
        self.output.appendPlainText("\n" + done.text)

    def reject(self) -> None:
        self.cancel()  # closing the dialog stops a running export (it cleans up after itself)
        super().reject()
