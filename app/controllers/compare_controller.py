"""The Compare page's logic, without widgets: two models answer the same prompt with the
same seed and settings, the person votes blind, and the votes become a win rate and new
comparisons for the next training round.

A round is one prompt: the "before" model (the base by default) and the "after" model
(the newest checkpoint) each write one answer, on a side drawn at random; then both
answers are scored under the after model against the before model (implicit reward
β·log(π_θ/π_ref)). Three jobs on the torch worker, queued together: the worker runs jobs
one at a time, so the scoring job reads the two answers from a holder the generation jobs
filled on that same thread (no race with the GUI thread). While the person reads, the
next round is already being generated.

Blind votes are the only ones counted in the win rate: a person who knows which answer
is the trained model's is biased. Unblinded votes are still stored as comparisons.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.plumbing.context import AppContext
from dpo_engine.train.checkpoints import read_run_file
from dpo_engine.generate import GenerationSettings, TokenEvent, relabeled, stream_generate
from dpo_engine.heldout import DEFAULT_BETA, HeldoutSummary, heldout_events, implicit_rewards
from dpo_engine.models import DEFAULT_MODEL_NAME, DEFAULT_MODEL_REF
from dpo_engine.pairs import PreferencePair
from dpo_engine.starter import starter_prompts
from dpo_engine.winrate import win_rate

VERDICTS = ("left", "right", "tie", "both_bad", "skip")
SOURCES = ("heldout", "starter", "typed")  # where prompts come from


@dataclass
class CompareRound:
    """One prompt answered by both models; `refs[side]` wrote `texts[side]`."""

    prompt_id: int
    prompt: str | list  # as stream_generate takes it
    prompt_text: str
    refs: tuple[str, str]  # model ref shown left, right
    after_side: int  # 0 or 1: where the after (trained) model's answer is
    settings: GenerationSettings  # seeded: both models sample with the same seed
    beta: float
    blind: bool  # names hidden until the vote; cleared if the person unblinds before voting
    texts: list[str] = field(default_factory=lambda: ["", ""])
    tokens: list[int] = field(default_factory=lambda: [0, 0])
    finished: list[bool] = field(default_factory=lambda: [False, False])  # generation done
    ended: list[bool] = field(default_factory=lambda: [True, True])  # False: cut off at max_new_tokens
    rewards: tuple[float, float] | None = None
    error: str = ""
    verdict: str | None = None
    comparison_id: int | None = None
    jobs: list = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(self.finished)

    @property
    def before_side(self) -> int:
        return 1 - self.after_side


def display_name(ref: str) -> str:
    if ref in ("", DEFAULT_MODEL_REF):
        return f"{DEFAULT_MODEL_NAME} (default)"
    return Path(ref).name or ref


def checkpoint_beta(ref: str) -> float:
    """β the checkpoint was trained with (its run file), else DPO's usual 0.1."""
    beta = read_run_file(ref).get("config", {}).get("beta") if ref else None
    return float(beta) if isinstance(beta, (int, float)) and beta > 0 else DEFAULT_BETA


class CompareController(QObject):
    """Signals:
        modelsChanged(): the before/after choice or the list of checkpoints changed.
        roundShown(CompareRound): a new current round (texts may still be streaming).
        textUpdated(side, text, tokens): streamed text of the current round.
        roundReady(): both answers of the current round are complete: it can be judged.
        scoresReady(): the current round's implicit rewards are known.
        revealed(): the current round was voted on; names and rewards may show.
        statsChanged(dict): win rate, vote counts and mean lengths.
        heldoutProgress(done, total) / heldoutReady(HeldoutSummary): the held-out summary.
        message(str): a notice for the person (errors included).
    """

    modelsChanged = Signal()
    roundShown = Signal(object)
    textUpdated = Signal(int, str, int)
    roundReady = Signal()
    scoresReady = Signal()
    revealed = Signal()
    statsChanged = Signal(dict)
    heldoutProgress = Signal(int, int)
    heldoutReady = Signal(object)
    message = Signal(str)

    def __init__(self, ctx: AppContext, seed: int | None = None):
        super().__init__()
        self.ctx = ctx
        self.rng = random.Random(seed)
        self.settings = GenerationSettings(max_new_tokens=128, temperature=0.7, top_p=0.95)
        # ^ a little lower temperature than labeling: we compare the models, not their luck
        self.blind = True
        self.source = "heldout"
        self.before_ref = ctx.base_model_ref
        self.after_ref: str | None = None
        self.current: CompareRound | None = None
        self.upcoming: CompareRound | None = None  # generated while the person reads
        self.typed: list[str] = []
        self.votes: list[tuple[str, int]] = []  # (verdict, after_side) of blind votes
        self.unblinded = 0
        self.lengths: dict[str, list[int]] = {"before": [], "after": []}
        self.heldout: HeldoutSummary | None = None
        self._order: dict[str, list] = {}  # shuffled prompts per source, consumed from the end
        self.refresh_models()

    # ------------------------------------------------------------------ models
    def checkpoints(self) -> list[str]:
        """Checkpoint refs of this project, newest first."""
        rows = [r for r in self.ctx.project.models() if r["kind"] == "checkpoint"]
        return [r["ref"] for r in reversed(rows)]

    def refresh_models(self) -> None:
        """Take the newest checkpoint as the after model when none is chosen yet."""
        if self.after_ref is None:
            newest = self.checkpoints()
            if newest:
                self.after_ref = newest[0]
        self.modelsChanged.emit()

    def set_models(self, before: str, after: str | None) -> None:
        """Compare other models: the tally restarts (a win rate is of one pair of models)."""
        before, after = (before or "").strip() or self.ctx.base_model_ref, (after or "").strip() or None
        if (before, after) == (self.before_ref, self.after_ref):
            return
        self.before_ref, self.after_ref = before, after
        self._cancel_rounds()
        self.votes, self.unblinded = [], 0
        self.lengths = {"before": [], "after": []}
        self.heldout = None
        self.modelsChanged.emit()
        self._emit_stats()
        self.start()

    def no_model_reason(self) -> str:
        if self.after_ref is None:
            return ("No trained checkpoint in this project yet: train one on the Train page, or choose a "
                    "model folder as the 'after' model.")
        if self.after_ref == self.before_ref:
            return "Before and after are the same model: choose a checkpoint to compare with."
        return ""

    # ------------------------------------------------------------------ prompts
    def set_source(self, source: str) -> None:
        if source not in SOURCES:
            raise ValueError(source)
        if source != self.source:
            self.source = source
            self._drop_upcoming()
            if self.current is None or self.current.verdict is not None:
                self.start()

    def add_typed_prompt(self, text: str) -> None:
        """A typed prompt is compared at once (an unvoted current round is dropped)."""
        text = text.strip()
        if not text:
            return
        self.typed.append(text)
        if self.current is not None and self.current.verdict is None:
            self._cancel(self.current)
            self.current = None
        self._drop_upcoming()
        self.start()

    def _from_list(self, source: str, load) -> tuple[int, str | list, str] | None:
        if source not in self._order:
            items = load()
            self.rng.shuffle(items)
            self._order[source] = items
        if not self._order[source]:
            return None
        pid, prompt, text = self._order[source].pop()
        if pid is None:  # stored only once used, so unused starters do not fill the project
            pid = self.ctx.project.add_prompt(prompt, source=source)
        return pid, prompt, text

    def _heldout_prompts(self) -> list:
        out = []
        for pid, prompt in self.ctx.project.prompts(split="eval", unlabeled_first=False):
            messages = PreferencePair(prompt, "", "").messages
            out.append((pid, messages, PreferencePair(prompt, "", "").prompt_text))
        return out

    def _starter_prompts(self) -> list:
        return [(None, text, text) for text in starter_prompts()]

    def _next_prompt(self) -> tuple[int, str | list, str] | None:
        if self.typed:
            text = self.typed.pop(0)
            return self.ctx.project.add_prompt(text, source="typed"), text, text
        if self.source == "typed":
            return None
        if self.source == "heldout":
            nxt = self._from_list("heldout", self._heldout_prompts)
            if nxt is not None:
                return nxt
            self.message.emit("No held-out prompts left (about 1 in 10 labeled prompts is held out): "
                              "using the starter prompts.")
        return self._from_list("starter", self._starter_prompts)

    # ------------------------------------------------------------------ rounds
    def start(self) -> None:
        """Show a round (the upcoming one if any) and generate the one after it."""
        if self.no_model_reason():
            self.message.emit(self.no_model_reason())
            return
        if self.current is None or self.current.verdict is not None:
            nxt = self.upcoming or self._new_round()
            self.upcoming = None
            self._show(nxt)
        self._prefetch()

    def next_round(self) -> None:
        """Move on from a voted (or abandoned) round."""
        if self.current is not None and self.current.verdict is None:
            self._cancel(self.current)
        self.current = None
        self.start()

    def _prefetch(self) -> None:
        if self.upcoming is None and self.current is not None and self.source != "typed":
            self.upcoming = self._new_round()

    def _new_round(self) -> CompareRound | None:
        nxt = self._next_prompt()
        if nxt is None:
            self.message.emit("Type a prompt above to compare the two models on it.")
            return None
        pid, prompt, text = nxt
        after_side = self.rng.randrange(2)  # blind: which side the trained model gets is random
        refs = (self.after_ref, self.before_ref) if after_side == 0 else (self.before_ref, self.after_ref)
        settings = self.settings if self.settings.seed is not None else replace(
            self.settings, seed=self.rng.randrange(2**31))
        rnd = CompareRound(pid, prompt, text, refs, after_side, settings, checkpoint_beta(self.after_ref), self.blind)
        self._submit(rnd)
        return rnd

    def _submit(self, rnd: CompareRound) -> None:
        holder: dict[int, str] = {}  # written and read on the worker thread only
        for side in (0, 1):
            def fn(loaded, side=side):
                return (yield from self._generate(loaded, rnd, side, holder))
            job = self.ctx.submit_with_model("compare-generate", rnd.refs[side], fn)
            job.yielded.connect(lambda ev, r=rnd: self._on_job_token(r, ev))
            job.returned.connect(lambda res, r=rnd: self._on_job_generated(r, res))
            job.failed.connect(lambda msg, r=rnd: self._on_job_failed(r, "Generation", msg))
            rnd.jobs.append(job)
        job = self.ctx.submit("compare-score", lambda: self._score(rnd, holder))
        job.returned.connect(lambda res, r=rnd: self._on_job_scored(r, res))
        job.failed.connect(lambda msg, r=rnd: self._on_job_failed(r, "Scoring", msg))
        rnd.jobs.append(job)

    @staticmethod
    def _generate(loaded, rnd: CompareRound, side: int, holder: dict):
        result = yield from relabeled(stream_generate(loaded.model, loaded.tokenizer, rnd.prompt, 1, rnd.settings),
                                      (side,))
        holder[side] = result.texts[0]
        return side, result.texts[0], result.token_counts[0], result.finished[0]

    def _score(self, rnd: CompareRound, holder: dict):
        yield from ()  # a generator, so the worker can cancel it before it starts
        if len(holder) < 2:
            return None  # a generation failed or was cancelled
        after = self.ctx.models.get(rnd.refs[rnd.after_side])
        before = self.ctx.models.get(rnd.refs[rnd.before_side])
        scores = implicit_rewards(after.model, before.model, after.tokenizer, rnd.prompt,
                                  (holder[0], holder[1]), rnd.beta)
        return scores.rewards

    def _on_job_token(self, rnd: CompareRound, ev: TokenEvent) -> None:
        rnd.texts[ev.index] += ev.delta
        rnd.tokens[ev.index] = ev.tokens
        if rnd is self.current:
            self.textUpdated.emit(ev.index, rnd.texts[ev.index], ev.tokens)

    def _on_job_generated(self, rnd: CompareRound, result) -> None:
        side, text, tokens, ended = result
        rnd.texts[side], rnd.tokens[side], rnd.ended[side], rnd.finished[side] = text, tokens, ended, True
        if rnd is self.current:
            self.textUpdated.emit(side, text, tokens)
        if rnd.done:
            self.lengths["after"].append(rnd.tokens[rnd.after_side])
            self.lengths["before"].append(rnd.tokens[rnd.before_side])
            self._emit_stats()
            if rnd is self.current:
                self.roundReady.emit()

    def _on_job_scored(self, rnd: CompareRound, rewards) -> None:
        if rewards is not None:
            rnd.rewards = tuple(rewards)
            if rnd is self.current:
                self.scoresReady.emit()

    def _on_job_failed(self, rnd: CompareRound, what: str, msg: str) -> None:
        rnd.error = msg
        if rnd is self.current:
            self.message.emit(f"{what} failed: {msg.splitlines()[0]}")

    def _show(self, rnd: CompareRound | None) -> None:
        self.current = rnd
        if rnd is not None:
            self.roundShown.emit(rnd)
            if rnd.done:
                self.roundReady.emit()
            if rnd.rewards is not None:
                self.scoresReady.emit()

    def _cancel(self, rnd: CompareRound | None) -> None:
        if rnd is not None:
            for job in rnd.jobs:
                job.cancel()

    def _drop_upcoming(self) -> None:
        self._cancel(self.upcoming)
        self.upcoming = None

    def _cancel_rounds(self) -> None:
        self._drop_upcoming()
        self._cancel(self.current)
        self.current = None

    def set_blind(self, on: bool) -> None:
        """Unblinding an unvoted round makes its vote an unblinded one."""
        self.blind = on
        if not on and self.current is not None and self.current.verdict is None:
            self.current.blind = False
        if self.upcoming is not None:
            self.upcoming.blind = on

    # ------------------------------------------------------------------ votes
    def vote(self, verdict: str) -> bool:
        """Record a verdict on the current round as a comparison (source "compare") and reveal."""
        if verdict not in VERDICTS:
            raise ValueError(verdict)
        rnd = self.current
        if rnd is None:
            return False
        if rnd.verdict is not None:
            self.message.emit("Already voted on this prompt: press N for the next one.")
            return False
        if not rnd.done:
            if verdict == "skip":
                self.next_round()
                return True
            self.message.emit("The answers are still being written; vote when they are complete.")
            return False
        project = self.ctx.project

        def write() -> int:
            with project.transaction():  # both answers and the verdict, or nothing
                left, right = (project.add_response(rnd.prompt_id, rnd.texts[s], model=rnd.refs[s],
                                                    settings=asdict(rnd.settings), finished=rnd.ended[s])
                               for s in (0, 1))
                return project.record_comparison(rnd.prompt_id, left, right, verdict, source="compare")

        ok, rnd.comparison_id = self.ctx.try_save(write)
        if not ok:
            return False
        rnd.verdict = verdict
        self.ctx.comparisonsChanged.emit()
        if verdict == "skip":
            self.next_round()
            return True
        if rnd.blind:
            self.votes.append((verdict, rnd.after_side))
        else:
            self.unblinded += 1
        self.revealed.emit()
        self._emit_stats()
        return True

    def stats(self) -> dict:
        """Win rate of the after model over the before model from the blind votes (ties and
        "both bad" count half: neither model was preferred), and mean answer lengths."""
        wins = sum(v in ("left", "right") and (v == "left") == (side == 0) for v, side in self.votes)
        losses = sum(v in ("left", "right") and (v == "left") != (side == 0) for v, side in self.votes)
        ties = sum(v in ("tie", "both_bad") for v, _ in self.votes)
        out = {"wins": wins, "losses": losses, "ties": ties, "votes": wins + losses + ties,
               "unblinded": self.unblinded, "rate": None, "low": None, "high": None}
        if out["votes"]:
            out["rate"], out["low"], out["high"] = win_rate(wins, losses, ties)
        for key, values in self.lengths.items():
            out[f"{key}_tokens"] = sum(values) / len(values) if values else None
        out["rounds"] = len(self.lengths["after"])
        return out

    def _emit_stats(self) -> None:
        self.statsChanged.emit(self.stats())

    # ------------------------------------------------------------------ held-out summary
    def compute_heldout(self) -> bool:
        """Score the project's held-out pairs under both models on the torch worker."""
        if self.no_model_reason():
            self.message.emit(self.no_model_reason())
            return False
        pairs = [sp.pair for sp in self.ctx.project.training_pairs(split="eval")]
        if not pairs:
            self.message.emit("No held-out pairs yet: about 1 in 10 labeled prompts is held out. Label more.")
            return False
        before, after, beta = self.before_ref, self.after_ref, checkpoint_beta(self.after_ref)

        def factory():
            trained, base = self.ctx.models.get(after), self.ctx.models.get(before)
            return (yield from heldout_events(trained.model, base.model, trained.tokenizer, pairs, beta))

        job = self.ctx.submit("compare-heldout", factory)
        job.yielded.connect(lambda ev: self.heldoutProgress.emit(ev.done, ev.total))
        job.returned.connect(lambda summary: self._on_heldout_returned((before, after), summary))
        job.failed.connect(lambda msg: self.message.emit(f"Held-out scoring failed: {msg.splitlines()[0]}"))
        return True

    def _on_heldout_returned(self, models: tuple[str, str], summary: HeldoutSummary) -> None:
        if models != (self.before_ref, self.after_ref):
            return  # the person chose other models meanwhile
        self.heldout = summary
        self.heldoutReady.emit(summary)

