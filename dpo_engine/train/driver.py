"""One run driver for the window and the command line: `drive()` wraps the trainer's
`train()` with the run's bookkeeping in the project file, and yields the same events.

    RunStarted(run_id, config)      first: the run's row exists (or was re-opened for a resume)
    ... the trainer's events ...    each step's and eval's metrics are recorded before it is yielded
    TrainSummary                    last: the run is finished/stopped/failed, its checkpoint registered

`dpo-engine train --project` and the Train page both call it and only *present* the events
(a progress line, plots), so a run is recorded the same way whoever started it. The
project is opened here, in the thread that iterates (SQLite connections belong to one
thread): the window's torch worker or the CLI's main thread.

A run that is quit (a second Ctrl-C or SIGTERM, the generator closed) is recorded `stopped`
with its last complete checkpoint, resumable; one that ends by an error (`DPOStudioError`,
a crash in the trainer) `failed` with the reason and that checkpoint, before the error
propagates; either is `failed` without a checkpoint when none was written. A kill -9 leaves
it `running`, and `RunRecords.reconcile_interrupted` settles it on the next open from the
checkpoint on disk.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from dpo_engine.errors import DPOStudioError, TrainingError
from dpo_engine.pairs import PreferencePair
from dpo_engine.store.opening import open_project
from dpo_engine.store.project import Project
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.duration import RunClock, run_work, speed_key, write_speed
from dpo_engine.train.events import EvalEvent, PrecisionChosen, StepEvent, TrainSummary
from dpo_engine.train.loop import StopFlag, train


@dataclass(frozen=True)
class RunStarted:
    """The first event of `drive()`: the project's run id (None without a project) and the
    config the run uses (its output folder settled)."""

    run_id: int | None
    config: TrainConfig


def project_pairs(project: Project, config: TrainConfig) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The project's (train, held-out) pairs as a run loads them (`config.weight_rankings`).
    When every labeled prompt fell in the held-out split, the run holds out from these instead."""
    train_pairs, held = project.queries.run_pairs(config.weight_rankings)
    if not train_pairs:
        return held, []
    return train_pairs, held


def _open_run(db: Project, config: TrainConfig, resume_from, output_for_run) -> tuple[int, TrainConfig]:
    """The run's row: the stopped run whose checkpoint is resumed (continued, same id), or a new one."""
    if resume_from is not None:
        where = str(Path(resume_from).absolute())
        run = next((r for r in reversed(db.queries.runs()) if r.checkpoint and
                    str(Path(r.checkpoint).absolute()) == where), None)
        if run is not None:
            db.runs.finish(run.id, "running", checkpoint=run.checkpoint)
            return run.id, config
    run_id = db.runs.create(config.to_dict())
    if output_for_run is not None:
        config = replace(config, output_dir=str(output_for_run(run_id)))
        db.runs.set_config(run_id, config.to_dict())
    return run_id, config


def _record(db: Project, run_id: int, config: TrainConfig, event) -> None:
    if isinstance(event, (StepEvent, EvalEvent)):
        db.runs.log_metrics(run_id, event.step, event.metrics)
    elif isinstance(event, PrecisionChosen):
        db.runs.annotate(run_id, precision=event.record)  # the run record names the dtype that ran, and why
    elif isinstance(event, TrainSummary):
        db.runs.finish(run_id, event.status, event.reason or None, event.checkpoint)
        if event.checkpoint:
            db.runs.add_model(event.checkpoint, "checkpoint", parent=config.model, run_id=run_id)


def drive(config: TrainConfig, *, project: str | Path | None = None,
          pairs: Sequence[PreferencePair] | None = None, eval_pairs: Sequence[PreferencePair] | None = None,
          stop: StopFlag = None, resume_from: str | Path | None = None,
          output_for_run: Callable[[int], str | Path] | None = None) -> Iterator:
    """Run `train()` and record it in `project`; yields RunStarted, then the trainer's events.

    Args:
        config: the run's settings (`output_dir` is replaced by `output_for_run(run_id)` if given).
        project: the project file to record the run in (and to read the pairs from when
            `pairs` is None); None records nothing (`dpo-engine train --data`, other ranks).
        pairs, eval_pairs: the data, when it does not come from the project.
        stop: set it to end the run at the next step with a checkpoint (status `stopped`).
        resume_from: a stopped run's checkpoint; its run row continues when the project has it.
        output_for_run: the output folder for a new run's id (the window: `<project>.runs/run-N`).
    """
    with ExitStack() as stack:
        db = stack.enter_context(open_project(project)) if project is not None else None
        if pairs is None:
            if db is None:
                raise TrainingError("No pairs to train on: give a project or a pairs file.")
            pairs, eval_pairs = project_pairs(db, config)
        run_id = None
        if db is not None:
            run_id, config = _open_run(db, config, resume_from, output_for_run)
        since = time.time()  # a checkpoint in the output folder written after this is the run's own
        ended = False  # the run's end is recorded (its TrainSummary): an interrupt after it changes nothing
        clock = RunClock(run_work(config, pairs, eval_pairs))  # how long such a run takes here, for the next
        try:
            yield RunStarted(run_id, config)  # inside: an interrupt here is recorded like one mid-run
            for event in train(config, pairs, eval_pairs or None, stop=stop, resume_from=resume_from):
                if db is not None:
                    _record(db, run_id, config, event)
                clock.observe(event)
                ended = isinstance(event, TrainSummary)
                speed = clock.speed() if ended and event.status != "failed" else None
                if speed is not None:
                    write_speed(speed_key(config), speed)
                yield event
        except BaseException as exc:  # a second Ctrl-C, a closed generator, an expected error or a bug
            if db is not None and not ended:
                _record_interrupted(db, run_id, config, since, exc)
            raise


def _record_interrupted(db: Project, run_id: int, config: TrainConfig, since: float, exc: BaseException) -> None:
    """The run ended without its summary: record why, keeping its last complete checkpoint (the
    one on disk, or the one a resumed run's row already names). Quitting (a second Ctrl-C or
    SIGTERM, the consumer closing the generator) leaves it `stopped` and resumable; an error,
    `failed` with that checkpoint linked; `failed` without one when none was written."""
    quit_now = isinstance(exc, (KeyboardInterrupt, GeneratorExit))
    db.runs.end_interrupted(run_id, _reason(exc), config.output_dir, since,
                            status="stopped" if quit_now else "failed")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DPOStudioError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "quit at once (a second Ctrl-C or SIGTERM)"
    if isinstance(exc, GeneratorExit):
        return "cancelled before it finished"
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
