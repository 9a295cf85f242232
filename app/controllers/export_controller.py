"""The export dialog's logic, without widgets: which formats a model allows and their sizes,
the export job on the torch worker (`dpo_engine.export.export_events`, a generator) with progress
and a cancel, and `ollama create` for an Ollama export, also on the worker, with a timeout and a
cancel. The dialog (`app.pages.export_dialog`) only presents these signals and forwards clicks.

Cancelling an export stops it at its next yield (every 5% of the tensors while a GGUF is written),
and nothing is left under the chosen name (the engine writes into a temporary sibling and renames
it into place; closing the generator removes the sibling). Cancelling
`ollama create` kills the process.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from PySide6.QtCore import QObject, Signal

from dpo_engine.export.formats import FORMATS

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
QUANT_FORMATS = tuple(f.name for f in FORMATS.values() if f.quantised)  # they take a GGUF weight type
FILE_FORMATS = tuple(f.name for f in FORMATS.values() if not f.as_folder)  # one file; the others a folder
# `ollama create` copies the GGUF into Ollama's store (a few GB for an 8B model: about a minute
# on a laptop SSD); ten minutes means the server hangs, not that the copy is slow.
OLLAMA_TIMEOUT_S = 600.0
OLLAMA_POLL_S = 0.2  # how often the worker checks for a cancel while `ollama create` runs


class JobHost(Protocol):
    """What the controller takes from the window's context (`AppContext` is one)."""

    project_path: Path

    def submit(self, name: str, factory: Callable[[], Iterator[Any]]) -> Any:
        """Queue a generator factory on the torch worker; returns its job handle."""


@dataclass(frozen=True)
class FormatRow:
    """One entry of the format list, as the model's file headers allow it."""

    format: str
    label: str  # the format's name, with the size range where known
    enabled: bool
    reason: str  # why it is not offered ("" when it is)


@dataclass(frozen=True)
class ExportDone:
    """A finished export, for the person."""

    status: str  # one line: where, how large, how long
    details: str  # what was written, the note, the `ollama create` command
    can_create_in_ollama: bool  # it has a command and `ollama` is on PATH


@dataclass(frozen=True)
class OllamaDone:
    """How `ollama create` ended."""

    ok: bool
    text: str  # the outcome and the last lines of its output


def megabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def run_ollama_create(command: str, timeout_s: float = OLLAMA_TIMEOUT_S, poll_s: float = OLLAMA_POLL_S):
    """On the worker: run `command` (`ollama create NAME -f Modelfile`), yielding between polls
    so a cancel (the job closing this generator) kills the process; returns an OllamaDone.
    A run past `timeout_s` is killed and reported."""
    args = shlex.split(command)
    exe = shutil.which(args[0])
    if exe is None:
        return OllamaDone(False, f"`{args[0]}` is not on PATH: install Ollama, then run\n  {command}")
    proc = subprocess.Popen([exe, *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, output = time.monotonic() + timeout_s, ""
    try:
        while True:
            try:
                output, _ = proc.communicate(timeout=poll_s)  # output is kept across timeouts
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    proc.kill()
                    output, _ = proc.communicate()
                    return OllamaDone(False, f"ollama create did not finish in {timeout_s:g} s and was "
                                             f"stopped. Is the Ollama server running (`ollama serve`)?"
                                      + _tail(output))
                yield None  # a safe point: the job may be cancelled here
    except GeneratorExit:  # cancelled: the process must not outlive the request
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode == 0:
        return OllamaDone(True, "Ollama created the model." + _tail(output))
    return OllamaDone(False, f"ollama create failed (exit code {proc.returncode}):" + _tail(output))


def _tail(output: str, lines: int = 5) -> str:
    tail = (output or "").strip().splitlines()[-lines:]
    return "\n" + "\n".join(tail) if tail else ""


class ExportController(QObject):
    """Signals:
        formatsReady(list[FormatRow]): what this model allows, with sizes (read from file headers).
        sizeText(str): the size of the chosen format and precision, or why it is not offered.
        progress(float, str): the export's fraction done and what it is doing.
        exported(ExportDone): it finished.
        cancelled(): it was cancelled; nothing was written.
        failed(str): it failed; the reason for the person.
        runningChanged(bool): an export or `ollama create` started or ended.
        ollamaDone(OllamaDone): `ollama create` ended (or was stopped).
    """

    formatsReady = Signal(list)
    sizeText = Signal(str)
    progress = Signal(float, str)
    exported = Signal(object)
    cancelled = Signal()
    failed = Signal(str)
    runningChanged = Signal(bool)
    ollamaDone = Signal(object)

    def __init__(self, host: JobHost, model_ref: str, ollama_timeout_s: float = OLLAMA_TIMEOUT_S):
        super().__init__()
        self.host, self.model_ref = host, model_ref
        self.ollama_timeout_s = ollama_timeout_s
        self.options: dict[tuple[str, str | None], Any] = {}  # (format, quant) -> ExportOption
        self.job = None  # the export or `ollama create` running now
        self.result = None  # the last ExportResult
        self._ollama_reported = False  # `ollama create` reported how it ended
        self._export_ended = False  # the export returned or failed (else, once finished, it was cancelled)

    # ------------------------------------------------------------------ before the export
    def default_output(self, fmt: str) -> Path:
        """exports/<model folder name>-<format> beside the project file."""
        stem = Path(self.model_ref).name or "model"
        base = Path(self.host.project_path).parent / "exports" / f"{stem}-{fmt}"
        return base.with_suffix(".gguf") if fmt in FILE_FORMATS else base

    def load_options(self) -> None:
        """Which formats this model allows and their sizes, read from file headers on the worker."""
        from dpo_engine.export.options import export_options

        ref = self.model_ref

        def factory():
            yield from ()
            return export_options(ref)

        job = self.host.submit("export-options", factory)
        job.returned.connect(self._on_options_returned)
        job.failed.connect(lambda message: self.sizeText.emit(f"Sizes unknown: {message.splitlines()[0]}"))

    def _on_options_returned(self, options) -> None:
        self.options = {(o.format, o.quant): o for o in options or ()}
        self.formatsReady.emit(self.format_rows())

    def format_rows(self) -> list[FormatRow]:
        rows = []
        for fmt, label in FORMAT_LABELS.items():
            allowed = [o for o in self.options.values() if o.format == fmt and o.reason is None]
            sizes = [o.size_bytes for o in allowed if o.size_bytes is not None]
            if sizes:
                label += f" — {megabytes(min(sizes))}" + ("" if len(sizes) == 1 else f" to {megabytes(max(sizes))}")
            refused = next((o.reason for o in self.options.values() if o.format == fmt and o.reason), None)
            rows.append(FormatRow(fmt, label, bool(allowed), "" if allowed else refused or ""))
        return rows

    def size_of(self, fmt: str, quant: str | None) -> str:
        """The size line for a format and precision ("" while unknown)."""
        option = self.options.get((fmt, quant if fmt in QUANT_FORMATS else None))
        if option is None:
            return ""
        if option.reason:
            return f"Not for this model: {option.reason}"
        return f"About {megabytes(option.size_bytes)}" if option.size_bytes is not None else ""

    # ------------------------------------------------------------------ the export
    def start(self, fmt: str, quant: str | None, out: str) -> bool:
        """Queue the export on the torch worker; False (and `failed`) when it cannot start."""
        from dpo_engine.export import export_events

        if self.job is not None:
            return False
        out = out.strip()
        if not out:
            self.failed.emit("Choose where to export first.")
            return False
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        ref, project = self.model_ref, self.host.project_path  # the card reads the project (read-only)
        self.result, self._export_ended = None, False
        self.job = self.host.submit("export-model", lambda: export_events(ref, fmt, out, quant=quant, project=project))
        self.job.yielded.connect(lambda ev: self.progress.emit(ev.fraction, ev.message))
        self.job.returned.connect(self._on_export_returned)
        self.job.failed.connect(self._on_export_failed)
        self.job.finished.connect(self._on_export_finished)
        self.runningChanged.emit(True)
        return True

    def cancel(self) -> None:
        """Stop the export at its next yield (nothing is left), or kill `ollama create`."""
        if self.job is not None:
            self.job.cancel()

    def _on_export_returned(self, result) -> None:
        self.result, self._export_ended = result, True
        lines = [f"Written: {result.path}", *(f"  {name}" for name in result.files)]
        if result.note:
            lines += ["", result.note]
        if result.command:
            lines += ["", "Create the model in Ollama with:", f"  {result.command}"]
        status = f"Exported to {result.path} ({megabytes(result.size_bytes)}) in {result.seconds:.0f} s."
        can_create = bool(result.command) and shutil.which(shlex.split(result.command)[0]) is not None
        self.exported.emit(ExportDone(status, "\n".join(lines), can_create))

    def _on_export_failed(self, message: str) -> None:
        self._export_ended = True
        self.failed.emit(f"Export failed: {message.splitlines()[0]}")

    def _on_export_finished(self) -> None:
        if not self._export_ended:  # the worker closed it at a yield: the cancel was done
            self.cancelled.emit()
        self._on_job_finished()

    def _on_job_finished(self) -> None:
        self.job = None
        self.runningChanged.emit(False)

    # ------------------------------------------------------------------ ollama create
    def create_in_ollama(self) -> bool:
        """Run the export's `ollama create` command on the worker (timeout and cancel as above)."""
        if self.job is not None or self.result is None or not self.result.command:
            return False
        command, timeout_s = self.result.command, self.ollama_timeout_s
        self.job = self.host.submit("ollama-create", lambda: run_ollama_create(command, timeout_s))
        self._ollama_reported = False
        self.job.returned.connect(self._on_ollama_returned)
        self.job.failed.connect(lambda message: self._on_ollama_returned(OllamaDone(False, message.splitlines()[0])))
        self.job.finished.connect(self._on_ollama_finished)
        self.runningChanged.emit(True)
        return True

    def _on_ollama_returned(self, done: OllamaDone) -> None:
        self._ollama_reported = True
        self.ollamaDone.emit(done)

    def _on_ollama_finished(self) -> None:
        self.job = None
        if not self._ollama_reported:  # cancelled before it ended
            self.ollamaDone.emit(OllamaDone(False, "ollama create was stopped."))
        self.runningChanged.emit(False)
