"""How long a run will take here, said before it starts: measured on this machine's own runs.

A run's wall time has three parts, each measured when a run of the same model and settings
ran here before (kept as JSON in the user cache, beside the labeling pace and the precision
measurement):

    fixed        loading the model(s), encoding the pairs, the first   seconds, as measured
                 step's warm-up, the final eval and save
    reference    scoring every pair once with the reference            seconds per 1,000 characters
    loop         the optimizer steps (and evals, checkpoints between)  seconds per 1,000 characters trained

Characters of prompt + chosen + rejected stand in for tokens: they are known from the
project without a tokenizer, and one tokenizer's characters per token hardly changes
between runs of one person's project. The key holds everything that changes the speed by
more than the project's own variation: the base model, device, precision, LoRA and its
base's bits, gradient checkpointing, and the micro-batch (tokens/s grows with it: 0.64 of
the bare model's at 1 pair, 0.97 at 8; bench/README.md, "bf16 and the micro-batch").

    estimate = fixed + reference_rate * all pairs' kchars + loop_rate * kchars trained

The loop's rate is timed from the first step's end to the last step's, so what a run does once
(the first step's kernel warm-up, the final held-out eval, saving the model) stays fixed instead
of being spread over the steps: timed over the whole loop, a 16-pair run's estimate for a run of
32 pairs x 2 epochs was 1.40x that run's real time on the idle EPYC (bench/README.md).

Nothing is guessed: before a first run of a model with these settings there is no estimate,
and the Train page says the first run measures it. `bench/train_estimate.py` checks the
estimate against the next run's real time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from dpo_engine.pairs import PreferencePair
from dpo_engine.paths import cache_dir, write_cache_json
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.data import pair_groups, split_eval, steps_per_epoch
from dpo_engine.train.events import ReferenceProgress, StepEvent, TrainSummary

RECORD_VERSION = 2  # bump when what is measured changes, so old records are not used
MIN_STEPS = 3  # the rate is timed between steps after the first: two intervals at least


@dataclass(frozen=True)
class RunWork:
    """What a run will do, in the units its speed is measured in."""

    steps: int  # optimizer steps
    trained_kchars: float  # characters trained over all steps, / 1000
    scored_kchars: float  # characters the reference pass scores (train + held-out), / 1000


@dataclass(frozen=True)
class RunSpeed:
    """One run's measured rates (the latest run of its key is kept)."""

    setup_s: float  # what does not grow with the pairs: loading, encoding, warm-up, the final eval and save
    score_s_per_kchar: float | None  # None when the run read its reference from the cache
    loop_s_per_kchar: float  # steps, evals and checkpoints, per 1,000 characters trained
    measured: str  # ISO date of the run


def pair_chars(pair: PreferencePair) -> int:
    prompt = pair.prompt if isinstance(pair.prompt, str) else "".join(c for _, c in pair.prompt)
    return len(prompt) + len(pair.chosen) + len(pair.rejected)


def run_work(config: TrainConfig, pairs: Sequence[PreferencePair],
             eval_pairs: Sequence[PreferencePair] | None = None) -> RunWork:
    """The steps and characters of a run of `config` on these pairs, as the trainer counts them
    (`config.eval_fraction` held out when no eval pairs are given; all epochs or max_steps)."""
    if eval_pairs:
        n_train = len(pairs)
    else:  # held out as the trainer holds out (rankings kept whole)
        groups = pair_groups(pairs) if config.group_answers else None
        n_train = len(split_eval(len(pairs), config.eval_fraction, config.seed, groups)[0])
    per_epoch = steps_per_epoch(max(1, n_train), config.batch_size, config.grad_accum)
    steps = config.max_steps or config.epochs * per_epoch
    chars = sum(map(pair_chars, pairs))
    pairs_per_step = min(n_train, config.batch_size * config.grad_accum)
    scored = chars + sum(map(pair_chars, eval_pairs or ()))
    return RunWork(steps, steps * pairs_per_step * chars / max(1, len(pairs)) / 1000, scored / 1000)


def speed_key(config: TrainConfig) -> str:
    """What the speed depends on (the module docstring): the base (a round's reference), how the run
    runs, and the micro-batch."""
    base = config.reference or config.model
    lora = f"lora{config.lora.rank}" if config.lora else "full"
    return (f"{base}|{config.device}|{config.dtype}|{lora}|bits{config.base_bits or 0}|"
            f"ckpt{int(config.gradient_checkpointing)}|b{config.batch_size}|len{config.max_length}")


def speed_file() -> Path:
    return cache_dir() / "train-speed.json"


def _records(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) and data.get("version") == RECORD_VERSION else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: no estimate until the next run measures one


def read_speed(key: str, path: Path | None = None) -> RunSpeed | None:
    record = _records(path or speed_file()).get("runs", {}).get(key)
    try:
        return RunSpeed(**record) if record else None
    except TypeError:
        return None


def write_speed(key: str, speed: RunSpeed, path: Path | None = None) -> None:
    """Keep `speed` for `key`; a reference rate this run did not measure (cached) keeps the last one."""
    path = path or speed_file()
    data = _records(path)
    runs = data.get("runs", {})
    old = read_speed(key, path)
    if speed.score_s_per_kchar is None and old is not None:
        speed = RunSpeed(speed.setup_s, old.score_s_per_kchar, speed.loop_s_per_kchar, speed.measured)
    runs[key] = asdict(speed)
    write_cache_json(path, {"version": RECORD_VERSION, "runs": runs})


def estimate_seconds(work: RunWork, speed: RunSpeed) -> float:
    """The run's wall time from a measured speed (a reference pass of unknown rate counts as free:
    a run whose reference was always cached)."""
    score = (speed.score_s_per_kchar or 0.0) * work.scored_kchars
    return speed.setup_s + score + speed.loop_s_per_kchar * work.trained_kchars


class RunClock:
    """Times a run's phases from its events (`observe` each one, in order) and gives its speed."""

    def __init__(self, work: RunWork):
        self.work = work
        self.start = time.perf_counter()
        self.scored: list[tuple[float, int, int]] = []  # (time, pairs done, total) of each reference batch
        self.cached = False
        self.steps: list[tuple[float, int]] = []  # (time, step) of each step's end, this session
        self.end = None

    def observe(self, event) -> None:
        now = time.perf_counter()
        if isinstance(event, ReferenceProgress):
            self.cached = self.cached or event.cached
            self.scored.append((now, event.done, event.total))
        elif isinstance(event, StepEvent):
            self.steps.append((now, event.step))
        elif isinstance(event, TrainSummary):
            self.end = now

    def _reference_seconds(self) -> float | None:
        """The whole reference pass's time, from the pace of its batches after the first (the first
        one's start is not seen: the model loads just before it); None when it was cached or ran
        as one batch."""
        if self.cached or len(self.scored) < 2:
            return None
        (t0, d0, _), (t1, d1, total) = self.scored[0], self.scored[-1]
        return (t1 - t0) / (d1 - d0) * total if d1 > d0 else None

    def speed(self) -> RunSpeed | None:
        """The run's rates, or None when it trained too few steps to say."""
        if self.end is None or len(self.steps) < MIN_STEPS or self.work.steps < 1:
            return None
        (first_t, first_step), (last_t, last_step) = self.steps[0], self.steps[-1]
        per_step = self.work.trained_kchars / self.work.steps  # kchars a step trains
        rate = (last_t - first_t) / (per_step * (last_step - first_step))
        reference = self._reference_seconds()
        score = reference / self.work.scored_kchars if reference and self.work.scored_kchars > 0 else None
        # everything else is fixed: before the first step (less the reference pass), the first step's
        # time beyond an ordinary step, and after the last step
        fixed = (first_t - self.start) - (reference or 0.0) - rate * per_step + (self.end - last_t)
        day = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return RunSpeed(round(max(0.0, fixed), 3), None if score is None else round(score, 5), round(rate, 5), day)
