"""The Compare page's logic, without widgets: two models answer the same prompt with the
same seed and settings, the person votes blind, and the votes become a win rate and new
comparisons for the next training round.

A round is one prompt: the "before" model (the base by default) and the "after" model
(the newest checkpoint) each write one answer, on a side drawn at random; then both
answers are scored under the after model against the before model (implicit reward
β·log(π_θ/π_ref)). Three jobs on the torch worker, queued together (`rounds.sample_round`
and a scoring job): the worker runs jobs one at a time, so the scoring job reads the two
answers the generation jobs left on that same thread (no race with the GUI thread). While the person reads, the
next round is already being generated.

Blind votes are the only ones counted in the win rate: a person who knows which answer
is the trained model's is biased. Unblinded votes are still stored as comparisons.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.controllers import keys
from app.controllers.export_controller import ExportController
from app.controllers.rounds import ComparePrompts, Round, RoundHost, VoteStats, VoteTally, sample_round
from dpo_engine.generate import GenerationSettings
from dpo_engine.heldout import DEFAULT_BETA, HeldoutSummary, heldout_events, implicit_rewards_events
from dpo_engine.models import DEFAULT_MODEL_NAME, DEFAULT_MODEL_REF
from dpo_engine.store.schema import VERDICTS
from dpo_engine.train.checkpoints import read_run_file

PROMPT_SOURCES = ComparePrompts.MODES  # where prompts come from


@dataclass(kw_only=True)
class CompareRound(Round):
    """One prompt answered by both models; `refs[side]` wrote `texts[side]`. Its settings
    are seeded: both models sample with the same seed."""

    after_side: int  # 0 or 1: where the after (trained) model's answer is
    beta: float
    blind: bool  # names hidden until the vote; cleared if the person unblinds before voting
    rewards: tuple[float, float] | None = None
    precision_note: str = ""  # why the rewards are not fp32 ("" when they are): `precision_note`
    verdict: str | None = None
    comparison_id: int | None = None

    @property
    def done(self) -> bool:
        return self.sampled

    @property
    def before_side(self) -> int:
        return 1 - self.after_side


@dataclass(frozen=True)
class ModelOptions:
    """What the before/after model boxes offer and show."""

    before: tuple[str, ...]  # the base, then the project's checkpoints, newest first
    after: tuple[str, ...]  # the checkpoints, newest first
    before_ref: str
    after_ref: str  # "" while none is chosen


@dataclass(frozen=True)
class SideView:
    """One side of the current round as the page shows it: blind, no name and no reward (the
    trained model's own answer tends to score higher, which would give it away)."""

    title: str
    reward: str


def model_label(ref: str) -> str:
    if ref in ("", DEFAULT_MODEL_REF):
        return f"{DEFAULT_MODEL_NAME} (default)"
    return Path(ref).name or ref


def precision_note(choice) -> str:
    """What the page says when scores were not computed in fp32 (a DeviceChoice: the precision
    they used and why), e.g. "Rewards in bf16: fp32 weights do not fit (5.5 GiB needed, 3.1 GiB
    free: ...)"; "" for fp32, which needs no word."""
    return "" if choice.dtype == "float32" else f"Rewards in {choice.precision_reason}"


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
        statsChanged(VoteStats): win rate, vote counts and mean lengths.
        heldoutProgress(done, total) / heldoutReady(HeldoutSummary): the held-out summary.
        message(str): a notice for the person (errors included).
    """

    modelsChanged = Signal()
    roundShown = Signal(object)
    textUpdated = Signal(int, str, int)
    roundReady = Signal()
    scoresReady = Signal()
    revealed = Signal()
    statsChanged = Signal(object)
    heldoutProgress = Signal(int, int)
    heldoutReady = Signal(object)
    message = Signal(str)

    def __init__(self, ctx: RoundHost, seed: int | None = None):
        super().__init__()
        self.ctx = ctx
        self.rng = random.Random(seed)
        self.settings = GenerationSettings(max_new_tokens=128, temperature=0.7, top_p=0.95)
        # ^ a little lower temperature than labeling: we compare the models, not their luck
        self.blind = True
        self.prompts = ComparePrompts(ctx.project, self.rng, on_notice=self.message.emit)
        self.before_ref = ctx.base_model_ref
        self.after_ref: str | None = None
        self.current: CompareRound | None = None
        self.upcoming: CompareRound | None = None  # generated while the person reads
        self.tally = VoteTally()  # of the current before/after models
        self.heldout: HeldoutSummary | None = None
        self.heldout_note = ""  # `precision_note` of the held-out summary's scores
        self.refresh_models()

    # ------------------------------------------------------------------ models
    def checkpoints(self) -> list[str]:
        """Checkpoint refs of this project, newest first."""
        rows = [r for r in self.ctx.project.queries.models() if r.kind == "checkpoint"]
        return [r.ref for r in reversed(rows)]

    def model_options(self) -> ModelOptions:
        checkpoints = self.checkpoints()
        before = tuple(dict.fromkeys([self.ctx.base_model_ref, *checkpoints]))
        return ModelOptions(before, tuple(dict.fromkeys(checkpoints)), self.before_ref, self.after_ref or "")

    def set_generation(self, max_new_tokens: int, temperature: float) -> None:
        """The settings both models sample with from the next round on (top-p stays; each round
        then draws its own seed)."""
        self.settings = GenerationSettings(max_new_tokens, temperature, self.settings.top_p)

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
        self.tally = VoteTally()
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
    @property
    def source(self) -> str:
        """Where prompts come from after the typed ones: one of PROMPT_SOURCES."""
        return self.prompts.mode

    def set_source(self, source: str) -> None:
        if source not in PROMPT_SOURCES:
            raise ValueError(source)
        if source != self.source:
            self.prompts.mode = source
            self._drop_upcoming()
            if self.current is None or self.current.verdict is not None:
                self.start()

    def add_typed_prompt(self, text: str) -> None:
        """A typed prompt is compared at once (an unvoted current round is dropped)."""
        if not self.prompts.add_typed(text):
            return
        if self.current is not None and self.current.verdict is None:
            self.current.cancel()
            self.current = None
        self._drop_upcoming()
        self.start()

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
            self.current.cancel()
        self.current = None
        self.start()

    def _prefetch(self) -> None:
        if self.upcoming is None and self.current is not None and self.source != "typed":
            self.upcoming = self._new_round()

    def _new_round(self) -> CompareRound | None:
        prompt = self.prompts.next()
        if prompt is None:
            self.message.emit("Type a prompt above to compare the two models on it.")
            return None
        after_side = self.rng.randrange(2)  # blind: which side the trained model gets is random
        refs = (self.after_ref, self.before_ref) if after_side == 0 else (self.before_ref, self.after_ref)
        settings = self.settings if self.settings.seed is not None else replace(
            self.settings, seed=self.rng.randrange(2**31))
        rnd = CompareRound(prompt.id, prompt.value, prompt.text, refs, settings, after_side=after_side,
                           beta=checkpoint_beta(self.after_ref), blind=self.blind)
        self._submit(rnd)
        return rnd

    def _submit(self, rnd: CompareRound) -> None:
        """Both answers (one job per model), then the scoring job that reads them on the worker."""
        texts = sample_round(self.ctx, rnd, self._on_round_token, self._on_round_done,
                             lambda r, msg: self._on_job_failed(r, "Generation", msg), name="compare-generate")
        job = self.ctx.submit("compare-score", lambda: self._score(rnd, texts))
        job.returned.connect(lambda res, r=rnd: self._on_job_scored(r, res))
        job.failed.connect(lambda msg, r=rnd: self._on_job_failed(r, "Scoring", msg))
        rnd.jobs.append(job)

    def _score(self, rnd: CompareRound, texts: dict[int, str]):
        yield from ()  # a generator, so the worker can cancel it before it starts
        if len(texts) < 2:
            return None  # a generation failed or was cancelled
        models = self.ctx.models  # one precision for both (a LoRA checkpoint shares its base's copy)
        after, before = models.scoring_models(rnd.refs[rnd.after_side], rnd.refs[rnd.before_side])
        yield  # a round left meanwhile (`_show`) stops here, and between the two passes
        scores = yield from implicit_rewards_events(after.model, before.model, after.tokenizer, rnd.prompt,
                                                    (texts[0], texts[1]), rnd.beta)
        return scores.rewards, precision_note(models.scoring_choice)

    def _on_round_token(self, rnd: CompareRound, side: int) -> None:
        if rnd is self.current:
            self.textUpdated.emit(side, rnd.texts[side], rnd.tokens[side])

    def _on_round_done(self, rnd: CompareRound, sides: tuple[int, ...]) -> None:
        if rnd is self.current:
            for side in sides:
                self.textUpdated.emit(side, rnd.texts[side], rnd.tokens[side])
        if rnd.done:
            self.tally.add_lengths(rnd.tokens[rnd.after_side], rnd.tokens[rnd.before_side])
            self._emit_stats()
            if rnd is self.current:
                self.roundReady.emit()

    def _on_job_scored(self, rnd: CompareRound, result) -> None:
        if result is not None:
            rewards, rnd.precision_note = result
            rnd.rewards = tuple(rewards)
            if rnd is self.current:
                self.scoresReady.emit()

    def _on_job_failed(self, rnd: CompareRound, what: str, msg: str) -> None:
        rnd.error = msg
        if rnd is self.current:
            self.message.emit(f"{what} failed: {msg.splitlines()[0]}")

    def _show(self, rnd: CompareRound | None) -> None:
        """Make `rnd` the round on screen. The round it replaces stops its jobs: its rewards show
        only while it is on screen, and at 1B on a CPU its fp32 scoring (1-3 minutes, measured by
        bench/window_end_to_end.py) would hold the worker while the next answers wait."""
        if self.current is not None and self.current is not rnd:
            self.current.cancel()
        self.current = rnd
        if rnd is not None:
            self.roundShown.emit(rnd)
            if rnd.done:
                self.roundReady.emit()
            if rnd.rewards is not None:
                self.scoresReady.emit()

    def _drop_upcoming(self) -> None:
        if self.upcoming is not None:
            self.upcoming.cancel()
        self.upcoming = None

    def _cancel_rounds(self) -> None:
        self._drop_upcoming()
        if self.current is not None:
            self.current.cancel()
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
            self.message.emit(f"Already voted on this prompt: press {keys.NEXT_ROUND.key} for the next one.")
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
        self.tally.add_vote(verdict, rnd.after_side, rnd.blind)
        self.revealed.emit()
        self._emit_stats()
        return True

    def stats(self) -> VoteStats:
        """Win rate of the after model over the before model from the blind votes, vote
        counts and mean answer lengths (`VoteTally.stats`)."""
        return self.tally.stats()

    def _emit_stats(self) -> None:
        self.statsChanged.emit(self.stats())

    def side_views(self) -> tuple[SideView, SideView] | None:
        """Names and implicit rewards of the current round's sides: hidden while blind and not
        yet voted; both show once voted or unblinded."""
        rnd = self.current
        if rnd is None:
            return None
        hidden = rnd.blind and rnd.verdict is None
        views = []
        for side, where in enumerate(("Left", "Right")):
            role = "After" if side == rnd.after_side else "Before"
            title = f"{where} answer" if hidden else f"{where} — {role}: {model_label(rnd.refs[side])}"
            if hidden:
                reward = "Implicit reward: shown after your vote"
            elif rnd.rewards is None:
                reward = "Implicit reward: scoring…" if not rnd.error else "Implicit reward: unavailable"
            else:
                reward = f"Implicit reward β·log(π_after/π_before) = {rnd.rewards[side]:+.3f}  (β {rnd.beta:g})"
                reward += f"\n{rnd.precision_note}" if rnd.precision_note else ""
            views.append(SideView(title, reward))
        return views[0], views[1]

    def preference_text(self) -> str:
        """After a vote: which model the person preferred."""
        rnd = self.current
        picked = {"left": 0, "right": 1}.get(rnd.verdict) if rnd else None
        who = "neither" if picked is None else (
            "the trained model (after)" if picked == rnd.after_side else "the base model (before)")
        return f"You preferred {who}. Press {keys.NEXT_ROUND.key} for the next prompt."

    def export_controller(self) -> ExportController | None:
        """The export of the after model (None while there is none)."""
        return ExportController(self.ctx, self.after_ref) if self.after_ref else None

    # ------------------------------------------------------------------ held-out summary
    def compute_heldout(self) -> bool:
        """Score the project's held-out pairs under both models on the torch worker."""
        if self.no_model_reason():
            self.message.emit(self.no_model_reason())
            return False
        pairs = [sp.pair for sp in self.ctx.project.queries.training_pairs(split="eval")]
        if not pairs:
            self.message.emit("No held-out pairs yet: about 1 in 10 labeled prompts is held out. Label more.")
            return False
        before, after, beta = self.before_ref, self.after_ref, checkpoint_beta(self.after_ref)

        def factory():
            trained, base = self.ctx.models.scoring_models(after, before)
            note = precision_note(self.ctx.models.scoring_choice)
            return (yield from heldout_events(trained.model, base.model, trained.tokenizer, pairs, beta)), note

        job = self.ctx.submit("compare-heldout", factory)
        job.yielded.connect(lambda ev: self.heldoutProgress.emit(ev.done, ev.total))
        job.returned.connect(lambda result: self._on_heldout_returned((before, after), *result))
        job.failed.connect(lambda msg: self.message.emit(f"Held-out scoring failed: {msg.splitlines()[0]}"))
        return True

    def scoring_reason(self) -> str:
        """Why the last scores were computed in their precision (fp32 unless it did not fit)."""
        return self.ctx.models.scoring_choice.precision_reason

    def _on_heldout_returned(self, models: tuple[str, str], summary: HeldoutSummary, note: str) -> None:
        if models != (self.before_ref, self.after_ref):
            return  # the person chose other models meanwhile
        self.heldout, self.heldout_note = summary, note
        self.heldoutReady.emit(summary)

