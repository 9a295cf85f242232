"""The Label page's logic, without widgets: where prompts come from, the prefetch queue of
sampled pairs, verdicts, undo and progress. The view only shows what this emits.

A pair is sampled on the torch worker (two answers to one prompt in one batch, streamed
token by token). While the person reads the current pair the next ones are already being
sampled, so a verdict shows the next pair at once when it is ready. Every verdict is
committed to the project file before the next pair shows.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

from app.context import AppContext
from dpo_engine.generate import GenerationResult, GenerationSettings, TokenEvent, stream_generate
from dpo_engine.pairs import PreferencePair
from dpo_engine.starter import starter_prompts

VERDICTS = ("left", "right", "tie", "both_bad", "skip")
ENOUGH_PAIRS = 60  # issue 10's measurement: fewer pairs change this model too little to see
MAX_RESAMPLES = 3  # two identical samples are sampled again, at most this often


@dataclass
class PendingPair:
    """One prompt and its two answers, possibly still being sampled."""

    prompt_id: int
    prompt: str | list
    prompt_text: str
    models: tuple[str, str]  # the model refs that produce left and right
    settings: GenerationSettings
    texts: list[str] = field(default_factory=lambda: ["", ""])
    tokens: list[int] = field(default_factory=lambda: [0, 0])
    done: bool = False
    error: str = ""
    response_ids: tuple[int, int] | None = None
    resamples: int = 0
    jobs: list = field(default_factory=list)


@dataclass
class Verdict:
    comparison_id: int
    pair: PendingPair
    verdict: str


class LabelController(QObject):
    """Signals:
        pairShown(PendingPair): a new current pair (texts may still be streaming).
        textUpdated(side, text, tokens): streamed text of the current pair's side 0/1.
        pairReady(): the current pair is complete and can be judged.
        progressChanged(dict): counters for the progress panel.
        message(str): a notice for the person (errors included); labeling goes on.
    """

    pairShown = Signal(object)
    textUpdated = Signal(int, str, int)
    pairReady = Signal()
    progressChanged = Signal(dict)
    message = Signal(str)

    def __init__(self, ctx: AppContext, prefetch: int = 2, seed: int | None = None):
        super().__init__()
        self.ctx = ctx
        self.prefetch = prefetch  # pairs sampled ahead; 2 hides one pair's sampling time on a CPU
        self.settings = GenerationSettings(max_new_tokens=128, temperature=0.9, top_p=0.95)
        self.second_model: str | None = None  # when set, one answer from each of two models
        self.rng = random.Random(seed)
        self.current: PendingPair | None = None
        self.queue: deque[PendingPair] = deque()
        self.history: list[Verdict] = []
        self.typed: deque[str] = deque()
        self.session_count = 0
        self.session_start = time.monotonic()
        self._starters = None
        self._used_prompt_ids: set[int] = set()
        ctx.activeModelChanged.connect(self._on_ctx_activeModelChanged)

    # ------------------------------------------------------------------ prompts
    def add_typed_prompt(self, text: str) -> None:
        """A prompt typed by the person goes first in line."""
        text = text.strip()
        if text:
            self.typed.append(text)
            self._drop_queued()
            self.fill()

    def _next_prompt(self) -> tuple[int, str | list, str] | None:
        project = self.ctx.project
        if self.typed:
            text = self.typed.popleft()
            return project.add_prompt(text, source="typed"), text, text
        for pid, prompt in project.prompts(split=None, unlabeled_first=True):
            if pid not in self._used_prompt_ids:
                if isinstance(prompt, str):
                    return pid, prompt, prompt
                messages = [{"role": r, "content": c} for r, c in prompt]
                return pid, messages, PreferencePair(prompt, "", "").prompt_text
        if self._starters is None:
            self._starters = starter_prompts()
            self.rng.shuffle(self._starters)
        while self._starters:
            text = self._starters.pop()
            pid = project.add_prompt(text, source="starter")
            if pid not in self._used_prompt_ids:
                return pid, text, text
        return None

    # ------------------------------------------------------------------ sampling
    def start(self) -> None:
        self.fill()
        self._emit_progress()

    def fill(self) -> None:
        """Keep one current pair and `prefetch` more queued or being sampled."""
        while len(self.queue) + (self.current is not None) < 1 + self.prefetch:
            nxt = self._next_prompt()
            if nxt is None:
                if self.current is None and not self.queue:
                    self.message.emit("No prompts left: import prompts or type one above.")
                return
            pid, prompt, text = nxt
            self._used_prompt_ids.add(pid)
            models = (self.ctx.model_ref, self.second_model or self.ctx.model_ref)
            if self.rng.random() < 0.5:  # which model's answer shows left is random and recorded
                models = models[::-1]
            pair = PendingPair(pid, prompt, text, models, self.settings)
            self._sample(pair)
            if self.current is None:
                self._show(pair)
            else:
                self.queue.append(pair)

    def _sample(self, pair: PendingPair) -> None:
        pair.texts, pair.tokens, pair.done, pair.error = ["", ""], [0, 0], False, ""
        settings = pair.settings
        if settings.seed is None:
            settings = GenerationSettings(settings.max_new_tokens, settings.temperature, settings.top_p,
                                          self.rng.randrange(2**31))
        if pair.models[0] == pair.models[1]:
            specs = [(pair.models[0], 2, (0, 1))]  # both answers in one batch
        else:
            specs = [(pair.models[0], 1, (0,)), (pair.models[1], 1, (1,))]
        pair.jobs = []
        remaining = [len(specs)]
        for ref, n, sides in specs:
            def fn(loaded, n=n, sides=sides):
                return (yield from self._stream(loaded, pair.prompt, n, settings, sides))
            job = self.ctx.submit_with_model("sample-pair", ref, fn)
            # a cancelled job's events may still be queued: only the pair's current jobs count
            job.yielded.connect(lambda ev, p=pair, j=job: j in p.jobs and self._on_job_token(p, ev))
            job.returned.connect(lambda res, p=pair, j=job: j in p.jobs and self._on_job_returned(p, res, remaining))
            job.failed.connect(lambda msg, p=pair, j=job: j in p.jobs and self._on_job_failed(p, msg))
            pair.jobs.append(job)

    @staticmethod
    def _stream(loaded, prompt, n, settings, sides):
        """Engine stream, with each event re-labelled by the side it fills."""
        stream = stream_generate(loaded.model, loaded.tokenizer, prompt, n, settings)
        while True:
            try:
                ev = next(stream)
            except StopIteration as stop:
                res: GenerationResult = stop.value
                break
            yield TokenEvent(sides[ev.index], ev.delta, ev.tokens)
        return {sides[i]: (res.texts[i], res.token_counts[i], loaded.resolved.ref) for i in range(n)}

    def _on_job_token(self, pair: PendingPair, ev: TokenEvent) -> None:
        pair.texts[ev.index] += ev.delta
        pair.tokens[ev.index] = ev.tokens
        if pair is self.current:
            self.textUpdated.emit(ev.index, pair.texts[ev.index], ev.tokens)

    def _on_job_returned(self, pair: PendingPair, result: dict, remaining: list) -> None:
        for side, (text, count, _ref) in result.items():
            pair.texts[side], pair.tokens[side] = text, count
        remaining[0] -= 1
        if remaining[0] > 0:
            return
        a, b = pair.texts
        if (a.strip() == b.strip() or not a.strip() or not b.strip()) and pair.resamples < MAX_RESAMPLES:
            pair.resamples += 1  # identical or empty answers teach nothing: sample again
            self._sample(pair)
            if pair is self.current:
                self.pairShown.emit(pair)
            return
        project = self.ctx.project
        pair.response_ids = tuple(
            project.add_response(pair.prompt_id, pair.texts[s], model=pair.models[s],
                                 settings=_settings_dict(pair.settings))
            for s in (0, 1)
        )
        pair.done = True
        if pair is self.current:
            for s in (0, 1):
                self.textUpdated.emit(s, pair.texts[s], pair.tokens[s])
            self.pairReady.emit()

    def _on_job_failed(self, pair: PendingPair, msg: str) -> None:
        pair.error = msg
        self.message.emit(f"Sampling failed: {msg.splitlines()[0]} — press R to try again.")

    # ------------------------------------------------------------------ showing
    def _show(self, pair: PendingPair | None) -> None:
        self.current = pair
        if pair is not None:
            self.pairShown.emit(pair)
            if pair.done:
                self.pairReady.emit()

    def _advance(self) -> None:
        self._show(self.queue.popleft() if self.queue else None)
        self.fill()

    def _drop_queued(self) -> None:
        for pair in self.queue:
            for job in pair.jobs:
                job.cancel()
            self._used_prompt_ids.discard(pair.prompt_id)
        self.queue.clear()

    # ------------------------------------------------------------------ actions
    def judge(self, verdict: str) -> bool:
        """Record a verdict on the current pair (committed before the next pair shows)."""
        if verdict not in VERDICTS:
            raise ValueError(verdict)
        pair = self.current
        if pair is None or not pair.done:
            if verdict == "skip" and pair is not None:
                for job in pair.jobs:
                    job.cancel()
                self._advance()
                return True
            self.message.emit("The answers are still being written; judge them when they are complete.")
            return False
        cid = self.ctx.project.record_comparison(pair.prompt_id, pair.response_ids[0], pair.response_ids[1], verdict)
        self.history.append(Verdict(cid, pair, verdict))
        self.session_count += 1
        self.ctx.comparisonsChanged.emit()
        self._advance()
        self._emit_progress()
        return True

    def write_better(self, text: str, worse_side: int) -> bool:
        """The person's own answer becomes the chosen side against the worse sample."""
        pair = self.current
        if pair is None or not pair.done or not text.strip():
            return False
        project = self.ctx.project
        own = project.add_response(pair.prompt_id, text.strip(), model="human", settings=None)
        worse = pair.response_ids[worse_side]
        cid = project.record_comparison(pair.prompt_id, own, worse, "left", note="written by the person")
        self.history.append(Verdict(cid, pair, "edit"))
        self.session_count += 1
        self.ctx.comparisonsChanged.emit()
        self._advance()
        self._emit_progress()
        return True

    def undo(self) -> bool:
        """Remove exactly the last verdict and show its pair again."""
        if not self.history:
            return False
        last = self.history.pop()
        self.ctx.project.delete_comparison(last.comparison_id)
        self.session_count -= 1
        if self.current is not None:
            self.queue.appendleft(self.current)
        self._show(last.pair)
        self.ctx.comparisonsChanged.emit()
        self._emit_progress()
        return True

    def regenerate(self) -> None:
        pair = self.current
        if pair is None:
            return
        for job in pair.jobs:
            job.cancel()
        pair.resamples = 0
        self._sample(pair)
        self.pairShown.emit(pair)

    def _on_ctx_activeModelChanged(self, _ref: str) -> None:
        self._drop_queued()  # queued pairs came from the old model
        self.fill()

    # ------------------------------------------------------------------ progress
    def progress(self) -> dict:
        counts = self.ctx.project.counts()
        minutes = max((time.monotonic() - self.session_start) / 60, 1e-9)
        usable = counts["train_pairs"] + counts["eval_pairs"]
        return {
            "session": self.session_count,
            "total": counts["comparisons"],
            "usable": usable,
            "per_minute": self.session_count / minutes if self.session_count else 0.0,
            "enough": usable >= ENOUGH_PAIRS,
            "needed": ENOUGH_PAIRS,
        }

    def _emit_progress(self) -> None:
        self.progressChanged.emit(self.progress())


def _settings_dict(s: GenerationSettings) -> dict:
    return {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p}
