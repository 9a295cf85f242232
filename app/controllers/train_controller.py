"""The Train page's logic, without widgets: build a run's config from the project and the
person's settings, run the engine's run driver (`dpo_engine.train.driver.drive`, the same as
`dpo-engine train --project`) on the torch worker, present its events, stop, resume, and
list past runs. The driver records the run and its metrics in the project file."""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from app.plumbing.context import AppContext
from dpo_engine.defaults import DataEstimate, data_estimate, small_data_defaults
from dpo_engine.errors import DPOStudioError
from dpo_engine.train.config import TrainConfig, form_fields
from dpo_engine.train.events import EvalEvent, LogLine, ReferenceProgress, StepEvent, TrainSummary
from dpo_engine.train.driver import RunStarted

MIN_PAIRS = 6  # below this a run cannot hold out an eval pair and still fill a batch of 2


def runs_dir(project_path: Path) -> Path:
    """Checkpoints live beside the project file, so the project folder holds everything."""
    return project_path.parent / f"{project_path.stem}.runs"


def default_settings(device: str, n_pairs: int = 0) -> dict:
    """The one-button defaults: the engine's measured small-data settings for `n_pairs`
    (`dpo_engine.defaults`, shared with `dpo-engine train`), plus the page's own fields."""
    base = TrainConfig(output_dir="-")
    small = small_data_defaults(n_pairs)
    return {
        **{f.name: getattr(base, f.name) for f in form_fields()},  # the Advanced form: TrainConfig's own
        "max_steps": 0,  # 0: by epochs
        **small.to_settings(),  # beta, lr, epochs, warmup_ratio, batch_size, grad_accum
        "weight_rankings": small.weight_rankings,  # each ranking counts as one verdict
        "lora": False, "lora_rank": 16, "dtype": "auto", "device": device, "reference": "",
        "eval_every": 5,  # frequent enough to draw an eval curve on small data
        "start_from": "active",  # round 2+: continue from the active model (the last run's), on all data
        "follow": True,  # after a run, label with its model (on-policy pairs for the next round)
    }


class TrainController(QObject):
    """Signals:
        started(run_id, total_steps)
        stepArrived(StepEvent) / evalArrived(EvalEvent) / referenceProgress(done, total)
        logLine(str)
        finished(TrainSummary): finished, stopped or failed (reason in .reason)
        failed(str): the run could not start or crashed; the reason for the person
        runsChanged(): the run history changed
    """

    started = Signal(int, int)
    stepArrived = Signal(object)
    evalArrived = Signal(object)
    referenceProgress = Signal(int, int)
    logLine = Signal(str)
    finished = Signal(object)
    failed = Signal(str)
    runsChanged = Signal()

    def __init__(self, ctx: AppContext):
        super().__init__()
        self.ctx = ctx
        self.settings = default_settings(ctx.device.device, sum(self.pair_counts()))
        self.run_id: int | None = None
        self.job = None
        self._stop = threading.Event()
        self.config: TrainConfig | None = None
        self.last_step = 0  # the current run's last optimizer step
        ctx.closing.connect(self._on_ctx_closing)

    # ------------------------------------------------------------------ readiness
    def pair_counts(self) -> tuple[int, int]:
        counts = self.ctx.project.counts()
        return counts["train_pairs"], counts["eval_pairs"]

    def why_not_ready(self) -> str:
        """Empty when a run can start; otherwise the reason, for the disabled button."""
        if self.job is not None:
            return "A run is in progress."
        train, ev = self.pair_counts()
        if train + ev < MIN_PAIRS:
            return (f"Label at least {MIN_PAIRS} usable pairs first (you have {train + ev}); "
                    "ties, both-bad and skips are not pairs.")
        return ""

    @property
    def running(self) -> bool:
        return self.job is not None

    def estimate(self) -> DataEstimate:
        """Whether the labeled pairs are likely enough to change the model (measured; see
        dpo_engine.defaults)."""
        return data_estimate(sum(self.pair_counts()))

    def start_model(self) -> str:
        """The model a new run starts from: the active one (round 2+) or the base."""
        return self.ctx.model_ref if self.settings.get("start_from", "active") == "active" else self.ctx.base_model_ref

    def round_number(self) -> int:
        """1 for a run from the base; 1 + the number of runs behind the starting checkpoint otherwise."""
        parents = {m["ref"]: m["parent"] for m in self.ctx.project.runs.models()}
        ref, depth = self.start_model(), 1
        while ref != self.ctx.base_model_ref and ref in parents and depth < 100:
            ref, depth = parents[ref], depth + 1
        return depth

    # ------------------------------------------------------------------ runs
    def build_config(self, output_dir: Path) -> TrainConfig:
        s = self.settings
        from dpo_engine.train.config import LoraSettings

        model = self.start_model()
        # the original base stays the reference in every round unless the person names another
        reference = s["reference"].strip() or (self.ctx.base_model_ref if self.ctx.base_model_ref != model else None)
        form = {f.name: s[f.name] for f in form_fields() if f.name in s}
        if not form.get("max_steps"):
            form["max_steps"] = None  # 0 on the form: by epochs
        return TrainConfig(
            output_dir=str(output_dir), model=model, reference=reference, **form,
            lora=LoraSettings(rank=s["lora_rank"], alpha=2 * s["lora_rank"]) if s["lora"] else None,
            merge_lora=bool(s["lora"]), device=s["device"], dtype=s["dtype"],
        )

    def start(self) -> bool:
        """Start a new run on all the project's pairs; False (and `failed`) if it cannot."""
        reason = self.why_not_ready()
        if reason:
            self.failed.emit(reason)
            return False
        try:
            self.config = self.build_config(Path("-"))  # validated here; the driver names the folder
        except DPOStudioError as exc:
            self.failed.emit(str(exc))
            return False
        self._launch(resume_from=None)
        return True

    def resume(self, run_id: int) -> bool:
        """Continue a stopped run from its checkpoint, exactly where it stopped."""
        from dpo_engine.train.loop import load_run_config

        run = next((r for r in self.ctx.project.runs.all() if r["id"] == run_id), None)
        if run is None or run["status"] != "stopped" or not run["checkpoint"] or self.job is not None:
            self.failed.emit("Only a stopped run with a checkpoint can be resumed, when no run is in progress.")
            return False
        try:
            self.config = load_run_config(run["checkpoint"])
        except DPOStudioError as exc:
            self.failed.emit(str(exc))
            return False
        self._launch(resume_from=run["checkpoint"])
        return True

    def _launch(self, resume_from) -> None:
        from dpo_engine.train.driver import drive

        self._stop = threading.Event()
        self.last_step = 0
        config, stop, folder = self.config, self._stop, runs_dir(self.ctx.project_path)
        self.job = self.ctx.submit(
            "train", lambda: drive(config, project=self.ctx.project_path, stop=stop, resume_from=resume_from,
                                   output_for_run=lambda run_id: folder / f"run-{run_id}"),
            background=True)
        self.job.yielded.connect(self._on_job_yielded)
        self.job.failed.connect(self._on_job_failed)
        self.job.finished.connect(self._on_job_finished)

    def stop(self) -> None:
        """Graceful: the run finishes its step, saves a checkpoint and ends as stopped."""
        self._stop.set()

    def _on_ctx_closing(self) -> None:
        """The window closes mid-run: stop like the Stop button, so the run ends `stopped` with a
        checkpoint that Resume continues after the next start."""
        if self.job is not None:
            self.settings = {**self.settings, "follow": False}  # no model switch while closing
            self.stop()

    # ------------------------------------------------------------------ events
    def _on_job_yielded(self, event) -> None:
        """Present the driver's events (it has recorded them in the project already)."""
        if isinstance(event, RunStarted):
            self.run_id, self.config = event.run_id, event.config
            self.started.emit(self.run_id, 0)
            self.runsChanged.emit()
        elif isinstance(event, StepEvent):
            self.last_step = event.step
            self.stepArrived.emit(event)
        elif isinstance(event, EvalEvent):
            self.evalArrived.emit(event)
        elif isinstance(event, ReferenceProgress):
            self.referenceProgress.emit(event.done, event.total)
        elif isinstance(event, LogLine):
            self.logLine.emit(event.message)
        elif isinstance(event, TrainSummary):
            self.logLine.emit(f"Run {self.run_id} {event.status}" + (f": {event.reason}" if event.reason else ""))
            self.finished.emit(event)
            if event.status == "finished" and event.checkpoint and self.settings.get("follow", True):
                # after the page has shown the result: switching models refills the Label queue
                QTimer.singleShot(0, lambda ckpt=event.checkpoint: self._follow(ckpt))

    def _follow(self, checkpoint: str) -> None:
        """Label with the new model (on-policy pairs for the next round); the base stays the reference."""
        self.ctx.set_active_model(checkpoint)
        self.logLine.emit(f"Labeling now samples from this run's model; the reference stays "
                          f"{self.ctx.base_model_ref}. Train again for round {self.round_number()}.")
        self.runsChanged.emit()  # the Train button now reads "Train round N"

    def _on_job_failed(self, message: str) -> None:  # the driver recorded the run as failed
        self.logLine.emit(f"Run failed: {message}")
        self.failed.emit(message.splitlines()[0])

    def _on_job_finished(self) -> None:
        self.job = None
        self.runsChanged.emit()

    # ------------------------------------------------------------------ history
    def runs(self) -> list[dict]:
        return self.ctx.project.runs.all()

    def run_metrics(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        return self.ctx.project.runs.metrics(run_id)

    def use_checkpoint(self, run_id: int) -> str | None:
        """Make a run's checkpoint the active model for labeling and comparing (the
        reference for later runs stays the original base)."""
        run = next((r for r in self.runs() if r["id"] == run_id), None)
        if not run or not run["checkpoint"]:
            return None
        self.ctx.set_active_model(run["checkpoint"])
        return run["checkpoint"]
