"""The Label page's logic, without widgets: verdicts and rankings on the pair on screen, undo
and progress. The view only shows what this emits.

Two modes. Pairwise: two answers to one prompt, one verdict. Ranking: k answers (3-6) to
one prompt, ordered best first by the person (ties allowed); a ranking of k stores up to
k(k-1)/2 pairs as one group (`Project.record_ranking`), so one prompt's reading time
yields several pairs (40 pairs teach a small model nothing measurable: bench/README.md,
"Simulated user").

The prompts and their answers come from the sample-ahead queue, `self.queue`
(`label_queue.LabelQueue`): while the person reads the current prompt the next ones are
sampled in batches, sized by the measured pace. Every verdict or ranking is committed to
the project file before the next prompt shows.

The ranking of the prompt on screen (places, ties, a dragged order, saving the group) is a
collaborator, `self.ranking` (`label_ranking.LabelRanking`). What a key does is looked up in
`keys` (one map per mode), so the page forwards keys and clicks and decides nothing. The view
receives frozen snapshots (`ShownPair`, `ShownAnswer`, `RankingState`, `LabelProgress`), never
this controller's working state.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.controllers import keys
from app.controllers.keys import KeyBinding
from app.controllers.label_queue import LabelQueue, PendingPair
from app.controllers.label_ranking import LabelRanking
from app.controllers.rounds import RoundHost
from dpo_engine.defaults import ENOUGH_PAIRS, data_estimate
from dpo_engine.generate import GenerationSettings
from dpo_engine.store.schema import VERDICTS

MODES = ("pairwise", "ranking")
K_RANGE = (3, keys.MAX_PLACES)  # below 3 a ranking is a pair; one place key per answer up to the most shown
DEFAULT_K = 4  # a 2x2 grid a person reads at once; up to 6 pairs per prompt instead of 1


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
        self.rng = random.Random(seed)
        # the prompts sampled ahead; `prefetch` and `pace_memory` size it (see `LabelQueue`)
        self.queue = LabelQueue(ctx, self.rng, prefetch, pace_memory)
        self.queue.token.connect(self._on_queue_token)
        self.queue.resampling.connect(self._on_queue_resampling)
        self.queue.written.connect(self._on_queue_written)
        self.queue.failed.connect(self._on_queue_failed)
        self.queue.message.connect(self.message)
        self._ready_at: float | None = None  # when the current prompt's answers were complete on screen
        self.mode = "pairwise"
        self.k = DEFAULT_K  # answers per prompt in ranking mode
        self.ranking = LabelRanking(ctx)  # ranking mode: the places given to the current answers
        self.ranking.message.connect(self.message)
        self.ranking.saved.connect(lambda group, pair: self._recorded(group, pair, "ranking"))
        self._started = False  # sampling begins when the page is first shown
        self.current: PendingPair | None = None
        self.history: list[Verdict] = []
        self.session_count = 0
        self.session_start = time.monotonic()
        ctx.activeModelChanged.connect(self._on_ctx_activeModelChanged)

    # the sampling settings of the prompts drawn from now on, read by the page's side panel
    settings = property(lambda self: self.queue.settings)

    # ------------------------------------------------------------------ prompts
    def add_typed_prompt(self, text: str) -> None:
        """A prompt typed by the person goes first in line."""
        if self.queue.add_typed(text):
            self.fill()

    def set_generation(self, max_new_tokens: int, temperature: float, top_p: float,
                       second_model: str = "") -> None:
        """The sampling settings of the prompts drawn from now on; `second_model` (empty:
        none) writes one answer of each pair in pairwise mode."""
        self.queue.settings = GenerationSettings(max_new_tokens, temperature, top_p)
        self.queue.second_model = second_model.strip() or None

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
        self.queue.paused = True

    def resume(self) -> None:
        """The Label page is shown: the first time, start; after `pause`, sample what is missing."""
        self.queue.paused = False
        if not self._started:
            self.start()
        else:
            self.fill()

    def fill(self) -> None:
        """Top up the queue (`LabelQueue.fill`); with nothing on screen, show the pair it
        starts sampling now."""
        first = self.queue.fill(self.current is not None)
        if first:
            self._show(first)

    def _on_queue_token(self, pair: PendingPair, side: int) -> None:
        if pair is self.current:
            self.textUpdated.emit(_answer(pair, side))

    def _on_queue_resampling(self, pair: PendingPair) -> None:
        if pair is self.current:
            self.pairShown.emit(self.shown())

    def _on_queue_written(self, pair: PendingPair) -> None:
        if pair is self.current:
            self._ready_at = time.monotonic()
            self.pairReady.emit(self.shown())  # every answer in its final state
        self.fill()  # the last pair of a batch written: the next batch starts

    def _on_queue_failed(self, msg: str) -> None:
        self.message.emit(f"Sampling failed: {msg} — press {keys.REGENERATE.key} to try again.")
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
        self._show(self.queue.pairs.popleft() if self.queue.pairs else None)
        self.fill()

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
            self.queue.pace.judged(time.monotonic() - self._ready_at)
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
            self.queue.pairs.appendleft(self.current)
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
        self.queue.sample(pair)
        self.pairShown.emit(self.shown())
        return True

    def _on_ctx_activeModelChanged(self, _ref: str) -> None:
        self.queue.drop()  # queued pairs came from the old model
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
        self.queue.answers = 2 if mode == "pairwise" else k
        self.queue.drop()
        if self.current is not None:
            self.queue.release(self.current)
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
