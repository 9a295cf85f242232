"""Export a trained model for the tools people chat in: a transformers folder, the LoRA
adapter, one GGUF file (llama.cpp, LM Studio) or an Ollama folder with its Modelfile.

The export runs on the torch worker (`dpo_engine.export.export_model`), with its progress
here; Cancel stops it at the next tensor, and nothing is left under the chosen name (the
engine writes into a temporary sibling and renames it into place). The result names what
was written and, for Ollama, the exact `ollama create` command, which the dialog can run
when `ollama` is on PATH."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from app.plumbing.context import AppContext

FORMAT_LABELS = {
    "gguf": "GGUF file (llama.cpp, LM Studio)",
    "ollama": "Ollama (Modelfile + GGUF; over an Ollama base: the adapter alone)",
    "hf": "Transformers folder (safetensors)",
    "peft": "LoRA adapter (PEFT), LoRA runs only",
    "gguf-lora": "LoRA adapter as GGUF (llama.cpp --lora, Ollama ADAPTER), LoRA runs only",
}
# mean |change in log p| per answer token, measured on the default model with its weights off the 4-bit
# grid, as a trained model's are (bench/README.md, "What each GGUF type costs")
QUANT_LABELS = {
    "f16": "f16 (as trained, rounded to half precision: 0.001 per token in log p)",
    "q8_0": "q8_0 (about half the size: 0.03 per token in log p)",
    "q4_1": "q4_1 (about a third: 0.07 per token in log p)",
    "q4_0": "q4_0 (smallest: 0.49 per token in log p, a quarter of next tokens differ)",
}


class ExportCancelled(Exception):
    """Raised from the progress callback when the person cancels (the engine cleans up)."""


class ExportDialog(QDialog):
    def __init__(self, ctx: AppContext, model_ref: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx, self.model_ref = ctx, model_ref
        self.job = None
        self.result = None
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export this model")
        self.resize(640, 360)
        self.source = self._label("exportSource", "Model to export", f"Model: {model_ref}")
        self.format = self._named(QComboBox(), "exportFormat", "Export format")
        for key, label in FORMAT_LABELS.items():
            self.format.addItem(label, key)
        self.quant = self._named(QComboBox(), "exportQuant", "GGUF precision")
        for key, label in QUANT_LABELS.items():
            self.quant.addItem(label, key)
        self.size = self._label("exportSize", "Size of the export", "Working out the sizes…")
        self.options: dict[tuple[str, str | None], object] = {}  # (format, quant) -> ExportOption
        self.path = self._named(QLineEdit(), "exportPath", "Export to")
        self.path.setText(str(self._default_output("gguf")))
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
        self._ask_options()

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

    def _default_output(self, fmt: str) -> Path:
        stem = Path(self.model_ref).name or "model"
        base = self.ctx.project_path.parent / "exports" / f"{stem}-{fmt}"
        return base.with_suffix(".gguf") if fmt in ("gguf", "gguf-lora") else base

    def _ask_options(self) -> None:
        """Which formats this model allows and their sizes, read from file headers on the worker."""
        from dpo_engine.export.options import export_options

        ref = self.model_ref

        def factory():
            yield from ()
            return export_options(ref)

        job = self.ctx.submit("export-options", factory)
        job.returned.connect(self._on_options_returned)
        job.failed.connect(lambda message: self.size.setText(f"Sizes unknown: {message.splitlines()[0]}"))

    def _option(self):
        fmt = self.format.currentData()
        quant = self.quant.currentData() if fmt in ("gguf", "ollama") else None
        return self.options.get((fmt, quant))

    def _show_size(self, *_) -> None:
        option = self._option()
        if option is None:
            return
        if option.reason:
            self.size.setText(f"Not for this model: {option.reason}")
        elif option.size_bytes is not None:
            self.size.setText(f"About {_megabytes(option.size_bytes)}")

    # ------------------------------------------------------------------ slots
    def _on_options_returned(self, options) -> None:
        self.options = {(o.format, o.quant): o for o in options or ()}
        view = self.format.model()
        for row in range(self.format.count()):
            fmt = self.format.itemData(row)
            allowed = [o for o in self.options.values() if o.format == fmt and o.reason is None]
            item = view.item(row)
            item.setEnabled(bool(allowed))
            sizes = [o.size_bytes for o in allowed if o.size_bytes is not None]
            if sizes:
                item.setText(f"{FORMAT_LABELS[fmt]} — {_megabytes(min(sizes))}"
                             + ("" if len(sizes) == 1 else f" to {_megabytes(max(sizes))}"))
            refused = next((o.reason for o in self.options.values() if o.format == fmt and o.reason), None)
            item.setToolTip("" if allowed else refused or "")
        self._show_size()

    def _on_format_changed(self, *_) -> None:
        fmt = self.format.currentData()
        self.quant.setEnabled(fmt in ("gguf", "ollama"))
        self.path.setText(str(self._default_output(fmt)))
        self._show_size()

    def _on_browse_clicked(self) -> None:
        if self.format.currentData() in ("gguf", "gguf-lora"):
            path, _ = QFileDialog.getSaveFileName(self, "Export the GGUF file", self.path.text(), "GGUF (*.gguf)")
        else:
            path = QFileDialog.getExistingDirectory(self, "Folder to export into (a new folder is made in it)")
            path = str(Path(path) / self._default_output(self.format.currentData()).name) if path else ""
        if path:
            self.path.setText(path)

    def start(self) -> None:
        """Queue the export on the torch worker; progress and the result arrive as signals."""
        from dpo_engine.export import export_model

        fmt, quant, out = self.format.currentData(), self.quant.currentData(), self.path.text().strip()
        if not out:
            self.status.setText("Choose where to export first.")
            return
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        ref, project = self.model_ref, self.ctx.project_path  # the card reads the project (read-only)
        holder: dict = {}

        def progress(event) -> None:
            job = holder["job"]
            if job.cancelled:
                raise ExportCancelled()
            job.report(event)

        def factory():
            yield from ()  # a generator: the worker can drop it before it starts
            try:
                return export_model(ref, fmt, out, quant=quant, on_progress=progress, project=project)
            except ExportCancelled:
                return None

        self.job = holder["job"] = self.ctx.submit("export-model", factory)
        self.job.yielded.connect(self._on_job_progress)
        self.job.returned.connect(self._on_job_returned)
        self.job.failed.connect(self._on_job_failed)
        self.job.finished.connect(self._on_job_finished)
        self.export_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.ollama_button.setVisible(False)
        self.output.clear()
        self.progress.setValue(0)
        self.status.setText(f"Exporting as {fmt}…")

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling: nothing will be left at the chosen place…")

    def _on_job_progress(self, event) -> None:
        self.progress.setValue(int(100 * event.fraction))
        self.status.setText(event.message)

    def _on_job_returned(self, result) -> None:
        self.result = result
        if result is None:
            self.status.setText("Export cancelled; nothing was written.")
            self.progress.setValue(0)
            return
        self.progress.setValue(100)
        self.status.setText(f"Exported to {result.path} ({_megabytes(result.size_bytes)}) in {result.seconds:.0f} s.")
        lines = [f"Written: {result.path}", *(f"  {name}" for name in result.files)]
        if result.note:
            lines += ["", result.note]
        if result.command:
            lines += ["", "Create the model in Ollama with:", f"  {result.command}"]
            self.ollama_button.setVisible(shutil.which("ollama") is not None)
        self.output.setPlainText("\n".join(lines))

    def _on_job_failed(self, message: str) -> None:
        self.status.setText(f"Export failed: {message.splitlines()[0]}")

    def _on_job_finished(self) -> None:
        self.job = None
        self.export_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_ollama_clicked(self) -> None:
        if self.result is None or not self.result.command:
            return
        done = subprocess.run(shlex.split(self.result.command), capture_output=True, text=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        self.output.appendPlainText("\n" + ("Ollama created the model." if done.returncode == 0 else
                                            "ollama create failed:") + "\n" + "\n".join(tail))

    def reject(self) -> None:
        self.cancel()  # closing the dialog stops a running export (it cleans up after itself)
        super().reject()


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
