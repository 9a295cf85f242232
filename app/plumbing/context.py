"""What every page shares: the project file, the active model, the device, and the single
torch worker. Pages talk to each other only through this object's signals."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

from PySide6.QtCore import QObject, Signal

from app.plumbing.workers import Job, TorchRunner
from dpo_engine.catalog.fit import memory_budget
from dpo_engine.adapters import (LoraCheckpoint, adapter_view, lora_checkpoint, model_identity,
                                 parameters_to_hold)
from dpo_engine.devices import DeviceChoice
from dpo_engine.run_plan import plan_run
from dpo_engine.errors import StoreError
from dpo_engine.store.opening import open_project
from dpo_engine.iters import drain
from dpo_engine.models import LoadedModel, PrepareProgress, load_model_events
from dpo_engine.train.model import ADAPTER_DIR


def saves(method):
    """For a controller slot whose work is a write (storing sampled answers, the next prompt;
    its object has `.ctx`): a StoreError (disk full, read-only, ...) becomes
    `ctx.saveFailed(message)` and the slot returns False instead of raising into Qt."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError as exc:
            self.ctx.saveFailed.emit(str(exc))
            return False

    return wrapper


class ModelCache:
    """Loaded models by reference and precision. Touched only from the torch worker thread.

    Sampling uses the window's precision (`get`); scores a person reads (implicit rewards, the
    held-out summary) use `scoring_models`, which is fp32 wherever fp32 weights fit (the run
    plan's scoring precision: `run_plan.plan_run`): two copies of a model then live side by
    side, `keep` of each precision. A LoRA run's checkpoint whose base is on this disk is a view
    over that base (`dpo_engine.adapters`): one copy of the base in each precision serves the base
    and all of its checkpoints, the base computing exactly as loaded alone. `on_state(state,
    ref, detail)` is called (on the worker thread) when a model starts loading, is ready, or
    fails, whichever job asked for it."""

    def __init__(self, device: DeviceChoice, on_state=None, keep: int = 2):
        self.device = device
        self.keep = keep  # base + one checkpoint fit even a small machine; more are reloaded (~1 s)
        self.on_state = on_state or (lambda state, ref, detail: None)
        self._models: dict[tuple[str, str], LoadedModel] = {}  # by (model_identity, dtype)
        self._stamps: dict[tuple[str, str], float] = {}
        self._views: dict[tuple[str, str], LoraCheckpoint] = {}  # the entries that are views over a base
        self.scoring_choice = device  # the precision the last `scoring_models` call used, and why
        self._tokenizers: dict[str, object] = {}  # by model_identity: loaded before the window showed

    def offer_tokenizer(self, ref: str, tokenizer) -> None:
        """A tokenizer of `ref` loaded already (`models.preload_tokenizer`, before the window showed,
        the one call from another thread: no job runs yet), which `ref`'s next load takes instead
        of loading its own."""
        if tokenizer is not None:
            self._tokenizers[model_identity(ref)] = tokenizer

    @staticmethod
    def _stamp(ref: str) -> float:
        """When a model folder's weights (or its adapter's) last changed (0 for non-folders): a
        checkpoint that a resumed run rewrote in place must be loaded again, not served stale."""
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            return 0.0
        files = itertools.chain(folder.glob("*.safetensors"), folder.glob(f"{ADAPTER_DIR}/*.safetensors"))
        return max((f.stat().st_mtime_ns for f in files), default=0)

    def load_events(self, ref: str,
                    device: DeviceChoice | None = None) -> Generator[PrepareProgress, None, LoadedModel]:
        """`ref` in `device`'s precision (the window's by default), from memory where it is loaded;
        yields the progress of preparing it (the default model or a .gguf, on first use)."""
        device = device or self.device
        key = (model_identity(ref), device.dtype)
        if key in self._views:  # its base first: a base rewritten in place is reloaded and drops its views
            yield from self.load_events(self._views[key].base, device)
        if key in self._models and self._stamps.get(key) != self._stamp(ref):
            self._forget(key)
        if key not in self._models:
            yield from self._load(ref, key, device)
        return self._models[key]

    def _load(self, ref: str, key: tuple[str, str], device: DeviceChoice) -> Generator[PrepareProgress, None, None]:
        stamp = self._stamp(ref)  # before loading: a rewrite meanwhile is caught at the next use
        checkpoint = lora_checkpoint(ref)
        base = None if checkpoint is None else (yield from self.load_events(checkpoint.base, device))
        self._make_room(device.dtype, views=checkpoint is not None)
        self.on_state("loading", ref, f"Loading {ref}…")
        try:
            loaded = adapter_view(base, checkpoint) if checkpoint else (yield from load_model_events(
                ref, device, tokenizer=self._tokenizers.pop(key[0], None)))
        except Exception as exc:
            self.on_state("error", ref, str(exc))
            raise
        self._models[key], self._stamps[key] = loaded, stamp
        if checkpoint is not None:
            self._views[key] = checkpoint
        self.on_state("ready", ref, loaded.name)

    def _make_room(self, dtype: str, views: bool) -> None:
        """Forget the oldest entries of `dtype` beyond `keep - 1`, counting full models and views
        apart (a view holds an adapter only; forgetting a base forgets its views)."""
        same = [k for k in self._models if k[1] == dtype and (k in self._views) == views]
        for old in same[: max(0, len(same) - self.keep + 1)]:
            self._forget(old)

    def _forget(self, key: tuple[str, str]) -> None:
        self._models.pop(key, None)
        self._stamps.pop(key, None)
        self._views.pop(key, None)
        for view in [k for k, ckpt in self._views.items() if (model_identity(ckpt.base), k[1]) == key]:
            self._forget(view)

    def get(self, ref: str, device: DeviceChoice | None = None) -> LoadedModel:
        """Blocking `load_events`."""
        return drain(self.load_events(ref, device))

    def scoring_models(self, *refs: str) -> list[LoadedModel]:
        """`refs` in one precision for scores a person reads: fp32 if the fp32 weights they still
        need fit in the memory free now (with a fifth to spare; a base shared by checkpoints counts
        once, a checkpoint whose base is held adds its adapter), else the window's precision.
        `scoring_choice` then names the precision used and why."""
        choice = plan_run(choice=self.device).scoring_choice()
        if choice.dtype != self.device.dtype:
            need = self._parameters_to_load(refs, choice.dtype)
            if need:
                free, _ = memory_budget(self.device.device)
                choice = plan_run(parameters=need, free_bytes=free, choice=self.device).scoring_choice()
        self.scoring_choice = choice
        return [self.get(ref, device=choice) for ref in refs]

    def scoring(self, ref: str) -> LoadedModel:
        """`scoring_models` of one model."""
        return self.scoring_models(ref)[0]

    def _parameters_to_load(self, refs: tuple[str, ...], dtype: str) -> int:
        """Parameters that holding `refs` in `dtype` adds, counted on their window copies."""
        missing = [ref for ref in refs if (model_identity(ref), dtype) not in self._models]
        models = [self.get(ref).model for ref in missing]
        held = [m.model for (name, d), m in self._models.items()
                if d == self.device.dtype and (name, dtype) in self._models]
        return parameters_to_hold(models, held)

    def held_bytes(self) -> int:
        """Bytes of the weights held in every precision, each tensor once: a base and the views
        of its checkpoints are one copy (what the tests and bench/compare_memory.py count)."""
        sizes = {p.data_ptr(): p.numel() * p.element_size() for m in self._models.values() for p in m.model.parameters()}
        return sum(sizes.values())

    def release_scoring(self) -> None:
        """Forget every copy in another precision than the window's (the fp32 scoring copies of
        Compare and the held-out pass). A training run calls it as it starts:
        the run plan's fit was judged without them, and at 1B the fp32 base alone is 5 GB of
        memory that nothing gives back (a bf16 window copy is the file's mapped pages, which the
        trainer's own base shares). The next scores load them again (~5 s at 1B here)."""
        for key in [k for k in self._models if k[1] != self.device.dtype]:
            self._forget(key)

    def drop(self, ref: str) -> None:
        self._tokenizers.pop(model_identity(ref), None)
        for key in [k for k in self._models if k[0] == model_identity(ref)]:
            self._forget(key)


class AppContext(QObject):
    """Shared state of one window.

    Signals:
        modelStateChanged(state, detail): state is "loading" | "ready" | "error".
        activeModelChanged(ref): the model that labeling samples from changed.
        comparisonsChanged(): verdicts were added, changed or removed.
        projectChanged(): another project file was opened.
        closing(): the window is closing: a training run stops at its next step and saves a
            checkpoint; pending sampling is cancelled (MainWindow waits for the worker).
        saveFailed(message): a person's action could not be saved (disk full, read-only, ...);
            the window shows the message in a dialog. Nothing of it was acknowledged.
    """

    modelStateChanged = Signal(str, str)
    activeModelChanged = Signal(str)
    comparisonsChanged = Signal()
    projectChanged = Signal()
    closing = Signal()
    saveFailed = Signal(str)
    navigateRequested = Signal(str)  # a page asks the window to show another page by name
    _modelEvent = Signal(str, str, str)  # (state, ref, detail) from the worker; queued to this thread

    def __init__(self, project_path: Path, model_ref: str, device: DeviceChoice, parent=None):
        super().__init__(parent)
        self.project_path = Path(project_path)
        self.project = open_project(self.project_path)  # the GUI thread's own connection
        self.model_ref = model_ref
        self.base_model_ref = model_ref  # the reference for training unless the user picks another
        self.device = device
        self.runner = TorchRunner(self)
        self.disk = TorchRunner(self, "disk-worker")  # disk scans (the model listing): never behind sampling
        self.models = ModelCache(device, on_state=self._modelEvent.emit)
        self._modelEvent.connect(self._on_cache_event)
        self._loading: set[str] = set()  # refs whose load-model job has not finished
        self.model_state = ("loading", "")
        self.plain_text = False  # the active model has no chat template (a base model): plain-text mode
        self.loaded_name = ""

    def try_save(self, write: Callable[[], Any]) -> tuple[bool, Any]:
        """Run one write of a person's action: (True, its result), or (False, None) after
        `saveFailed` told the person why (disk full, read-only, ...). The caller acknowledges
        the action only on True, so a failed verdict stays on screen to be retried."""
        try:
            return True, write()
        except StoreError as exc:
            self.saveFailed.emit(str(exc))
            return False, None

    # ---------------------------------------------------------------- jobs
    def submit(self, name: str, factory: Callable[[], Iterator[Any]], background: bool = False,
               urgent: bool = False) -> Job:
        return self.runner.submit(name, factory, background, urgent)

    def submit_disk(self, name: str, factory: Callable[[], Iterator[Any]]) -> Job:
        """Queue a job that only reads files (no torch) on the disk worker, so that it never waits
        behind sampling or training on the torch worker."""
        return self.disk.submit(name, factory)

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

    def _on_cache_event(self, state: str, ref: str, detail: str) -> None:
        """The cache's word on a model. While the active model's load job runs, its "ready" waits
        for the job: the job also says whether the model is a plain-text one (no chat template),
        and a page that reads `plain_text` on "ready" must find it set."""
        if not (state == "ready" and ref in self._loading):
            self._on_models_event(state, ref, detail)

    def _on_models_event(self, state: str, ref: str, detail: str) -> None:
        if ref != self.model_ref:
            return  # another model (a second one to compare) does not change the status bar
        if state == "ready":
            self.loaded_name = detail
        self.set_model_state(state, detail)

    def load_active_model(self) -> Job:
        """Load (and on first use prepare) the active model in the background."""
        ref = self.model_ref
        self.set_model_state("loading", f"Loading {ref}…")

        def factory():
            loaded = yield from self.models.load_events(ref)  # the first use of the default or a .gguf: live progress
            tokenizer = getattr(loaded, "tokenizer", None)
            return loaded.name, tokenizer is not None and not getattr(tokenizer, "chat_template", None)

        def ready(result) -> None:
            name, self.plain_text = result
            self._on_models_event("ready", ref, name)

        self._loading.add(ref)
        job = self.submit("load-model", factory, urgent=True)  # the status bar waits on it
        job.finished.connect(lambda: self._loading.discard(ref))
        job.yielded.connect(lambda ev: self.set_model_state("loading", f"{ev.message} ({ev.fraction:.0%})"))
        job.returned.connect(ready)
        job.failed.connect(lambda msg: self._on_models_event("error", ref, msg))
        return job

    def set_active_model(self, ref: str) -> None:
        """Make `ref` the model labeling samples from, and load it; picking the model whose load
        failed again retries it (the person closed other programs, or fixed its folder)."""
        if ref != self.model_ref:
            self.model_ref = ref
            self.activeModelChanged.emit(ref)
            self.load_active_model()
        elif self.model_state[0] == "error" and ref not in self._loading:
            self.load_active_model()

    def request_close(self) -> None:
        """Ask every job to reach a safe stop: listeners of `closing` stop theirs (training saves
        a checkpoint); foreground jobs (sampling, loading) are cancelled at their next yield."""
        self.closing.emit()
        self.runner.cancel_foreground()

    def shutdown(self) -> None:
        self.runner.shutdown()
        self.disk.shutdown()
        if self.project is not None:
            self.project.close()
            self.project = None
