"""The Label page's sample-ahead queue: the prompts waiting behind the one on screen, their
answers sampled in batches on the torch worker while the person reads, and the pace that
sizes it. The Label controller (`label_controller.LabelController`) holds one `LabelQueue`
(`controller.queue`), takes the next pair from it after each verdict and relays what it
reports to the page; it decides verdicts, the queue decides what is sampled when.

While the person reads the current prompt the next ones are already being sampled, all
their answers in one batch (on a CPU, decoding 4 pairs costs about what 1 does), so a
verdict shows the next prompt at once when it is ready. How many are queued follows the
measured time of a batch and of the person's verdicts (`pace.Pace`): a slow CPU or a quick
person gets a longer queue. A pair's answers are stored in the project as soon as they are
written, before it can be judged; two identical answers are sampled again.

`PendingPair` (a prompt and its answers being written) lives here: the controller and the
ranking (`label_ranking`) both hold pairs, and both import it from here.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.controllers.pace import MAX_ROWS, Pace, kv_rows
from app.controllers.rounds import LabelPrompts, Round, RoundHost, sample_rounds
from app.plumbing.context import saves
from dpo_engine.catalog.entry import format_parameters
from dpo_engine.catalog.fit import ModelShape, memory_budget
from dpo_engine.catalog.readers import loads_json, shape_from_config
from dpo_engine.catalog.sources import inspect_path
from dpo_engine.generate import GenerationSettings
from dpo_engine.models import DEFAULT_MODEL_REF, default_model_dir

MAX_RESAMPLES = 3  # two identical samples are sampled again, at most this often


@dataclass
class PendingPair(Round):
    """One prompt and its answers (two, or k to rank), possibly still being sampled;
    `refs[side]` is the model that writes each answer (left, right for a pair)."""

    done: bool = False  # every answer written and stored: it can be judged
    response_ids: tuple[int, ...] | None = None
    resamples: int = 0

    @property
    def ranking(self) -> bool:
        return self.n > 2


class LabelQueue(QObject):
    """The pairs sampled ahead of the one on screen (`pairs`, in showing order).

    Signals:
        token(PendingPair, int): streamed text of one answer (its side).
        resampling(PendingPair): its answers were identical or empty: sampled again.
        written(PendingPair): every answer written and stored (`pair.done`).
        failed(str): sampling failed; the pairs it was writing stay unwritten.
        message(str): a notice for the person (no prompts left).
    """

    token = Signal(object, int)
    resampling = Signal(object)
    written = Signal(object)
    failed = Signal(str)
    message = Signal(str)

    def __init__(self, ctx: RoundHost, rng: random.Random, prefetch: int | None = None,
                 pace_memory: Path | None = None):
        super().__init__()
        self.ctx = ctx
        self.rng = rng
        # pairs sampled ahead (a ranking of k counts as k/2 pairs: as many answers); None: as
        # many as the measured pace of sampling and of the person calls for (`pace.Pace`),
        # remembered between sessions in `pace_memory` (the window passes `pace.memory_file()`)
        self.prefetch = prefetch
        self.pace = Pace(pace_memory)
        self.paused = False  # the page is not in use: no new sampling until `resume`
        self.settings = GenerationSettings(max_new_tokens=128, temperature=0.9, top_p=0.95)
        self.second_model: str | None = None  # when set, one answer from each of two models (pairwise)
        self.answers = 2  # answers per prompt: 2 a pair, k a ranking of k
        self.prompts = LabelPrompts(ctx.project, rng)
        self.pairs: deque[PendingPair] = deque()
        self._batch: tuple[float, list[PendingPair]] | None = None  # the top-up being written: (start, pairs)
        self._shapes: dict[str, ModelShape] = {}  # by model ref, read from its config once
        ctx.modelStateChanged.connect(self._on_ctx_modelStateChanged)

    # ------------------------------------------------------------------ what is sampled
    def add_typed(self, text: str) -> bool:
        """A prompt typed by the person goes first in line (the queued ones are dropped)."""
        if not self.prompts.add_typed(text):
            return False
        self.drop()
        return True

    def drop(self) -> None:
        """Forget the queued pairs (their prompts may come again)."""
        for pair in self.pairs:
            self.release(pair)
        self.pairs.clear()

    def release(self, pair: PendingPair) -> None:
        """Stop sampling `pair`; its prompt may come again."""
        pair.cancel()
        self.prompts.release(pair.prompt_id)

    # ------------------------------------------------------------------ filling
    @saves
    def fill(self, on_screen: bool) -> PendingPair | None:
        """Keep `ahead()` prompts queued or being sampled behind the one on screen; returns
        the pair to show now when nothing is on screen or queued (its answers streaming).

        A pair needed now (nothing to show) is sampled with the first of the queue in one
        batch (`Pace.batch`; alone under a fixed `prefetch`). The queue is topped up a batch
        at a time, once the pairs queued before are written, and only when at least half of
        it is free or fewer than half are ready: each verdict frees one place, and a batch
        costs about the same whatever its size, so places filled one or two at a time would
        leave the sampler behind the person."""
        if self.paused:
            return None  # `resume` fills
        self.pace.use(self._sampler(), self._task())
        self._cap_by_memory()  # before anything asks the pace how far ahead to sample
        first = None
        if not on_screen and not self.pairs:
            first = self._start()
            if first is None:
                return None
            on_screen = True
        if any(not p.done and not p.error for p in self.pairs):
            return first  # a batch is being written: top up when it is
        self._measure()
        ahead = self.ahead()
        free = ahead - len(self.pairs) + (not on_screen)
        half = (ahead + 1) // 2
        if free < half and len(self.pairs) >= half:
            return first  # enough ready to read meanwhile: wait for a bigger batch
        self._submit(self._draw(free if self.prefetch is not None else min(free, self._batch_size())))
        return first

    def _start(self) -> PendingPair | None:
        """Sample the pair to show now with the first of the queue in one batch, which the
        person reads while the next is written; None when the prompts ran out (the person is
        told). (Sampling the shown pair alone first, then the queue behind it, made the first
        verdict wait for the whole queue's batch: 11.6 verdicts/min, p95 wait 10 s at a 4 s
        think on an AMX Xeon; decoding 8 answers costs little more than 2 on a CPU.)"""
        n = self._batch_size() if self.prefetch is None else 1
        first = self._draw(n)
        if not first:
            self.message.emit("No prompts left: import prompts or type one above.")
            return None
        self.pairs.extend(first[1:])
        if len(first) > 1:
            self._batch = (time.monotonic(), first)
        self.sample(*first)
        return first[0]

    def _measure(self) -> None:
        """The last batch is written: how long it took sizes the queue."""
        if self._batch is None:
            return
        started, pairs = self._batch
        self._batch = None
        if all(p.done for p in pairs):  # not one cut short by a failure or a skip
            self.pace.batch_written(time.monotonic() - started, sum(p.n for p in pairs))

    def _submit(self, batch: list[PendingPair]) -> None:
        self.pairs.extend(batch)
        if batch:
            self._batch = (time.monotonic(), batch)
            self.sample(*batch)

    def _draw(self, n: int) -> list[PendingPair]:
        """Up to `n` new pairs (fewer when the prompts run out)."""
        batch = []
        # starter prompts are stored as they are drawn: a batch's in one commit, on the GUI
        # thread, where one commit per prompt stalled the window ~1 s for a batch of 22
        with self.ctx.project.transaction():
            for _ in range(n):
                prompt = self.prompts.next()
                if prompt is None:
                    break
                batch.append(PendingPair(prompt.id, prompt.value, prompt.text, self._refs(), self.settings))
        return batch

    def _refs(self) -> tuple[str, ...]:
        if self.answers > 2:
            return (self.ctx.model_ref,) * self.answers  # k samples of the active model: on-policy pairs
        refs = (self.ctx.model_ref, self.second_model or self.ctx.model_ref)
        return refs[::-1] if self.rng.random() < 0.5 else refs  # which model shows left is random and recorded

    # ------------------------------------------------------------------ pace
    def _models(self) -> list[str]:
        """The models writing the answers of the prompts drawn now."""
        second = self.second_model if self.answers == 2 else None
        return [self.ctx.model_ref] + ([second] if second else [])

    def _shape(self, ref: str) -> ModelShape | None:
        if ref not in self._shapes:
            shape = model_shape(ref)
            if shape is None:
                return None  # not cached: the default model is read again once it is prepared
            self._shapes[ref] = shape
        return self._shapes[ref]

    def _sampler(self) -> str:
        """What a batch's time depends on, the key of its remembered pace: the models' size
        (a checkpoint shares its base's pace; a model whose config is unreadable, its name),
        the device and precision, and the answers' length."""
        device = getattr(self.ctx, "device", None)
        where = device.describe() if hasattr(device, "describe") else "default device"
        sizes = [f"{format_parameters(shape.parameters)} model" if (shape := self._shape(ref)) else ref
                 for ref in self._models()]
        return f"{' + '.join(sizes)} on {where}, {self.settings.max_new_tokens} new tokens"

    def _batch_size(self) -> int:
        """Prompts in the next batch (`Pace.batch`), within the memory for their keys/values."""
        return self.pace.batch(self.answers)

    def _cap_by_memory(self) -> None:
        """The pace's most answers a batch (`Pace.max_rows`): what the keys/values of the models
        sampled now fit in the free memory."""
        device = getattr(self.ctx, "device", None)
        shapes = [self._shape(ref) for ref in self._models()]
        self.pace.max_rows = MAX_ROWS  # a shape or device unknown: only the queue's own ceiling
        if hasattr(device, "dtype") and all(shapes):
            value_bytes = 4 if device.dtype == "float32" else 2  # the keys/values in the sampling precision
            free = memory_budget(device.device)[0]
            self.pace.max_rows = min(kv_rows(s.layers, s.kv_dim or s.hidden, value_bytes,
                                             self.settings.max_new_tokens, free) for s in shapes)

    def _task(self) -> str:
        """What a verdict's time depends on, the key of the person's remembered pace."""
        return "pairwise" if self.answers == 2 else f"ranking of {self.answers}"

    def ahead(self) -> int:
        """Prompts to keep queued: `prefetch` pairs' worth of answers (a ranking of k writes k),
        or, by default, what the measured pace calls for."""
        if self.prefetch is None:
            return self.pace.ahead(self.answers)
        return self.prefetch * 2 // self.answers

    def _on_ctx_modelStateChanged(self, state: str, _detail: str) -> None:
        if state == "ready" and self._batch is not None:
            # the batch waited for its model to load: its time, which sizes the next ones,
            # starts now (a 1B model's load would otherwise count as seconds of sampling)
            self._batch = (time.monotonic(), self._batch[1])

    # ------------------------------------------------------------------ sampling
    def sample(self, *pairs: PendingPair) -> None:
        """Sample the pairs' answers (several pairs: in one batch per model); a pair sampled
        before is written again."""
        for pair in pairs:
            pair.done = False
        settings = pairs[0].settings
        if settings.seed is None:  # a fresh seed per sampling; the pair keeps its unseeded settings
            settings = replace(settings, seed=self.rng.randrange(2**31))
        sample_rounds(self.ctx, list(pairs), lambda pair, side: self.token.emit(pair, side), self._on_round_done,
                      self._on_round_failed, settings, name="sample-pair")

    @saves
    def _on_round_done(self, pair: PendingPair, _sides: tuple[int, ...]) -> None:
        if self._batch is not None and all(pair is not p for p in self._batch[1]):
            self._batch = (time.monotonic(), self._batch[1])  # the worker is free for the batch only now
        if not pair.sampled:
            return
        if _needs_resample(pair.texts) and pair.resamples < MAX_RESAMPLES:
            pair.resamples += 1  # identical or empty answers teach nothing: sample again
            self.sample(pair)
            self.resampling.emit(pair)
            return
        project = self.ctx.project
        with project.transaction():  # a pair's (or ranking's) answers: one commit, one sync to disk
            pair.response_ids = tuple(
                project.add_response(pair.prompt_id, pair.texts[s], model=pair.refs[s],
                                     settings=asdict(pair.settings), finished=pair.ended[s])
                for s in range(pair.n)
            )
        pair.done = True
        self.written.emit(pair)

    def _on_round_failed(self, _pair: PendingPair, msg: str) -> None:
        self.failed.emit(msg.splitlines()[0])


def model_shape(ref: str) -> ModelShape | None:
    """The shape of the model `ref` names, from its config.json or GGUF header (never its
    weights; the parameters estimated from the config); None when it cannot be read here (a
    hub id, the default model before it is prepared, an adapter)."""
    path = default_model_dir() if ref == DEFAULT_MODEL_REF else Path(ref).expanduser()
    try:
        if (path / "config.json").is_file():
            return shape_from_config(loads_json((path / "config.json").read_bytes(), "config.json"), None)[0]
        if path.is_file():
            entry = inspect_path(path)
            return entry.shape if entry.usable else None
    except (OSError, ValueError):
        return None
    return None


def _needs_resample(texts: list[str]) -> bool:
    """Two answers: identical or an empty one teach nothing. k answers: a ranking still
    teaches with an empty one (ranked last), but not with fewer than two different texts."""
    stripped = [t.strip() for t in texts]
    if len(texts) == 2:
        return stripped[0] == stripped[1] or not all(stripped)
    return len({t for t in stripped if t}) < 2
