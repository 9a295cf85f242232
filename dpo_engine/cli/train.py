"""`dpo-engine train`: DPO-train a model on pairs from a file or a project, with a progress line.

Ctrl-C or SIGTERM asks the run to stop after the current step (it saves a checkpoint that
`--resume` continues, and the project records the run as stopped); a second one quits at
once, leaving the last checkpoint intact (the project records the run as stopped with it).
With `--project`, the run, its metrics and the checkpoint are recorded in the project.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from dataclasses import replace

import click

from dpo_engine.cli.base import DEVICE_HELP, dtype_option, friendly_errors
from dpo_engine.defaults import SmallDataDefaults, small_data_defaults
from dpo_engine.errors import DataError, TrainingError
from dpo_engine.train.config import LoraSettings, TrainConfig, field_kind, form_fields
from dpo_engine.train.events import EvalEvent, LogLine, PrecisionChosen, ReferenceProgress, StepEvent, TrainSummary

LORA_LR = 5e-5  # LoRA adapters start at zero and need a ~10x larger rate than full fine-tuning
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
    small = small_data_defaults(n_pairs).to_settings()
    if lora is not None:
        small["lr"] = LORA_LR
    form = {f.name: opts[f.name] if opts[f.name] is not None else small.get(f.name, f.default)
            for f in form_fields() if f.name != "weight_rankings"}  # weight_rankings: see _run
    return TrainConfig(
        output_dir=opts["output"], model=opts["model_ref"], reference=opts["reference"], **form, lora=lora,
        merge_lora=opts["merge_lora"], device=opts["device"] or "auto", dtype=(opts["dtype"] or "auto").lower(),
        base_bits=int(opts["base_bits"]) if opts["base_bits"] else None,
    )


def config_options(fn):
    """One click option per TrainConfig form field (`form_fields`): name, type, limits and help
    come from the dataclass, so a setting added there appears here and in the window. Settings
    the small-data defaults choose default to None (filled in by `_config`)."""
    small = set(SmallDataDefaults.__dataclass_fields__)
    for f in reversed(form_fields()):
        flag, kind, help_text = "--" + f.name.replace("_", "-"), field_kind(f), f.metadata["help"]
        default = None if f.name in small else f.default
        if f.name in small:
            help_text += " " + SMALL_DEFAULT + (f"; {LORA_LR} with --lora" if f.name == "lr" else "")
        if kind == "bool":
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=default, help=help_text)
        else:
            types = {"choice": click.Choice([str(c) for c in f.metadata.get("choices", ())]), "int": int,
                     "float": float}
            option = click.option(flag, f.name, type=types[kind], default=default, help=help_text,
                                  show_default=default is not None)
        fn = option(fn)
    return fn


class MetricsFile:
    """--metrics-out: every step, eval and the summary as JSON lines (the run itself is recorded
    in the project by `dpo_engine.train.driver.drive`)."""

    def __init__(self, path: str | None):
        self.file = open(path, "w", encoding="utf-8") if path else None

    def event(self, e) -> None:
        if self.file is None:
            return
        if isinstance(e, (StepEvent, EvalEvent)):
            kind = "step" if isinstance(e, StepEvent) else "eval"
            self.file.write(json.dumps({"type": kind, "step": e.step, **e.metrics}) + "\n")
            self.file.flush()
        elif isinstance(e, PrecisionChosen):
            self.file.write(json.dumps({"type": "precision", **e.record}) + "\n")
        elif isinstance(e, TrainSummary):
            self.file.write(json.dumps({"type": "summary", **e.__dict__}) + "\n")

    def close(self) -> None:
        if self.file:
            self.file.close()


def _load_pairs(data: str | None, project, weight_rankings: bool = False):
    if project is None:
        return read_data_file(data), None
    train, held = project.queries.run_pairs(weight_rankings)
    return train, held or None


def _present(events, progress: Progress, metrics: MetricsFile) -> TrainSummary:
    summary = None
    for e in events:
        metrics.event(e)
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
@config_options
@click.option("--lora", is_flag=True, help="Train LoRA adapters instead of every weight.")
@click.option("--lora-rank", type=int, default=LoraSettings.rank, show_default=True)
@click.option("--merge-lora", is_flag=True, help="Also save the model with the adapter merged in.")
@click.option("--base-bits", type=click.Choice(["4"]), default=None,
              help="4: keep LoRA's frozen base in 4-bit NF4 (bitsandbytes, the [gpu] extra; needs --lora): a "
                   "quarter of bf16's memory, slower steps. Unset: the base in the compute precision.")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue a stopped run exactly, with its own settings.")
@click.option("--metrics-out", type=click.Path(dir_okay=False), default=None, help="Write events as JSON lines.")
@click.option("--device", default=None, help=DEVICE_HELP)
@dtype_option
@friendly_errors
def train_cmd(**opts):
    """Train a model with DPO on preference pairs (--data FILE or --project DB)."""
    from dpo_engine.train.loop import load_run_config

    if bool(opts["data"]) == bool(opts["project_path"]):
        raise click.UsageError("Give exactly one of --data FILE or --project DB.")
    if opts["resume"]:
        from dpo_engine.atomic import find_checkpoint

        if find_checkpoint(opts["resume"]) is None:  # recovers one a kill left in .<name>.prev
            raise TrainingError(f"No complete checkpoint at {opts['resume']} to resume from: give the --output "
                                "folder of a stopped run.")
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
        from dpo_engine.store.opening import open_project

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
    from dpo_engine.train.driver import drive

    if config is not None:  # a resume loads the pairs as its run did
        weight = config.weight_rankings
    else:
        weight = opts["weight_rankings"]
        weight = SmallDataDefaults.weight_rankings if weight is None else weight
    pairs, held = _load_pairs(opts["data"], project, weight)
    if config is None:
        config = replace(_config(opts, len(pairs) + len(held or [])), weight_rankings=weight)
    flag = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    handler = make_interrupt_handler(flag)  # Ctrl-C and SIGTERM (a logout, `kill`) alike: save, then end
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    main_rank = _is_main()  # the other ranks train silently: no metrics file, no project writes
    metrics = MetricsFile(opts["metrics_out"] if main_rank else None)
    record_in = project.path if project is not None and main_rank else None
    events = drive(config, project=record_in, pairs=pairs, eval_pairs=held, stop=flag, resume_from=opts["resume"])
    try:
        summary = _present(events, Progress(quiet=not main_rank), metrics)
    except KeyboardInterrupt:
        _quit(events, config.output_dir)
        sys.exit(130)
    finally:
        metrics.close()
        for sig, old_handler in previous.items():
            signal.signal(sig, old_handler)
    _report(summary)


def _quit(events, output_dir: str) -> None:
    """A second Ctrl-C or SIGTERM: end the driver now so that it records the run `stopped` with
    its last complete checkpoint (the interrupt may have landed here, between two events, and
    not inside the driver), then say where that checkpoint is."""
    from dpo_engine.atomic import find_checkpoint

    with contextlib.suppress(KeyboardInterrupt, StopIteration):
        events.throw(KeyboardInterrupt())  # raised at once when the driver already ended by it
    found = find_checkpoint(output_dir)
    if found is None:
        click.echo(f"\nQuit. No checkpoint was written to {output_dir}.", err=True)
    else:
        click.echo(f"\nQuit. The last checkpoint, {found}, is intact; continue with: dpo-engine train "
                   f"--resume {found} and the same --data/--project.", err=True)


def _report(summary: TrainSummary) -> None:
    rate = f", {summary.tokens_per_s:.0f} tokens/s" if summary.tokens_per_s else ""
    if not _is_main():
        sys.exit(1 if summary.status == "failed" else 0)
    if summary.status == "failed":
        click.echo(f"Error: {summary.reason}", err=True)
        if summary.checkpoint:
            click.echo(f"The last good checkpoint is {summary.checkpoint}.", err=True)
        sys.exit(1)
    if summary.checkpoint is None:  # stopped during the reference pass of a new run: nothing trained yet
        click.echo(f"Stopped before the first step ({summary.reason}). Run the same command again to continue.",
                   err=True)
        return
    verb = "Finished" if summary.status == "finished" else "Stopped"
    click.echo(f"{verb} at step {summary.step}/{summary.total_steps} in {_duration(summary.elapsed)}{rate}. "
               f"Model: {summary.checkpoint}", err=True)
    if summary.status == "stopped":
        click.echo(f"Continue with: dpo-engine train --resume {summary.checkpoint} and the same --data/--project.",
                   err=True)
