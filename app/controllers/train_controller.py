"""The Train page's logic, without widgets: build a run's config from the project and the
person's settings, run the engine's run driver (`dpo_engine.train.driver.drive`, the same as
`dpo-engine train --project`) on the torch worker, present its events, stop, resume, and
list past runs. The driver records the run and its metrics in the project file."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.controllers.export_controller import ExportController
from app.plumbing.context import AppContext
from app.widgets.metric_plots import RunSeries, with_logratios
from dpo_engine.defaults import DataEstimate, data_estimate, small_data_defaults
from dpo_engine.errors import DPOStudioError
from dpo_engine.run_plan import PlanRequest, RunPlan, plan_run
from dpo_engine.weights import return_freed_memory
from dpo_engine.train.config import LoraSettings, TrainConfig, form_fields
from dpo_engine.train.events import EvalEvent, LogLine, ReferenceProgress, StepEvent, TrainSummary
from dpo_engine.train.driver import RunStarted, project_pairs
from dpo_engine.train.duration import estimate_seconds, read_speed, run_work, speed_key

MIN_PAIRS = 6  # below this a run cannot hold out an eval pair and still fill a batch of 2
RUN_COLUMNS = ("Run", "Status", "Started", "Steps", "Loss", "Accuracy", "Checkpoint")
# the metrics whose last value the run history shows (Steps and Loss, Accuracy held-out or train)
_RUN_ROW_METRICS = ("loss", "eval/rewards/accuracies", "rewards/accuracies")
STATUS_TEXT = {"finished": "Finished", "stopped": "Stopped", "failed": "Failed"}


@dataclass(frozen=True)
class Readiness:
    """Whether a run can start, and what the page says about it."""

    reason: str  # why the Train button is disabled ("" when a run can start)
    button_text: str  # "Train", or "Train round N" from round 2 on
    tooltip: str  # the Train button's
    estimate: str  # whether the labeled pairs are likely enough to change the model
    text: str  # the status line while no run is in progress


@dataclass(frozen=True)
class RunRow:
    """One row of the run history table."""

    run_id: int
    cells: tuple[str, ...]  # in RUN_COLUMNS order
    error: str  # why the run failed ("" otherwise): the status cell's tooltip


@dataclass(frozen=True)
class RunActions:
    """What the selected runs allow."""

    resume: bool  # exactly one, stopped, with no run in progress
    use: bool  # exactly one, with a checkpoint
    export: bool  # exactly one, with a checkpoint


@dataclass(frozen=True)
class StepView:
    """What the page shows of one optimizer step."""

    step: int
    total_steps: int
    speed: str  # ETA, tokens/s, device
    status: str  # run, step, epoch, loss, accuracy


@dataclass(frozen=True)
class ModelAdaptation:
    """Settings a chosen model needs to fit in memory: its plan's (`ModelChoice.plan`)."""

    lora: bool  # turn LoRA on: a full fine-tune does not fit
    gradient_checkpointing: bool  # turn it on: it fits only with it
    base_bits: int | None  # 4: set the frozen base to 4-bit NF4, a bf16/fp32 base does not fit; None: leave it
    note: str  # what was changed, for the person ("" when nothing)
    batch: tuple[int, int] | None = None  # (batch size, accumulation): smaller micro-batches, the same
    # effective batch, where only they fit; None: leave them


def clock_text(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def runs_dir(project_path: Path) -> Path:
    """Checkpoints live beside the project file, so the project folder holds everything."""
    return project_path.parent / f"{project_path.stem}.runs"


@dataclass(frozen=True)
class TrainSettings:
    """What the person set on the Train page: TrainConfig's own form fields, and the page's."""

    form: dict[str, Any] = field(default_factory=dict)  # by TrainConfig field name (`form_fields()`)
    lora: bool = False  # full fine-tuning unless the model fits only with LoRA
    lora_rank: int = LoraSettings.rank  # the trainer's default; alpha is twice the rank
    base_bits: int | None = None  # 4: LoRA over a 4-bit NF4 base (where bitsandbytes runs); None/0: compute precision
    dtype: str = "auto"  # the device's measured precision (`dpo_engine.precision`)
    device: str = "auto"
    reference: str = ""  # "": the base model the person started from
    start_from: str = "active"  # round 2+: continue from the active model (the last run's), on all data
    follow: bool = True  # after a run, label with its model (on-policy pairs for the next round)

    @property
    def lora_base_bits(self) -> int | None:
        """The frozen base's bits as the trainer takes them: 4, or None (the compute precision; no LoRA)."""
        return (self.base_bits or None) if self.lora else None


def default_settings(device: str, n_pairs: int = 0) -> TrainSettings:
    """The one-button defaults: the engine's measured small-data settings for `n_pairs`
    (`dpo_engine.defaults`, shared with `dpo-engine train`), plus the page's own fields."""
    base = TrainConfig(output_dir="-")
    small = small_data_defaults(n_pairs)
    form = {
        **{f.name: getattr(base, f.name) for f in form_fields()},  # the Advanced form: TrainConfig's own
        "max_steps": 0,  # 0: by epochs
        **small.to_settings(),  # beta, lr, epochs, warmup_ratio, batch_size, grad_accum
        "weight_rankings": small.weight_rankings,  # each ranking counts as one verdict
        "eval_every": 5,  # frequent enough to draw an eval curve on small data
    }
    return TrainSettings(form, device=device)


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
        self._pairs: dict[bool, tuple] = {}  # project_pairs by weight_rankings, until the labels change
        ctx.closing.connect(self._on_ctx_closing)
        ctx.comparisonsChanged.connect(self._pairs.clear)

    def set_start_from(self, start_from: str) -> None:
        """"active" (continue from the model labeling samples from) or "base" (a fresh start)."""
        self.settings = replace(self.settings, start_from=start_from)

    # ------------------------------------------------------------------ readiness
    def pair_counts(self) -> tuple[int, int]:
        counts = self.ctx.project.queries.counts()
        return counts.train_pairs, counts.eval_pairs

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
        return self.ctx.model_ref if self.settings.start_from == "active" else self.ctx.base_model_ref

    def round_number(self) -> int:
        """1 for a run from the base; 1 + the number of runs behind the starting checkpoint otherwise."""
        parents = {m.ref: m.parent for m in self.ctx.project.queries.models()}
        ref, depth = self.start_model(), 1
        while ref != self.ctx.base_model_ref and ref in parents and depth < 100:
            ref, depth = parents[ref], depth + 1
        return depth

    def readiness(self) -> Readiness:
        reason = self.why_not_ready()
        n_round = self.round_number()
        train, ev = self.pair_counts()
        text = reason or f"Ready: {train} training pairs and {ev} held-out pairs."
        if not reason and n_round > 1:
            text += (f" Round {n_round}: starts from {self.start_model()} on all pairs; "
                     f"the reference stays {self.ctx.base_model_ref}.")
        return Readiness(reason, "Train" if n_round == 1 else f"Train round {n_round}",
                         reason or "Train on all usable pairs in the project", self.estimate().message, text)

    def adaptation(self, choice, lora_on: bool, checkpointing_on: bool, base_bits_on: int | None = None,
                   batch: tuple[int, int] | None = None) -> ModelAdaptation:
        """What the chosen model's plan (`ModelChoice.plan`: the picker's fit) needs turned on that
        the form has off: LoRA, gradient checkpointing, a 4-bit base, and smaller micro-batches
        than the form's `batch` (batch size, accumulation), keeping its effective batch."""
        plan = choice.plan
        if plan is None:
            return ModelAdaptation(False, False, None, "")
        lora, checkpointing = plan.lora and not lora_on, plan.checkpointing and not checkpointing_on
        four_bit = 4 if plan.base_bits == 4 and base_bits_on != 4 else None
        smaller = plan.effective_batch(*batch) if batch else None
        smaller = smaller if smaller != batch else None
        notes = [text for on, text in (
            (lora, "LoRA is on: a full fine-tune of this model does not fit in memory here"),
            (four_bit, "the frozen base is 4-bit (NF4): a bf16 base does not fit"),
            (checkpointing, "gradient checkpointing is on: it fits only with it"),
            (smaller, smaller and f"batch size {smaller[0]} x accumulation {smaller[1]} (was {batch[0]} x {batch[1]}):"
                                  f" only micro-batches of {smaller[0]} pair{'s' if smaller[0] > 1 else ''} fit"))
            if on]
        text = "; ".join(notes) + "." if notes else ""
        return ModelAdaptation(lora, checkpointing, four_bit, text[:1].upper() + text[1:], smaller)

    def four_bit_reason(self) -> str:
        """Why the Train page cannot offer a 4-bit base on this device ("" where it can)."""
        from dpo_engine import quant

        return quant.catalog_reason(self.ctx.device.device) or ""

    def plan(self, settings: TrainSettings | None = None) -> RunPlan:
        """The run plan of `settings` (the current ones by default), judged without measuring:
        what the page says under "Training on"; a DPOStudioError where the settings cannot run."""
        s = settings or self.settings
        return plan_run(PlanRequest(s.device, s.dtype, lora=s.lora, base_bits=s.lora_base_bits,
                                    checkpointing=bool(s.form.get("gradient_checkpointing"))), measure=False)

    def plan_text(self, settings: TrainSettings | None = None) -> str:
        """"Training on …" for the page: the plan's description, or why the settings cannot run."""
        try:
            return f"Training on {self.plan(settings).describe()}"
        except DPOStudioError as exc:
            return str(exc)

    # ------------------------------------------------------------------ runs
    def duration_text(self, settings: TrainSettings | None = None) -> str:
        """About how long a run of `settings` takes on this machine, before Train is pressed: from
        the last run here of the same model and settings (`train.duration`); "" when nothing to train."""
        try:
            config = self.build_config(Path("-"), settings)
        except DPOStudioError:
            return ""
        speed = read_speed(speed_key(config))
        if speed is None:
            return ("How long: not measured here yet for this model and these settings; the first run "
                    "measures it, and the page says it before the next one.")
        if config.weight_rankings not in self._pairs:  # every field change asks: read the pairs once
            self._pairs[config.weight_rankings] = project_pairs(self.ctx.project, config)
        train, held = self._pairs[config.weight_rankings]
        if not train:
            return ""
        seconds = estimate_seconds(run_work(config, train, held), speed)
        return f"About {clock_text(seconds)} on this machine (the speed of a run here on {speed.measured[:10]})."

    def build_config(self, output_dir: Path, settings: TrainSettings | None = None) -> TrainConfig:
        s = settings or self.settings
        model = self.start_model()
        # the original base stays the reference in every round unless the person names another
        reference = s.reference.strip() or (self.ctx.base_model_ref if self.ctx.base_model_ref != model else None)
        form = {f.name: s.form[f.name] for f in form_fields() if f.name in s.form}
        if not form.get("max_steps"):
            form["max_steps"] = None  # 0 on the form: by epochs
        return TrainConfig(
            output_dir=str(output_dir), model=model, reference=reference, **form,
            lora=LoraSettings(rank=s.lora_rank, alpha=2 * s.lora_rank) if s.lora else None,
            merge_lora=s.lora, device=s.device, dtype=s.dtype, base_bits=s.lora_base_bits,
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

        run = self.ctx.project.queries.run(run_id)
        if run is None or run.status != "stopped" or not run.checkpoint or self.job is not None:
            self.failed.emit("Only a stopped run with a checkpoint can be resumed, when no run is in progress.")
            return False
        try:
            self.config = load_run_config(run.checkpoint)
        except DPOStudioError as exc:
            self.failed.emit(str(exc))
            return False
        self._launch(resume_from=run.checkpoint)
        return True

    def _launch(self, resume_from) -> None:
        from dpo_engine.train.driver import drive

        self._stop = threading.Event()
        self.last_step = 0
        config, stop, folder = self.config, self._stop, runs_dir(self.ctx.project_path)
        models = self.ctx.models

        def run():
            models.release_scoring()  # on the worker, as the cache wants: memory the plan did not count
            return_freed_memory()
            try:
                return (yield from drive(config, project=self.ctx.project_path, stop=stop, resume_from=resume_from,
                                         output_for_run=lambda run_id: folder / f"run-{run_id}"))
            finally:
                return_freed_memory()  # the run's model, optimizer and activations, gone with `drive`

        self.job = self.ctx.submit("train", run, background=True)
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
            self.settings = replace(self.settings, follow=False)  # no model switch while closing
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
            if event.status == "finished" and event.checkpoint and self.settings.follow:
                # after the page has shown the result: switching models refills the Label queue
                QTimer.singleShot(0, lambda ckpt=event.checkpoint: self._follow(ckpt))

    def step_view(self, ev: StepEvent) -> StepView:
        return StepView(ev.step, ev.total_steps,
                        f"ETA {clock_text(ev.eta)} · {ev.tokens_per_s:,.0f} tokens/s · {self.ctx.device.describe()}",
                        f"Run {self.run_id}: step {ev.step} of {ev.total_steps}, epoch {ev.epoch:.2f}, "
                        f"loss {ev.loss:.4f}, accuracy {ev.rewards_accuracies:.2f}")

    def started_text(self, run_id: int) -> str:
        return f"Run {run_id} on {self.ctx.device.describe()}: computing reference log-probs…"

    @staticmethod
    def finished_text(summary: TrainSummary) -> str:
        text = f"{STATUS_TEXT[summary.status]} after {summary.step} steps"
        if summary.reason:
            text += f": {summary.reason}"
        if summary.checkpoint:
            text += f". Model saved to {summary.checkpoint}"
        return text

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
    def run_rows(self) -> list[RunRow]:
        """The run history, newest first (two queries, however many runs)."""
        rows = []
        for summary in reversed(self.ctx.project.queries.run_summaries(_RUN_ROW_METRICS)):
            run, loss = summary.run, summary.value("loss")
            steps = summary.last["loss"][0] if "loss" in summary.last else 0
            started = dt.datetime.fromtimestamp(run.started).strftime("%Y-%m-%d %H:%M")
            acc = summary.value("eval/rewards/accuracies")
            acc = summary.value("rewards/accuracies") if acc is None else acc  # held-out when the run had it
            cells = (str(run.id), run.status, started, str(steps), f"{loss:.4f}" if loss is not None else "",
                     f"{acc:.2f}" if acc is not None else "", run.checkpoint or "")
            rows.append(RunRow(run.id, cells, run.error or ""))
        return rows

    def run_actions(self, run_ids: list[int]) -> RunActions:
        one = self.ctx.project.queries.run(run_ids[0]) if len(run_ids) == 1 else None
        return RunActions(bool(one and one.status == "stopped" and not self.running),
                          bool(one and one.checkpoint), bool(one and one.checkpoint))

    def live_series(self, run_id: int) -> RunSeries:
        """A run's recorded metrics (a resumed run's history), as the live curves."""
        return self._series(run_id, "live", self.config.beta if self.config else None)

    def history_series(self, run_ids: list[int], overlay: bool) -> list[tuple[str, RunSeries]]:
        """(plot key, curves) of the selected runs: the first as "live", the others overlaid;
        none while a run trains (its live curves stay)."""
        if self.running or not run_ids:
            return []
        runs = {r.id: r for r in self.ctx.project.queries.runs()}
        return [("live" if run_id == run_ids[0] else f"run-{run_id}",
                 self._series(run_id, f"run {run_id}", runs[run_id].config.get("beta")))
                for run_id in (run_ids if overlay else run_ids[:1])]

    def _series(self, run_id: int, name: str, beta) -> RunSeries:
        series = RunSeries(name)
        for metric, points in self.ctx.project.queries.metrics(run_id).items():
            for step, value in points:
                series.add(step, with_logratios({metric: value}, beta))
        return series

    def export_controller(self, run_id: int) -> ExportController | None:
        """The export of a run's checkpoint (None when it has none)."""
        run = self.ctx.project.queries.run(run_id)
        return ExportController(self.ctx, run.checkpoint) if run and run.checkpoint else None

    def use_checkpoint(self, run_id: int) -> str | None:
        """Make a run's checkpoint the active model for labeling and comparing (the
        reference for later runs stays the original base)."""
        run = self.ctx.project.queries.run(run_id)
        if not run or not run.checkpoint:
            return None
        self.ctx.set_active_model(run.checkpoint)
        return run.checkpoint
