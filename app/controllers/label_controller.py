"""The Label page's logic, without widgets: where prompts come from, the prefetch queue of
sampled answers, verdicts and rankings, undo and progress. The view only shows what this emits.

Two modes. Pairwise: two answers to one prompt, one verdict. Ranking: k answers (3-6) to
one prompt, ordered best first by the person (ties allowed); a ranking of k stores up to
k(k-1)/2 pairs as one group (`Project.record_ranking`), so one prompt's reading time
yields several pairs (40 pairs teach a small model nothing measurable: bench/README.md,
"Simulated user").

Prompts come from `rounds.LabelPrompts`; the answers are sampled on the torch worker by
`rounds.sample_rounds`, streamed token by token. While the person reads the current prompt
the next ones are already being sampled, all their answers in one batch (on a CPU, decoding
4 pairs costs about what 1 does), so a verdict shows the next prompt at once when it is
ready. How many are queued follows the measured time of a batch and of the person's
verdicts (`pace.Pace`): a slow CPU or a quick person gets a longer queue. Every verdict
or ranking is committed to the project file before the next prompt shows.

The ranking of the prompt on screen (places, ties, a dragged order, saving the group) is a
collaborator, `self.ranking` (`label_ranking.LabelRanking`). What a key does is looked up in
`keys` (one map per mode), so the page forwards keys and clicks and decides nothing. The view
receives frozen snapshots (`ShownPair`, `ShownAnswer`, `RankingState`, `LabelProgress`), never
this controller's working state.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.controllers import keys
from app.controllers.keys import KeyBinding
from app.controllers.label_ranking import LabelRanking
from app.controllers.pace import Pace
from app.controllers.rounds import LabelPrompts, Round, RoundHost, sample_rounds
from app.plumbing.context import saves
from dpo_engine.defaults import ENOUGH_PAIRS, data_estimate
from dpo_engine.generate import GenerationSettings
from dpo_engine.store.schema import VERDICTS

MODES = ("pairwise", "ranking")
K_RANGE = (3, keys.MAX_PLACES)  # below 3 a ranking is a pair; one place key per answer up to the most shown
DEFAULT_K = 4  # a 2x2 grid a person reads at once; up to 6 pairs per prompt instead of 1
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


@dataclass
class Verdict:
    comparison_id: int  # for a ranking: its group id
    pair: PendingPair
    verdict: str  # "ranking" for a ranking


@dataclass(frozen=True)
class ShownAnswer:
    """One answer as the page shows it."""

    side: int  # 0 left, 1 right; in a ranking the answer's index in shown order
    text: str  # untrusted model output: shown as plain text
    tokens: int
    writing: bool  # still being sampled
    cut_off: bool  # complete, but stopped at the token cap rather than ended by the model


@dataclass(frozen=True)
class ShownPair:
    """The prompt on screen and its answers (two, or k to rank)."""

    prompt_id: int
    prompt: str
    answers: tuple[ShownAnswer, ...]
    ready: bool  # every answer complete: it can be judged
    notice: str  # the line under the answers: "Writing…", or the keys that judge it

    @property
    def ranking(self) -> bool:
        return len(self.answers) > 2


@dataclass(frozen=True)
class LabelProgress:
    """Counters for the progress panel."""

    session: int  # verdicts this session
    total: int  # verdicts in the project
    usable: int  # training pairs they make (train and held out)
    per_minute: float  # this session's verdicts per minute
    enough: bool  # usable >= needed
    needed: int  # pairs for a measurable change (`defaults.ENOUGH_PAIRS`)
    estimate: str  # what to expect from training on them
    mode: str  # "pairwise" or "ranking"


class LabelController(QObject):
    """Signals:
        pairShown(ShownPair): a new current pair (texts may still be streaming).
        textUpdated(ShownAnswer): streamed text of one answer of the current pair.
        pairReady(ShownPair): the current pair is complete and can be judged.
        modeChanged(mode, k): pairwise or ranking of k answers.
        progressChanged(LabelProgress): counters for the progress panel.
        writeBetterAsked(ShownPair): the person asked to write a better answer to it.
        message(str): a notice for the person (errors included); labeling goes on.
    The ranking's places: `self.ranking.changed(RankingState)`.
    """

    pairShown = Signal(object)
    textUpdated = Signal(object)
    pairReady = Signal(object)
    modeChanged = Signal(str, int)
    progressChanged = Signal(object)
    writeBetterAsked = Signal(object)
    message = Signal(str)

    def __init__(self, ctx: RoundHost, prefetch: int | None = None, seed: int | None = None,
                 pace_memory: Path | None = None):
        super().__init__()
        self.ctx = ctx
        # pairs sampled ahead (a ranking of k counts as k/2 pairs: as many answers); None: as
        # many as the measured pace of sampling and of the person calls for (`pace.Pace`),
        # remembered between sessions in `pace_memory` (the window passes `pace.memory_file()`)
        self.prefetch = prefetch
        self.pace = Pace(pace_memory)
        self.paused = False  # the page is not in use: no new sampling until `resume`
        self._batch: tuple[float, list[PendingPair]] | None = None  # the top-up being written: (start, pairs)
        self._ready_at: float | None = None  # when the current prompt's answers were complete on screen
        self.settings = GenerationSettings(max_new_tokens=128, temperature=0.9, top_p=0.95)
        self.second_model: str | None = None  # when set, one answer from each of two models (pairwise)
        self.mode = "pairwise"
        self.k = DEFAULT_K  # answers per prompt in ranking mode
        self.ranking = LabelRanking(ctx)  # ranking mode: the places given to the current answers
        self.ranking.message.connect(self.message)
        self.ranking.saved.connect(lambda group, pair: self._recorded(group, pair, "ranking"))
        self._started = False  # sampling begins when the page is first shown
        self.rng = random.Random(seed)
        self.prompts = LabelPrompts(ctx.project, self.rng)
        self.current: PendingPair | None = None
        self.queue: deque[PendingPair] = deque()
        self.history: list[Verdict] = []
        self.session_count = 0
        self.session_start = time.monotonic()
        ctx.activeModelChanged.connect(self._on_ctx_activeModelChanged)

    # ------------------------------------------------------------------ prompts
    def add_typed_prompt(self, text: str) -> None:
        """A prompt typed by the person goes first in line."""
        if self.prompts.add_typed(text):
            self._drop_queued()
            self.fill()

    def set_generation(self, max_new_tokens: int, temperature: float, top_p: float,
                       second_model: str = "") -> None:
        """The sampling settings of the prompts drawn from now on; `second_model` (empty:
        none) writes one answer of each pair in pairwise mode."""
        self.settings = GenerationSettings(max_new_tokens, temperature, top_p)
        self.second_model = second_model.strip() or None

    # ------------------------------------------------------------------ sampling
    def start(self) -> None:
        self._started = True
        self.fill()
        self._emit_progress()

    def pause(self) -> None:
        """The person left the Label page: start no new sampling (a batch being written
        finishes). The worker is then free for the page they went to: after a run the new
        model refilled a grown queue (64 answers) here, and the Compare page's rounds waited
        behind it (bench/README.md, "the whole \"60 rankings → Train → Compare\" run by hand")."""
        self.paused = True

    def resume(self) -> None:
        """The Label page is shown: the first time, start; after `pause`, sample what is missing."""
        self.paused = False
        if not self._started:
            self.start()
        else:
            self.fill()

    @saves
    def fill(self) -> None:
        """Keep one current pair and `prefetch` more queued or being sampled.

        A pair needed now (nothing to show) is sampled with the first half of the queue in one
        batch (`Pace.first_batch`; alone under a fixed `prefetch`). The
        queue is topped up in one batch, once the pairs queued before are written, and only
        when at least half of it is free or fewer than half are ready: each verdict frees
        one place, and a batch costs about the same whatever its size, so places filled one
        or two at a time would leave the sampler behind the person."""
        if self.paused:
            return  # `resume` fills
        self.pace.use(self._sampler(), self._task())
        if self.current is None and not self.queue:
            answers = 2 if self.mode == "pairwise" else self.k
            first = self._draw(self.pace.first_batch(answers) if self.prefetch is None else 1)
            if not first:
                self.message.emit("No prompts left: import prompts or type one above.")
                return
            self.queue.extend(first[1:])
            if len(first) > 1:
                self._batch = (time.monotonic(), first)
            self._sample(*first)
            self._show(first[0])
        if any(not p.done and not p.error for p in self.queue):
            return  # a batch is being written: top up when it is
        if self._batch is not None:  # the last batch is written: how long it took sizes the queue
            started, pairs = self._batch
            self._batch = None
            if all(p.done for p in pairs):  # not one cut short by a failure or a skip
                self.pace.batch_written(time.monotonic() - started)
        ahead = self._ahead()
        free = 1 + ahead - len(self.queue) - (self.current is not None)
        half = (ahead + 1) // 2
        if free < half and len(self.queue) >= half:
            return  # enough ready to read meanwhile: wait for a bigger batch
        batch = self._draw(free)
        self.queue.extend(batch)
        if batch:
            self._batch = (time.monotonic(), batch)
            self._sample(*batch)

    def _draw(self, n: int) -> list[PendingPair]:
        """Up to `n` new pairs (fewer when the prompts run out)."""
        batch = []
        # starter prompts are stored as they are drawn: a batch's in one commit, on the GUI
        # thread, where one commit per prompt stalled the window ~1 s for a batch of 22
        with self.ctx.project.transaction():
            for _ in range(n):
                pair = self._new_pair()
                if pair is None:
                    break
                batch.append(pair)
        return batch

    def _sampler(self) -> str:
        """What a batch's time depends on, the key of its remembered pace."""
        device = getattr(self.ctx, "device", None)
        where = device.describe() if hasattr(device, "describe") else "default device"
        models = self.ctx.model_ref if self.mode == "ranking" or not self.second_model else \
            f"{self.ctx.model_ref} + {self.second_model}"
        return f"{models} on {where}, {self.settings.max_new_tokens} new tokens"

    def _task(self) -> str:
        """What a verdict's time depends on, the key of the person's remembered pace."""
        return "pairwise" if self.mode == "pairwise" else f"ranking of {self.k}"

    def _ahead(self) -> int:
        """Prompts to keep queued: `prefetch` pairs' worth of answers (a ranking of k writes k),
        or, by default, what the measured pace calls for."""
        answers = 2 if self.mode == "pairwise" else self.k
        if self.prefetch is None:
            return self.pace.ahead(answers)
        return self.prefetch * 2 // answers

    def _new_pair(self) -> PendingPair | None:
        prompt = self.prompts.next()
        if prompt is None:
            return None
        return PendingPair(prompt.id, prompt.value, prompt.text, self._refs(), self.settings)

    def _refs(self) -> tuple[str, ...]:
        if self.mode == "ranking":
            return (self.ctx.model_ref,) * self.k  # k samples of the active model: on-policy pairs
        refs = (self.ctx.model_ref, self.second_model or self.ctx.model_ref)
        return refs[::-1] if self.rng.random() < 0.5 else refs  # which model shows left is random and recorded

    def _sample(self, *pairs: PendingPair) -> None:
        """Sample the pairs' answers (several pairs: in one batch per model)."""
        for pair in pairs:
            pair.done = False
        settings = pairs[0].settings
        if settings.seed is None:  # a fresh seed per sampling; the pair keeps its unseeded settings
            settings = replace(settings, seed=self.rng.randrange(2**31))
        sample_rounds(self.ctx, list(pairs), self._on_round_token, self._on_round_done, self._on_round_failed,
                      settings, name="sample-pair")

    def _on_round_token(self, pair: PendingPair, side: int) -> None:
        if pair is self.current:
            self.textUpdated.emit(_answer(pair, side))

    @saves
    def _on_round_done(self, pair: PendingPair, _sides: tuple[int, ...]) -> None:
        if self._batch is not None and all(pair is not p for p in self._batch[1]):
            self._batch = (time.monotonic(), self._batch[1])  # the worker is free for the batch only now
        if not pair.sampled:
            return
        if _needs_resample(pair.texts) and pair.resamples < MAX_RESAMPLES:
            pair.resamples += 1  # identical or empty answers teach nothing: sample again
            self._sample(pair)
            if pair is self.current:
                self.pairShown.emit(self.shown())
            return
        project = self.ctx.project
        with project.transaction():  # a pair's (or ranking's) answers: one commit, one sync to disk
            pair.response_ids = tuple(
                project.add_response(pair.prompt_id, pair.texts[s], model=pair.refs[s],
                                     settings=asdict(pair.settings), finished=pair.ended[s])
                for s in range(pair.n)
            )
        pair.done = True
        if pair is self.current:
            self._ready_at = time.monotonic()
            self.pairReady.emit(self.shown())  # every answer in its final state
        self.fill()  # the last pair of a batch written: the next batch starts

    def _on_round_failed(self, _pair: PendingPair, msg: str) -> None:
        self.message.emit(f"Sampling failed: {msg.splitlines()[0]} — press {keys.REGENERATE.key} to try again.")
        self.fill()

    # ------------------------------------------------------------------ showing
    def shown(self) -> ShownPair | None:
        """The current pair as the page shows it (None: nothing on screen)."""
        pair = self.current
        if pair is None:
            return None
        if not pair.done:
            notice = f"Writing {f'all {pair.n} answers' if pair.ranking else 'both answers'}…"
        else:
            notice = keys.ranking_hint(pair.n) if pair.ranking else keys.verdict_help()
        return ShownPair(pair.prompt_id, pair.prompt_text, tuple(_answer(pair, s) for s in range(pair.n)),
                         pair.done, notice)

    def _show(self, pair: PendingPair | None) -> None:
        self.current = pair
        self._ready_at = time.monotonic() if pair is not None and pair.done else None
        if self.ranking.pair is not None or (pair is not None and pair.ranking):
            self.ranking.show(pair)  # new places for a ranking; between pairs there are none to clear
        if pair is not None:
            self.pairShown.emit(self.shown())
            if pair.done:
                self.pairReady.emit(self.shown())

    def _advance(self) -> None:
        self._show(self.queue.popleft() if self.queue else None)
        self.fill()

    def _drop_queued(self) -> None:
        for pair in self.queue:
            pair.cancel()
            self.prompts.release(pair.prompt_id)
        self.queue.clear()

    # ------------------------------------------------------------------ actions
    def bindings(self) -> tuple[KeyBinding, ...]:
        """What each key does in the current mode."""
        return keys.PAIRWISE if self.mode == "pairwise" else keys.RANKING

    def press(self, key: str) -> bool:
        """A key pressed on the page (QKeySequence text): its action in the current mode.
        False when the key does nothing here (the page then lets the key go on)."""
        binding = keys.binding_for(key, self.bindings())
        if binding is None:
            if self.mode == "ranking" and keys.binding_for(key, keys.PAIRWISE) is not None:
                self.message.emit(_RANK_FIRST)  # a pairwise verdict key on a ranking
            return False
        self.act(binding)
        return True

    def act(self, binding: KeyBinding) -> bool:
        """Do what a key or a button asks; True if it was done."""
        match binding.action:
            case "left" | "right" | "tie" | "both_bad" | "skip":
                return self.judge(binding.action)
            case "place":
                return self.ranking.place(binding.index)
            case "tie_next":
                return self.ranking.toggle_tie()
            case "unplace":
                return self.ranking.unplace()
            case "save_ranking":
                return self.ranking.save()
            case "regenerate":
                return self.regenerate()
            case "write_better":
                return self.ask_write_better()
            case "undo":
                return self.undo()
        raise ValueError(f"no Label action {binding.action!r}")

    def judge(self, verdict: str) -> bool:
        """Record a verdict on the current pair (committed before the next pair shows)."""
        if verdict not in VERDICTS:
            raise ValueError(verdict)
        pair = self.current
        if pair is not None and pair.ranking and verdict != "skip":
            self.message.emit(_RANK_FIRST)
            return False
        if pair is None or not pair.done:
            if verdict == "skip" and pair is not None:
                pair.cancel()
                self._advance()
                return True
            self.message.emit("The answers are still being written; judge them when they are complete.")
            return False
        ok, cid = self.ctx.try_save(lambda: self.ctx.project.record_comparison(
            pair.prompt_id, pair.response_ids[0], pair.response_ids[1], verdict))
        return ok and self._recorded(cid, pair, verdict)

    def ask_write_better(self) -> bool:
        """Open the page's editor on the current answers, once they are complete."""
        shown = self.shown()
        if shown is None or not shown.ready:
            return False
        self.writeBetterAsked.emit(shown)
        return True

    def write_better(self, text: str, worse_side: int) -> bool:
        """The person's own answer becomes the chosen side against the worse sample."""
        pair = self.current
        if pair is None or not pair.done or not text.strip() or not 0 <= worse_side < pair.n:
            return False
        project = self.ctx.project

        def write() -> int:
            with project.transaction():  # the written answer and its verdict, or nothing
                own = project.add_response(pair.prompt_id, text.strip(), model="human", settings=None)
                return project.record_comparison(pair.prompt_id, own, pair.response_ids[worse_side], "left",
                                                 note="written by the person")

        ok, cid = self.ctx.try_save(write)
        return ok and self._recorded(cid, pair, "edit")

    def _recorded(self, saved_id: int, pair: PendingPair, kind: str) -> bool:
        """After a verdict is committed: remember it for undo, tell the other pages, move on."""
        self.history.append(Verdict(saved_id, pair, kind))
        self.session_count += 1
        if self._ready_at is not None:
            self.pace.judged(time.monotonic() - self._ready_at)
        self.ctx.comparisonsChanged.emit()
        self._advance()
        self._emit_progress()
        return True

    def undo(self) -> bool:
        """Remove exactly the last verdict and show its pair again."""
        if not self.history:
            return False
        last = self.history[-1]
        project = self.ctx.project
        remove = project.delete_group if last.verdict == "ranking" else project.delete_comparison  # a ranking: all its pairs
        if not self.ctx.try_save(lambda: remove(last.comparison_id))[0]:
            return False
        self.history.pop()  # only once the removal is saved: a failed undo can be retried
        self.session_count -= 1
        if self.current is not None:
            self.queue.appendleft(self.current)
        self._show(last.pair)
        self.ctx.comparisonsChanged.emit()
        self._emit_progress()
        return True

    def regenerate(self) -> bool:
        """Sample the current prompt's answers again."""
        pair = self.current
        if pair is None:
            return False
        pair.resamples = 0  # sampling again cancels the pair's jobs
        self._sample(pair)
        self.pairShown.emit(self.shown())
        return True

    def _on_ctx_activeModelChanged(self, _ref: str) -> None:
        self._drop_queued()  # queued pairs came from the old model
        self.fill()

    # ------------------------------------------------------------------ ranking
    def set_mode(self, mode: str, k: int | None = None) -> None:
        """Switch between pairwise verdicts and ranking k answers; prompts not yet judged
        are sampled again in the new shape (the current one too, unless already fitting)."""
        if mode not in MODES:
            raise ValueError(mode)
        k = self.k if k is None else k
        if not K_RANGE[0] <= k <= K_RANGE[1]:
            raise ValueError(f"k must be in {K_RANGE}")
        if (mode, k) == (self.mode, self.k):
            return
        self.mode, self.k = mode, k
        self._drop_queued()
        if self.current is not None:
            self.current.cancel()
            self.prompts.release(self.current.prompt_id)
            self._show(None)
        self.modeChanged.emit(mode, k)
        self.fill()
        self._emit_progress()

    # ------------------------------------------------------------------ progress
    def progress(self) -> LabelProgress:
        counts = self.ctx.project.queries.counts()
        minutes = max((time.monotonic() - self.session_start) / 60, 1e-9)
        usable = counts.train_pairs + counts.eval_pairs
        return LabelProgress(
            session=self.session_count,
            total=counts.comparisons,
            usable=usable,
            per_minute=self.session_count / minutes if self.session_count else 0.0,
            enough=usable >= ENOUGH_PAIRS,
            needed=ENOUGH_PAIRS,
            estimate=data_estimate(usable).message,
            mode=self.mode,
        )

    def _emit_progress(self) -> None:
        self.progressChanged.emit(self.progress())


_RANK_FIRST = (f"Rank the answers: press the number of the best, then the next "
               f"({keys.SAVE_RANKING.key} {keys.SAVE_RANKING.help}).")


def _answer(pair: PendingPair, side: int) -> ShownAnswer:
    return ShownAnswer(side, pair.texts[side], pair.tokens[side], writing=not pair.done,
                       cut_off=pair.done and not pair.ended[side])


def _needs_resample(texts: list[str]) -> bool:
    """Two answers: identical or an empty one teach nothing. k answers: a ranking still
    teaches with an empty one (ranked last), but not with fewer than two different texts."""
    stripped = [t.strip() for t in texts]
    if len(texts) == 2:
        return stripped[0] == stripped[1] or not all(stripped)
    return len({t for t in stripped if t}) < 2

