"""Every place the window asks for a model (the model to label with, Compare's "after",
Train's reference) opens the same dialog: the model picker over the catalog of models on
this machine (`dpo_engine.catalog`), with the fit verdict for the device that trains.
The listing (hub cache, Ollama and LM Studio stores, GGUF headers: disk reads) runs on the
context's disk worker with progress (never queued behind sampling on the torch worker); the dialog opens at once and fills when it arrives.
Folders the person adds are remembered (QSettings) for the next time."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QDialog, QWidget

from app.plumbing.context import AppContext
from app.widgets.model_picker import ModelPickerDialog
from dpo_engine.catalog import iter_models
from dpo_engine.run_plan import RunPlan

FOLDERS_KEY = "modelPicker/folders"


@dataclass(frozen=True)
class ModelChoice:
    path: str  # what load_model / --model takes
    plan: RunPlan | None = None  # how it trains here (the picker's fit: LoRA, its base, checkpointing); None: unknown


def remembered_folders() -> list[str]:
    value = QSettings().value(FOLDERS_KEY, [])
    return [value] if isinstance(value, str) else list(value or [])


def choose_model(parent: QWidget, ctx: AppContext, title: str, current: str | None = None) -> ModelChoice | None:
    """Show the picker (modal); the chosen model, or None when the person cancels."""
    folders = remembered_folders()
    device = ctx.device.device
    jobs = []

    def start_listing(extra: list[str]) -> None:
        """List on the disk worker; the dialog shows each source read, then the catalog."""
        for job in jobs:
            job.cancel()
        job = ctx.submit_disk("list-models", lambda: iter_models(project=ctx.project_path, folders=folders + extra,
                                                            device=device))
        job.yielded.connect(dialog.show_progress)
        job.returned.connect(dialog.set_catalog)
        job.failed.connect(dialog.show_failure)
        jobs.append(job)

    dialog = ModelPickerDialog(None, lister=start_listing, parent=parent)
    start_listing([])
    dialog.setWindowTitle(title)
    if current:
        dialog.select_path(current)
    try:
        if dialog.exec() != QDialog.DialogCode.Accepted or dialog.selected() is None:
            return None
        if dialog.folders:
            QSettings().setValue(FOLDERS_KEY, sorted(set(folders) | set(dialog.folders)))
        return ModelChoice(dialog.selected().path, dialog.plan)
    finally:
        for job in jobs:
            job.cancel()
        dialog.deleteLater()
