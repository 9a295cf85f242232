"""What the Label and Compare pages share, without Qt: a round (one prompt and the answers
being written for it), where prompts come from, the sampler that streams the answers on
the torch worker, and the tally of Compare's blind votes.

Both pages run the same loop. A `PromptSource` gives the next prompt (typed ones first);
the controller makes a `Round` with one model ref per side; `sample_round` submits the
streaming jobs and applies their events to the round, side by side; the person's verdict
(one of `dpo_engine.store.schema.VERDICTS`) is committed to the project file. The
controllers (`label_queue`, `compare_controller`) wire these to their signals.
`sample_rounds` writes several rounds at once (Label's queue of prompts sampled ahead): one
batched job per model, each round done as soon as its own answers are.

This module imports no Qt: the sampler reaches the worker through `RoundHost` and the job
handles it returns (`.yielded/.returned/.failed.connect`, `.cancel()`, `.cancelled`), so
all of it runs in tests against a mocked host.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from dpo_engine.generate import (
    GenerationResult,
    GenerationSettings,
    TokenEvent,
    relabeled,
    stream_generate,
    stream_generate_batch,
)
from dpo_engine.pairs import PreferencePair
from dpo_engine.starter import starter_prompts
from dpo_engine.winrate import win_rate

if TYPE_CHECKING:
    from dpo_engine.models import LoadedModel
    from dpo_engine.store.project import Project


class RoundHost(Protocol):
    """What a round controller takes from the window's shared context. `AppContext` is
    one; tests pass `MagicMock(spec=RoundHost)` with a real project."""

    project: Project  # the GUI thread's connection to the project file
    model_ref: str  # the active model: Label samples from it
    base_model_ref: str  # the reference for training: Compare's default "before" model
    models: Any  # loaded models by ref (a ModelCache); touched on the worker thread only
    comparisonsChanged: Any  # signal: verdicts were added or removed
    activeModelChanged: Any  # signal(ref)
    modelStateChanged: Any  # signal(state, detail): "ready" once the active model is loaded
    saveFailed: Any  # signal(message): what `saves` slots report

    def submit(self, name: str, factory: Callable[[], Iterator[Any]]) -> Any:
        """Queue a generator factory on the torch worker; returns its job handle."""

    def submit_with_model(self, name: str, ref: str | None, fn: Callable[[LoadedModel], Iterator[Any]]) -> Any:
        """Queue `fn(loaded_model)` on the torch worker, loading `ref` first if needed."""

    def try_save(self, write: Callable[[], Any]) -> tuple[bool, Any]:
        """Run one write of a person's action: (True, result), or (False, None) once the
        person was told why it failed."""


# ---------------------------------------------------------------------------- the round
@dataclass
class Round:
    """One prompt and its answers, one per side, possibly still being written:
    `refs[side]` writes `texts[side]`. Per-side lists left empty are sized to the sides."""

    prompt_id: int
    prompt: str | list  # as stream_generate takes it: text or chat messages
    prompt_text: str  # as the person reads it
    refs: tuple[str, ...]  # the model ref writing each side (left, right for two)
    settings: GenerationSettings
    texts: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)  # False: cut off at max_new_tokens
    finished: list[bool] = field(default_factory=list)  # the side's generation returned
    error: str = ""
    jobs: list = field(default_factory=list)  # the jobs writing it now; any other job's events are stale

    def __post_init__(self) -> None:
        n = self.n
        self.texts = self.texts or [""] * n
        self.tokens = self.tokens or [0] * n
        self.ended = self.ended or [True] * n
        self.finished = self.finished or [False] * n

    @property
    def n(self) -> int:
        return len(self.refs)

    @property
    def sampled(self) -> bool:
        """Every side's answer is complete."""
        return all(self.finished)

    def cancel(self) -> None:
        """Stop its jobs (queued ones never start; a running one stops at its next token)."""
        for job in self.jobs:
            job.cancel()

    def reset(self) -> None:
        """Empty answers, before they are written (again)."""
        self.texts, self.tokens = [""] * self.n, [0] * self.n
        self.ended, self.finished = [True] * self.n, [False] * self.n
        self.error, self.jobs = "", []


# ---------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Prompt:
    id: int | None  # None: not stored yet (a starter is stored once it is used)
    value: str | list  # as stream_generate takes it
    text: str  # as the person reads it


class PromptSource:
    """The next prompt for a round: the ones the person typed first (stored as source
    "typed"), then `_next_own()`, the page's own sources. Plain state over a project and
    an injected rng: no Qt, so tests run it as it is."""

    def __init__(self, project: Project, rng: random.Random):
        self.project = project
        self.rng = rng
        self.typed: deque[str] = deque()
        self._lists: dict[str, list[Prompt]] = {}  # shuffled once, consumed from the end

    def add_typed(self, text: str) -> bool:
        """Queue a typed prompt; False for an empty one."""
        text = text.strip()
        if text:
            self.typed.append(text)
        return bool(text)

    def next(self) -> Prompt | None:
        """The next prompt, stored in the project; None when every source is used up."""
        if self.typed:
            text = self.typed.popleft()
            return Prompt(self.project.add_prompt(text, source="typed"), text, text)
        return self._next_own()

    def _next_own(self) -> Prompt | None:
        return None  # typed prompts only

    def _take(self, name: str, load: Callable[[], list[Prompt]], skip: set[int] = frozenset()) -> Prompt | None:
        """The next prompt of list `name`: loaded once and shuffled with the rng. One not
        stored yet is stored now (source `name`), so unused starters do not fill the
        project; ids in `skip` are passed over."""
        if name not in self._lists:
            self._lists[name] = load()
            self.rng.shuffle(self._lists[name])
        items = self._lists[name]
        while items:
            p = items.pop()
            if p.id is None:
                p = Prompt(self.project.add_prompt(p.value, source=name), p.value, p.text)
            if p.id not in skip:
                return p
        return None


def _starters() -> list[Prompt]:
    return [Prompt(None, text, text) for text in starter_prompts()]


class LabelPrompts(PromptSource):
    """Label: typed prompts, then the project's prompts with the fewest verdicts first
    (each once a session), then the shipped starter prompts in a random order."""

    def __init__(self, project: Project, rng: random.Random):
        super().__init__(project, rng)
        self.used: set[int] = set()  # shown or queued this session

    def next(self) -> Prompt | None:
        p = super().next()
        if p is not None:
            self.used.add(p.id)
        return p

    def release(self, prompt_id: int) -> None:
        """A prompt dropped before its verdict may come again."""
        self.used.discard(prompt_id)

    def _next_own(self) -> Prompt | None:
        found = self.project.queries.next_prompt(exclude=self.used)
        if found is None:
            return self._take("starter", _starters, skip=self.used)
        pid, prompt = found.id, found.prompt
        if isinstance(prompt, str):
            return Prompt(pid, prompt, prompt)
        pair = PreferencePair(prompt, "", "")
        return Prompt(pid, pair.messages, pair.prompt_text)


HELDOUT_GONE = "No held-out prompts left (about 1 in 10 labeled prompts is held out): using the starter prompts."


class ComparePrompts(PromptSource):
    """Compare: typed prompts, then by `mode` the project's held-out prompts (the
    starters once none is left, with a notice), the starters, or nothing more."""

    MODES = ("heldout", "starter", "typed")

    def __init__(self, project: Project, rng: random.Random, on_notice: Callable[[str], Any] = lambda msg: None):
        super().__init__(project, rng)
        self.mode = "heldout"
        self.on_notice = on_notice

    def _next_own(self) -> Prompt | None:
        if self.mode == "typed":
            return None
        if self.mode == "heldout":
            p = self._take("heldout", self._heldout)
            if p is not None:
                return p
            self.on_notice(HELDOUT_GONE)
        return self._take("starter", _starters)

    def _heldout(self) -> list[Prompt]:
        out = []
        for stored in self.project.queries.prompts(split="eval", unlabeled_first=False):
            pair = PreferencePair(stored.prompt, "", "")
            out.append(Prompt(stored.id, pair.messages, pair.prompt_text))
        return out


# ---------------------------------------------------------------------------- the sampler
def sample_round(host: RoundHost, rnd: Round, on_token: Callable[[Round, int], Any],
                 on_done: Callable[[Round, tuple[int, ...]], Any], on_failed: Callable[[Round, str], Any],
                 settings: GenerationSettings | None = None, name: str = "sample") -> dict[int, str]:
    """Write `rnd`'s answers on the torch worker, streamed token by token: one batched job
    when every side has the same model (a batch of 4 costs about what one answer does),
    else one job per side. Jobs it had before are cancelled and its answers emptied.

    Each event is applied to `rnd` first, then reported: `on_token(rnd, side)`,
    `on_done(rnd, sides)` when a job's sides are complete (`rnd.sampled`: all are), and
    `on_failed(rnd, message)`. Events of a job that was cancelled or replaced are dropped:
    the worker may deliver them after the person moved on.

    Returns each side's text as its job finishes, written on the worker thread: a job
    queued after these (Compare's scoring) reads it there, without racing the GUI thread.
    """
    rnd.cancel()
    rnd.reset()
    settings = settings or rnd.settings
    holder: dict[int, str] = {}
    for ref, sides in _batches(rnd.refs):
        def fn(loaded, sides=sides):
            return (yield from _stream_sides(loaded, rnd.prompt, settings, sides, holder))

        job = host.submit_with_model(name, ref, fn)
        job.yielded.connect(lambda ev, j=job: _live(rnd, j) and _apply_token(rnd, ev, on_token))
        job.returned.connect(lambda res, j=job: _live(rnd, j) and _apply_result(rnd, res, on_done))
        job.failed.connect(lambda msg, j=job: _live(rnd, j) and _apply_failure(rnd, msg, on_failed))
        rnd.jobs.append(job)
    return holder


def _batches(refs: tuple[str, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """(model ref, the sides it writes) per job."""
    if len(set(refs)) == 1:
        return [(refs[0], tuple(range(len(refs))))]
    return [(ref, (side,)) for side, ref in enumerate(refs)]


def _stream_sides(loaded, prompt, settings: GenerationSettings, sides: tuple[int, ...], holder: dict):
    """On the worker: the engine's stream, each event relabelled by the side it fills."""
    res: GenerationResult = yield from relabeled(
        stream_generate(loaded.model, loaded.tokenizer, prompt, len(sides), settings), sides)
    holder.update(zip(sides, res.texts))
    return {side: (res.texts[i], res.token_counts[i], res.finished[i]) for i, side in enumerate(sides)}


def sample_rounds(host: RoundHost, rnds: list[Round], on_token: Callable[[Round, int], Any],
                  on_done: Callable[[Round, tuple[int, ...]], Any], on_failed: Callable[[Round, str], Any],
                  settings: GenerationSettings | None = None, name: str = "sample") -> None:
    """Write several rounds' answers at once: one batched job per model, holding that
    model's answers of every round (decoding reads the weights once per token step, so on a
    CPU 4 pairs cost about what 1 does). A single round goes through `sample_round`.

    Callbacks as in `sample_round`, per round: a round is reported done as soon as its own
    answers are complete, before the rest of the batch. Cancelling a round (`rnd.cancel()`)
    drops its events and leaves the others running; the job stops once every round in it
    is cancelled.
    """
    if len(rnds) == 1:
        sample_round(host, rnds[0], on_token, on_done, on_failed, settings, name)
        return
    for rnd in rnds:
        rnd.cancel()
        rnd.reset()
    settings = settings or rnds[0].settings
    by_ref: dict[str, list[tuple[int, int]]] = {}
    for k, rnd in enumerate(rnds):
        for side, ref in enumerate(rnd.refs):
            by_ref.setdefault(ref, []).append((k, side))
    for ref, rows in by_ref.items():
        def fn(loaded, rows=rows):
            return (yield from _stream_rows(loaded, [rnds[k].prompt for k, _ in rows], settings, rows))

        job = host.submit_with_model(name, ref, fn)
        group: list[_Share] = []
        shares = {k: _Share(job, group) for k in dict.fromkeys(k for k, _ in rows)}
        group.extend(shares.values())
        for k, share in shares.items():
            rnds[k].jobs.append(share)
        job.yielded.connect(lambda ev, sh=shares: _apply_row(rnds[ev.round], sh[ev.round], ev, on_token, on_done))
        job.failed.connect(lambda msg, sh=shares: _apply_batch_failure(rnds, sh, msg, on_failed))


@dataclass(frozen=True)
class RowEvent:
    """A batched job's event for one of its rounds: new text for a side, or (`done`) the
    round's sides in this job are complete: {side: (text, tokens, ended)}."""

    round: int  # which round of the batch
    token: TokenEvent | None = None  # index = the side it fills
    done: dict | None = None


class _Share:
    """One round's part of a job that writes several rounds, standing in for the job in
    `Round.jobs`: cancelling it drops that round's events; the job itself is cancelled
    once every round sharing it is."""

    def __init__(self, job, group: list[_Share]):
        self.job, self.group, self._cancelled = job, group, False

    @property
    def cancelled(self) -> bool:
        return self._cancelled or self.job.cancelled

    def cancel(self) -> None:
        self._cancelled = True
        if all(s._cancelled for s in self.group):
            self.job.cancel()


def _stream_rows(loaded, prompts: list, settings: GenerationSettings, rows: list[tuple[int, int]]):
    """On the worker: one batched call for the rows [(round, side)]; each event labelled by
    its round and side, and a round reported complete when its last row here ends."""
    left = Counter(k for k, _ in rows)  # rows still being written, per round
    ended: dict[int, dict] = {}
    stream = stream_generate_batch(loaded.model, loaded.tokenizer, prompts, settings)
    for ev in stream:
        k, side = rows[ev.index]
        if isinstance(ev, TokenEvent):
            yield RowEvent(k, token=TokenEvent(side, ev.delta, ev.tokens))
            continue
        ended.setdefault(k, {})[side] = (ev.text, ev.tokens, ev.finished)
        left[k] -= 1
        if not left[k]:
            yield RowEvent(k, done=dict(sorted(ended[k].items())))


def _apply_row(rnd: Round, share: _Share, ev: RowEvent, on_token, on_done) -> None:
    if not _live(rnd, share):
        return
    if ev.token is not None:
        _apply_token(rnd, ev.token, on_token)
    else:
        _apply_result(rnd, ev.done, on_done)


def _apply_batch_failure(rnds: list[Round], shares: dict[int, _Share], msg: str, on_failed) -> None:
    for k, share in shares.items():
        if _live(rnds[k], share):
            _apply_failure(rnds[k], msg, on_failed)


def _live(rnd: Round, job) -> bool:
    return not job.cancelled and any(j is job for j in rnd.jobs)


def _apply_token(rnd: Round, ev: TokenEvent, on_token) -> None:
    rnd.texts[ev.index] += ev.delta
    rnd.tokens[ev.index] = ev.tokens
    on_token(rnd, ev.index)


def _apply_result(rnd: Round, result: dict, on_done) -> None:
    for side, (text, count, ended) in result.items():
        rnd.texts[side], rnd.tokens[side], rnd.ended[side], rnd.finished[side] = text, count, ended, True
    on_done(rnd, tuple(result))


def _apply_failure(rnd: Round, msg: str, on_failed) -> None:
    rnd.error = msg
    on_failed(rnd, msg)


# ---------------------------------------------------------------------------- the tally
@dataclass
class VoteTally:
    """Compare's votes on one pair of models: the after model against the before one.

    Only blind votes count toward the win rate (a person who knows which answer is the
    trained model's is biased); unblinded votes are only counted."""

    votes: list[tuple[str, int]] = field(default_factory=list)  # (verdict, after_side) of blind votes
    unblinded: int = 0
    lengths: dict[str, list[int]] = field(default_factory=lambda: {"before": [], "after": []})  # tokens per answer

    def add_vote(self, verdict: str, after_side: int, blind: bool) -> None:
        if blind:
            self.votes.append((verdict, after_side))
        else:
            self.unblinded += 1

    def add_lengths(self, after_tokens: int, before_tokens: int) -> None:
        self.lengths["after"].append(after_tokens)
        self.lengths["before"].append(before_tokens)

    def stats(self) -> VoteStats:
        """Win rate of the after model with its 95% interval (ties and "both bad" count
        half: neither model was preferred), vote counts and mean answer lengths."""
        picks = [(v == "left") == (side == 0) for v, side in self.votes if v in ("left", "right")]
        wins, losses = sum(picks), len(picks) - sum(picks)
        ties = sum(v in ("tie", "both_bad") for v, _ in self.votes)
        rate, low, high = win_rate(wins, losses, ties) if wins + losses + ties else (None, None, None)
        mean = {key: sum(values) / len(values) if values else None for key, values in self.lengths.items()}
        return VoteStats(wins, losses, ties, wins + losses + ties, self.unblinded, rate, low, high,
                         mean["after"], mean["before"], len(self.lengths["after"]))


@dataclass(frozen=True)
class VoteStats:
    """Compare's tally of one pair of models, as the page shows it."""

    wins: int  # blind votes for the after model
    losses: int  # blind votes for the before model
    ties: int  # blind ties and "both bad"
    votes: int  # all blind votes
    unblinded: int  # votes cast with names shown: stored, not counted
    rate: float | None  # the after model's win rate (None before the first blind vote)
    low: float | None  # its 95% interval
    high: float | None
    after_tokens: float | None  # mean answer length in tokens (None before the first answer)
    before_tokens: float | None
    rounds: int  # prompts both models answered
