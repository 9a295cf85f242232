"""What every page shares: the project file, the active model, the device, and the single
torch worker. Pages talk to each other only through this object's signals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from PySide6.QtCore import QObject, Signal

from app.workers import Job, TorchRunner
from dpo_engine.devices import DeviceChoice
from dpo_engine.store import open_project
from dpo_engine.models import (
    DEFAULT_MODEL_REF,
    LoadedModel,
    default_model_dir,
    is_converted,
    load_model,
    prepare_default_model_events,
)


class ModelCache:
    """Loaded models by reference. Touched only from the torch worker thread."""

    def __init__(self, device: DeviceChoice, keep: int = 2):
        self.device = device
        self.keep = keep  # base + one checkpoint fit even a small machine; more are reloaded (~1 s)
        self._models: dict[str, LoadedModel] = {}

    def get(self, ref: str, on_progress=None) -> LoadedModel:
        if ref not in self._models:
            while len(self._models) >= self.keep:
                self._models.pop(next(iter(self._models)))
            self._models[ref] = load_model(ref, self.device, on_progress=on_progress)
        return self._models[ref]

    def drop(self, ref: str) -> None:
        self._models.pop(ref, None)


class AppContext(QObject):
    """Shared state of one window.

    Signals:
        modelStateChanged(state, detail): state is "loading" | "ready" | "error".
        activeModelChanged(ref): the model that labeling samples from changed.
        comparisonsChanged(): verdicts were added, changed or removed.
        projectChanged(): another project file was opened.
    """

    modelStateChanged = Signal(str, str)
    activeModelChanged = Signal(str)
    comparisonsChanged = Signal()
    projectChanged = Signal()
    navigateRequested = Signal(str)  # a page asks the window to show another page by name

    def __init__(self, project_path: Path, model_ref: str, device: DeviceChoice, parent=None):
        super().__init__(parent)
        self.project_path = Path(project_path)
        self.project = open_project(self.project_path)  # the GUI thread's own connection
        self.model_ref = model_ref
        self.base_model_ref = model_ref  # the reference for training unless the user picks another
        self.device = device
        self.runner = TorchRunner(self)
        self.models = ModelCache(device)
        self.model_state = ("loading", "")
        self.loaded_name = ""

    # ---------------------------------------------------------------- jobs
    def submit(self, name: str, factory: Callable[[], Iterator[Any]], background: bool = False) -> Job:
        return self.runner.submit(name, factory, background)

    def submit_with_model(self, name: str, ref: str | None, fn: Callable[[LoadedModel], Iterator[Any]]) -> Job:
        """Queue `fn(loaded_model)` on the torch worker, loading `ref` first if needed."""
        ref = ref or self.model_ref

        def factory():
            loaded = self.models.get(ref)
            return (yield from fn(loaded))

        return self.submit(name, factory)

    # ---------------------------------------------------------------- model
    def set_model_state(self, state: str, detail: str = "") -> None:
        self.model_state = (state, detail)
        self.modelStateChanged.emit(state, detail)

    def load_active_model(self) -> Job:
        """Load (and on first use prepare) the active model in the background."""
        ref = self.model_ref
        self.set_model_state("loading", f"Loading {ref}…")

        def factory():
            if ref == DEFAULT_MODEL_REF and not is_converted(default_model_dir()):
                yield from prepare_default_model_events()  # first run: live progress
            return self.models.get(ref).name

        job = self.submit("load-model", factory)
        job.returned.connect(self._on_model_loaded)
        job.failed.connect(lambda msg: self.set_model_state("error", msg))
        return job

    def _on_model_loaded(self, name: str) -> None:
        self.loaded_name = name
        self.set_model_state("ready", name)

    def set_active_model(self, ref: str) -> None:
        if ref != self.model_ref:
            self.model_ref = ref
            self.activeModelChanged.emit(ref)
            self.load_active_model()

    def shutdown(self) -> None:
        self.runner.shutdown()
        if self.project is not None:
            self.project.close()
            self.project = None
