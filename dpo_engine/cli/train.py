"""`dpo-engine train`: DPO-train a model on pairs from a file or a project, with a progress line.

Ctrl-C asks the run to stop after the current step (it saves a checkpoint that
`--resume` continues); a second Ctrl-C quits at once, leaving the last checkpoint intact.
With `--project`, the run, its metrics and the checkpoint are recorded in the project.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import fields, replace
from pathlib import Path

import click

from dpo_engine.cli.base import DEVICE_HELP, dtype_option, friendly_errors
from dpo_engine.defaults import SmallDataDefaults, small_data_defaults
from dpo_engine.errors import DataError, DPOStudioError
from dpo_engine.losses import LOSSES
from dpo_engine.train.config import SCHEDULES, LoraSettings, TrainConfig
from dpo_engine.train.events import EvalEvent, LogLine, PrecisionChosen, ReferenceProgress, StepEvent, TrainSummary

LORA_LR = 5e-5  # LoRA adapters start at zero and need a ~10x larger rate than full fine-tuning
DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
SMALL_DEFAULT = "[default: measured for the data size: dpo_engine.defaults]"


def read_data_file(path: str) -> list:
    """Pairs from a .jsonl/.csv/.parquet file; bad rows are reported and skipped."""
    from dpo_engine.store.formats import read_rows

    kind, rows, errors = read_rows(path)
    for error in errors[:10]:
        click.echo(f"Warning: {path}: {error} (skipped)", err=True)
    if len(errors) > 10:
        click.echo(f"Warning: {len(errors) - 10} more bad rows skipped", err=True)
    if kind != "pairs":
        raise DataError(f"{path} holds prompts, not preference pairs: label them first, or give a pairs file.")
    return [pair for _, pair in rows]


def make_interrupt_handler(flag: threading.Event):
    """First Ctrl-C: set the stop flag (the run saves and ends). Second: quit now."""

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        click.echo("\nStopping after this step and saving a checkpoint (Ctrl-C again to quit now).", err=True)

    return handler


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One updating line on a terminal; plain lines when the output is a file or a pipe."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.open = False
        self.quiet = quiet  # the other ranks under `accelerate launch`: the main process speaks for all

    def line(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            click.echo("\r" + text.ljust(100)[:160], nl=final, err=True)
            self.open = not final
        else:
            click.echo(text, err=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.open:
            click.echo("", err=True)
            self.open = False
        click.echo(text, err=True)

    def step(self, e: StepEvent) -> None:
        width = 20
        filled = round(width * e.step / e.total_steps)
        self.line(f"[{'#' * filled}{'.' * (width - filled)}] step {e.step}/{e.total_steps} "
                  f"loss {e.loss:.4f} acc {e.rewards_accuracies:.2f} margin {e.rewards_margins:+.3f} "
                  f"{e.tokens_per_s:.0f} tok/s ETA {_duration(e.eta)}", final=not self.tty or e.step == e.total_steps)


def _config(opts: dict, n_pairs: int) -> TrainConfig:
    """The run's config: the flags given, the rest from the measured small-data defaults for
    `n_pairs` (dpo_engine.defaults, the same the Train page uses)."""
    lora = LoraSettings(rank=opts["lora_rank"], alpha=2 * opts["lora_rank"]) if opts["lora"] else None
    d = small_data_defaults(n_pairs).to_settings()
    pick = lambda key: opts[key] if opts[key] is not None else d[key]  # noqa: E731
    lr = opts["lr"] if opts["lr"] is not None else (LORA_LR if lora else d["lr"])
    return TrainConfig(
        output_dir=opts["output"], model=opts["model_ref"], reference=opts["reference"], loss=opts["loss"],
        beta=pick("beta"), lr=lr, epochs=pick("epochs"), max_steps=opts["max_steps"],
        batch_size=pick("batch_size"), grad_accum=pick("grad_accum"), max_length=opts["max_length"],
        schedule=opts["schedule"], warmup_ratio=pick("warmup_ratio"), eval_fraction=opts["eval_fraction"],
        eval_every=opts["eval_every"], save_every=opts["save_every"], seed=opts["seed"], lora=lora,
        merge_lora=opts["merge_lora"], gradient_checkpointing=opts["gradient_checkpointing"],
        device=opts["device"] or "auto", dtype=(opts["dtype"] or "auto").lower(),
    )


class Recorder:
    """Writes events to --metrics-out (JSONL) and to the project's runs/metrics tables."""

    def __init__(self, metrics_out: str | None, project, config: TrainConfig):
        self.file = open(metrics_out, "w", encoding="utf-8") if metrics_out else None
        self.project, self.config = project, config
        self.run_id = project.create_run(config.to_dict()) if project else None

    def event(self, e) -> None:
        if isinstance(e, (StepEvent, EvalEvent)):
            kind = "step" if isinstance(e, StepEvent) else "eval"
            if self.file:
                self.file.write(json.dumps({"type": kind, "step": e.step, **e.metrics}) + "\n")
                self.file.flush()
            if self.project:
                self.project.log_metrics(self.run_id, e.step, e.metrics)
        elif isinstance(e, PrecisionChosen):
            if self.file:
                self.file.write(json.dumps({"type": "precision", **e.record}) + "\n")
            if self.project:
                self.project.annotate_run(self.run_id, precision=e.record)
        elif isinstance(e, TrainSummary):
            if self.file:
                self.file.write(json.dumps({"type": "summary", **e.__dict__}) + "\n")
            if self.project:
                self.project.finish_run(self.run_id, e.status, e.reason or None, e.checkpoint)
                if e.checkpoint:
                    self.project.add_model(e.checkpoint, "checkpoint", parent=self.config.model, run_id=self.run_id)

    def close(self) -> None:
        if self.file:
            self.file.close()


def _load_pairs(data: str | None, project, weight_rankings: bool = False):
    if project is None:
        return read_data_file(data), None
    train, held = project.run_pairs(weight_rankings)
    return train, held or None


def _drive(events, progress: Progress, recorder: Recorder) -> TrainSummary:
    summary = None
    for e in events:
        recorder.event(e)
        if isinstance(e, StepEvent):
            progress.step(e)
        elif isinstance(e, ReferenceProgress):
            progress.line(f"Reference log-probs: {e.done}/{e.total}" + (" (cached)" if e.cached else ""),
                          final=not progress.tty or e.done == e.total)
        elif isinstance(e, EvalEvent):
            progress.message(f"eval @ step {e.step}: loss {e.loss:.4f} acc {e.rewards_accuracies:.2f} "
                             f"margin {e.rewards_margins:+.3f} ({e.num_pairs} pairs)")
        elif isinstance(e, LogLine):
            progress.message(("Warning: " if e.level == "warning" else "") + e.message)
        elif isinstance(e, TrainSummary):
            summary = e
    return summary


@click.command("train")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), help="Pairs file (.jsonl, .csv, .parquet).")
@click.option("--project", "project_path", type=click.Path(exists=True, dir_okay=False),
              help="A DPO Studio project: trains on its labeled pairs (its eval split held out) and records the run.")
@click.option("--model", "model_ref", default="default", show_default=True,
              help="Starting model: 'default', a model folder, a .gguf or a hub id.")
@click.option("--reference", default=None, help="Reference model (default: the starting model).")
@click.option("--output", default=None, help="Folder for the trained model (default with --resume: that folder).")
@click.option("--loss", type=click.Choice(list(LOSSES)), default=DEFAULTS["loss"], show_default=True)
@click.option("--beta", type=float, default=None, help=f"KL strength {SMALL_DEFAULT}.")
@click.option("--lr", type=float, default=None, help=f"Learning rate {SMALL_DEFAULT}; {LORA_LR} with --lora.")
@click.option("--epochs", type=int, default=None, help=f"Passes over the pairs {SMALL_DEFAULT}.")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps; overrides --epochs.")
@click.option("--batch-size", type=int, default=None, help=f"Pairs per micro-batch {SMALL_DEFAULT}.")
@click.option("--grad-accum", type=int, default=None, help=f"Micro-batches per step {SMALL_DEFAULT}.")
@click.option("--max-length", type=int, default=DEFAULTS["max_length"], show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS["schedule"], show_default=True)
@click.option("--warmup-ratio", type=float, default=None, help=f"Share of steps warming up {SMALL_DEFAULT}.")
@click.option("--eval-fraction", type=float, default=DEFAULTS["eval_fraction"], show_default=True)
@click.option("--eval-every", type=int, default=DEFAULTS["eval_every"], show_default=True)
@click.option("--save-every", type=int, default=DEFAULTS["save_every"], show_default=True)
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True)
@click.option("--lora", is_flag=True, help="Train LoRA adapters instead of every weight.")
@click.option("--lora-rank", type=int, default=LoraSettings.rank, show_default=True)
@click.option("--merge-lora", is_flag=True, help="Also save the model with the adapter merged in.")
@click.option("--gradient-checkpointing", is_flag=True, help="Less memory, slower steps.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue a stopped run exactly, with its own settings.")
@click.option("--metrics-out", type=click.Path(dir_okay=False), default=None, help="Write events as JSON lines.")
@click.option("--weight-rankings/--no-weight-rankings", default=None,
              help=f"With --project: each ranking counts as one verdict {SMALL_DEFAULT}.")
@click.option("--device", default=None, help=DEVICE_HELP)
@dtype_option
@friendly_errors
def train_cmd(**opts):
    """Train a model with DPO on preference pairs (--data FILE or --project DB)."""
    from dpo_engine.train.loop import load_run_config

    if bool(opts["data"]) == bool(opts["project_path"]):
        raise click.UsageError("Give exactly one of --data FILE or --project DB.")
    if opts["resume"]:
        config = load_run_config(opts["resume"], output_dir=opts["output"] or opts["resume"],
                                 **({"device": opts["device"]} if opts["device"] else {}),
                                 **({"dtype": opts["dtype"].lower()} if opts["dtype"] else {}))
        click.echo(f"Resuming {opts['resume']} with its own settings (training flags are ignored).", err=True)
    elif not opts["output"]:
        raise click.UsageError("--output DIR is required (a new folder for the trained model).")
    else:
        config = None  # built once the pairs are counted: the defaults depend on how many there are
    project = None
    if opts["project_path"]:
        from dpo_engine.store.project import open_project

        # Under `accelerate launch` only the main process writes (and locks) the project.
        project = open_project(opts["project_path"], read_only=not _is_main())
    try:
        _run(config, opts, project)
    finally:
        if project is not None:
            project.close()


def _is_main() -> bool:
    from dpo_engine.train.distributed import current

    return current().is_main


def _run(config: TrainConfig | None, opts: dict, project) -> None:
    from dpo_engine.train.loop import train

    if config is not None:  # a resume loads the pairs as its run did
        weight = bool(config.extra.get("weight_rankings"))
    else:
        weight = opts["weight_rankings"]
        weight = SmallDataDefaults.weight_rankings if weight is None else weight
    pairs, held = _load_pairs(opts["data"], project, weight)
    if config is None:
        config = replace(_config(opts, len(pairs) + len(held or [])), extra={"weight_rankings": weight})
    flag = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, make_interrupt_handler(flag)) if in_main else None
    main_rank = _is_main()  # the other ranks train silently: no metrics file, no project writes
    recorder = Recorder(opts["metrics_out"], project, config) if main_rank else Recorder(None, None, config)
    try:
        summary = _drive(train(config, pairs, held, stop=flag, resume_from=opts["resume"]),
                         Progress(quiet=not main_rank), recorder)
    except DPOStudioError as exc:
        recorder.event(TrainSummary("failed", 0, 0, 0.0, None, str(exc)))  # the project shows why it never ran
        raise
    except KeyboardInterrupt:
        recorder.event(TrainSummary("failed", 0, 0, 0.0, None, "quit with a second Ctrl-C"))
        click.echo(f"\nQuit. The last checkpoint in {config.output_dir} (if any) is intact.", err=True)
        sys.exit(130)
    finally:
        recorder.close()
        if in_main:
            signal.signal(signal.SIGINT, previous)
    _report(summary)


def _report(summary: TrainSummary) -> None:
    rate = f", {summary.tokens_per_s:.0f} tokens/s" if summary.tokens_per_s else ""
    if not _is_main():
        sys.exit(1 if summary.status == "failed" else 0)
    if summary.status == "failed":
        click.echo(f"Error: {summary.reason}", err=True)
        if summary.checkpoint:
            click.echo(f"The last good checkpoint is {summary.checkpoint}.", err=True)
        sys.exit(1)
    verb = "Finished" if summary.status == "finished" else "Stopped"
    click.echo(f"{verb} at step {summary.step}/{summary.total_steps} in {_duration(summary.elapsed)}{rate}. "
               f"Model: {summary.checkpoint}", err=True)
    if summary.status == "stopped":
        click.echo(f"Continue with: dpo-engine train --resume {summary.checkpoint} and the same --data/--project.",
                   err=True)
