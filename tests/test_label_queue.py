"""The Label queue at real size: a sampler of a given speed (a fake: no 1B model in unit tests)
and a person of a given pace, on a fake clock, through the Label controller.

The speeds are measured ones (issue 34, bench/README.md "Labeling pace"): the 1B shape in
bf16 on the 2-core AMX Xeon samples 6.5 tokens/s for one answer and 43 in a batch of 8, i.e.
0.154 s a step + 0.0046 s an answer, x 128 tokens = 19.7 s + 0.59 s an answer; the default
model (135M) in bf16 there writes 4 pairs in ~8 s (6.6 s + 0.18 s an answer).
"""

from __future__ import annotations

import json
import math
import time
from itertools import count
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest

import app.controllers.label_queue as label_queue
import app.controllers.rounds as rounds
from app.controllers.label_controller import LabelController
from app.controllers.pace import FIRST_ROWS, MAX_ROWS
from app.controllers.rounds import RoundHost
from dpo_engine.generate import GenerationResult, RowEnded, TokenEvent

ONE_B = (19.7, 0.59)  # seconds a batch, seconds an answer: the 1B shape, bf16, 2-core AMX Xeon
SMALL = (6.6, 0.18)  # the default 135M model there
THINK = 4.0  # the scripted person of bench/labeling_pace.py: a verdict 4 s after the answers are complete
# Llama-3.2's published configs (the shapes issue 34 measures with)
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
            "vocab_size": 128256, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64}
LLAMA_3B = {**LLAMA_1B, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24, "head_dim": 128}


class FakeSignal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class FakeJob:
    """A job handle as the worker's: `work()` runs the generator, `deliver` emits its events."""

    def __init__(self, factory):
        self.factory, self.cancelled = factory, False
        self.yielded, self.returned, self.failed = FakeSignal(), FakeSignal(), FakeSignal()

    def cancel(self):
        self.cancelled = True

    def work(self):
        out, gen = [], self.factory()
        try:
            while True:
                out.append((self.yielded, next(gen)))
        except StopIteration as stop:
            out.append((self.returned, stop.value))
        return out


class Session:
    """One torch worker that writes a batch of r answers in `fixed + per_row * r` seconds, one
    job at a time, and a person who judges each pair `think` seconds after its answers are
    complete on screen; time is a fake clock that jumps from one event to the next."""

    def __init__(self, monkeypatch, project, speed, model_ref="model-a", device=None, memory=None):
        self.now, self.free_at = 1000.0, 1000.0
        self.job: tuple[float, list] | None = None  # (when it ends, its events) of the job being written
        self.fixed, self.per_row = speed
        self.rows: list[int] = []  # answers of each sampling call, in order
        self.ids = count()
        monkeypatch.setattr(time, "monotonic", lambda: self.now)
        monkeypatch.setattr(rounds, "stream_generate_batch", self._batch)
        monkeypatch.setattr(rounds, "stream_generate", lambda m, t, prompt, n=1, s=None: self._batch(m, t, [prompt] * n))
        self.host = host = MagicMock(spec=RoundHost)
        host.project, host.model_ref, host.base_model_ref = project, model_ref, model_ref
        host.comparisonsChanged, host.activeModelChanged, host.saveFailed = MagicMock(), MagicMock(), MagicMock()
        host.modelStateChanged = FakeSignal()
        host.device = device
        host.jobs = []
        host.submit_with_model.side_effect = lambda name, ref, fn: self._submit(lambda: fn(SimpleNamespace(model=ref, tokenizer=None)))
        host.try_save.side_effect = lambda write: (True, write())
        self.controller = LabelController(host, seed=0, pace_memory=memory)
        self.controller.pairReady.connect(self._on_ready)
        self.ready_at: float | None = None  # when the pair on screen was complete
        self.judged_at: float | None = None  # the last verdict, while its next pair is not complete
        self.waits: list[float] = []  # after each verdict, until the next pair was complete on screen

    def _submit(self, factory):
        self.host.jobs.append(FakeJob(factory))
        return self.host.jobs[-1]

    def _batch(self, model, tokenizer, prompts, settings=None):
        self.rows.append(len(prompts))
        texts = [f"answer {next(self.ids)}" for _ in prompts]
        for i, text in enumerate(texts):
            yield TokenEvent(i, text, 2)
            yield RowEnded(i, text, 2, True)
        return GenerationResult(texts, [2] * len(texts), [True] * len(texts))

    def _on_ready(self, _shown) -> None:
        self.ready_at = self.now
        if self.judged_at is not None:
            self.waits.append(self.now - self.judged_at)
            self.judged_at = None

    def start(self) -> float:
        """Open the page; returns when that was."""
        self.controller.start()
        return self.now

    def run(self, verdicts: int, think: float = THINK) -> None:
        """Run the worker and the person until `verdicts` more verdicts are given."""
        target = len(self.controller.history) + verdicts
        while len(self.controller.history) < target:
            if self.job is None and self.host.jobs:
                taken = self.host.jobs.pop(0)
                if not taken.cancelled:
                    before = len(self.rows)
                    events = taken.work()
                    end = max(self.now, self.free_at) + self.fixed + self.per_row * sum(self.rows[before:])
                    self.job = (end, events)
                continue
            pair = self.controller.current
            verdict_at = self.ready_at + think if pair is not None and pair.done else math.inf
            if self.job is not None and self.job[0] <= verdict_at:
                (self.now, events), self.job = self.job, None
                self.free_at = self.now
                for signal, value in events:
                    signal.emit(value)
                continue
            assert verdict_at < math.inf, "nothing to judge and nothing being written"
            self.now = verdict_at
            self.judged_at = self.now
            assert self.controller.judge("left")

    def per_minute(self, first_ready: float) -> float:
        """Verdicts a minute from the first pair complete to the last verdict's next pair."""
        return len(self.controller.history) / ((self.ready_at - first_ready) / 60)


@pytest.fixture
def prompts(fresh_db):
    for i in range(120):
        fresh_db.add_prompt(f"Prompt {i}", "import")
    return fresh_db


def test_the_first_pair_is_asked_for_at_once_in_a_small_batch(qapp, prompts, monkeypatch):
    """A first session with the 1B shape: opening the page submits one job at once, FIRST_ROWS
    answers with the pair shown among them, so it is complete one small batch after the model
    is ready (19.7 + 8 x 0.59 = 24.42 s; every answer at the 128-token cap)."""
    s = Session(monkeypatch, prompts, ONE_B)
    opened = s.start()
    assert len(s.host.jobs) == 1 and s.controller.current is not None and not s.controller.current.done
    shown = s.controller.current
    s.run(1)
    assert s.rows[0] == FIRST_ROWS == 8 and s.controller.history[0].pair is shown
    assert s.now - opened == pytest.approx(24.42 + THINK)  # complete after one batch, judged 4 s later
    assert s.waits == [0.0] and s.controller.current.done  # the next pair came in the same batch


def test_the_batch_clock_starts_when_the_model_is_ready(qapp, prompts, monkeypatch):
    """The first batch waits for the model to load (seconds at 1B): that is not sampling time."""
    s = Session(monkeypatch, prompts, ONE_B)
    s.start()
    s.now += 9.0  # the load
    s.host.modelStateChanged.emit("ready", "Llama-3.2-1B")
    s.now += 24.4
    for signal, value in s.host.jobs.pop(0).work():
        signal.emit(value)
    assert [(r, round(t, 2)) for r, t in s.controller.queue.pace.batches] == [(8, 24.4)]


def test_later_batches_grow_with_the_measured_throughput(qapp, prompts, monkeypatch):
    """After the first batch the 1B sampler's batches grow to what its measured time calls for,
    one batch at a time (the queue used to fill all 19 free places at once, ~41 s, while the
    person had 16 s of pairs to read: p95 waits of 35-48 s, issue 34). One size measured, a row
    is taken to cost 4% of the fixed time: 18.5 s + 0.74 s an answer, and n pairs read at 4 s
    outlast the next n when 4 n >= 1.25 (18.5 + 1.48 n): n = 11, 22 answers. Two sizes give the
    sampler's own line (19.7 s + 0.59 s): n >= 9.75, 10 pairs."""
    s = Session(monkeypatch, prompts, ONE_B)
    s.start()
    s.run(20)
    assert s.rows[:3] == [8, 22, 20]
    fixed, per_row = s.controller.queue.pace.batch_time()
    assert fixed == pytest.approx(19.7) and per_row == pytest.approx(0.59)
    # one wait in the first session: the 4 pairs of the first batch (16 s) are read before the
    # second (19.7 + 22 x 0.59 = 32.68 s) is written; none after it
    assert [w for w in s.waits if w > 0] == [pytest.approx(32.68 - 4 * THINK)]
    assert s.waits.index(max(s.waits)) == 3


def test_a_remembered_pace_starts_with_its_batch_and_never_waits(qapp, prompts, monkeypatch, tmp_path):
    """The second session at 1B starts with the batch the first one measured (10 pairs), so the
    person never waits: 20 verdicts at 4 s, 15 a minute (issue 34's goal: >= 12, p95 < 3 s)."""
    memory = tmp_path / "labeling-pace.json"
    first = Session(monkeypatch, prompts, ONE_B, memory=memory)
    first.start()
    first.run(20)
    s = Session(monkeypatch, prompts, ONE_B, memory=memory)
    s.start()
    s.run(1)
    first_ready = s.now - THINK
    s.run(19)
    assert s.rows[0] == 20 and s.waits == [0.0] * 20
    assert s.per_minute(first_ready) == pytest.approx(60 / THINK)


def test_the_default_model_keeps_its_short_queue_and_its_pace(qapp, prompts, monkeypatch):
    """135M: batches of 4 pairs (8 s) already outlast themselves at 4 s a verdict, so the queue
    stays the old 8 pairs, 4 at a time, and no verdict waits, from the first session on."""
    s = Session(monkeypatch, prompts, SMALL)
    s.start()
    s.run(1)
    first_ready = s.now - THINK
    s.run(19)
    assert set(s.rows) == {8} and s.controller.queue.ahead() == 8
    assert s.waits == [0.0] * 20 and s.per_minute(first_ready) == pytest.approx(60 / THINK)


def model_folder(tmp_path, name, config):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(("dtype", "free_gib", "rows"), [
    ("float32", 4, 12),  # 88 MB an answer (2 x 28 x 1024 x 4 bytes x 384 tokens): 1 GiB holds 12
    ("bfloat16", 8, MAX_ROWS // 2),  # 48 fit: the batch's own ceiling holds
])
def test_the_batch_is_capped_by_the_memory_for_its_keys_and_values(qapp, prompts, monkeypatch, tmp_path,
                                                                   dtype, free_gib, rows):
    """Llama-3.2-3B's shape on a CPU too slow for the person (60 s + 2 s an answer) calls for
    the biggest batch; a quarter of the free memory for the batch's keys/values caps it."""
    monkeypatch.setattr(label_queue, "memory_budget", lambda device: (free_gib * 2**30, device))
    device = SimpleNamespace(device="cpu", dtype=dtype, describe=lambda: f"cpu, {dtype}")
    s = Session(monkeypatch, prompts, (60.0, 2.0), model_folder(tmp_path, "llama-3b", LLAMA_3B), device)
    s.start()
    s.run(3)
    assert s.rows[0] == FIRST_ROWS and s.rows[1] == rows
    assert s.controller.queue.pace.max_rows >= rows


def test_the_pace_memory_is_keyed_by_the_models_size(qapp, prompts, monkeypatch, tmp_path):
    """A checkpoint of the 1B model (another folder, the same config) starts from the pace
    measured on its base; a model of another size does not."""
    memory = tmp_path / "labeling-pace.json"
    device = SimpleNamespace(device="cpu", dtype="bfloat16", describe=lambda: "cpu, bfloat16")
    base = Session(monkeypatch, prompts, ONE_B, model_folder(tmp_path, "base", LLAMA_1B), device, memory)
    base.start()
    base.run(5)
    assert base.controller.queue.pace.sampler == "1.2B model on cpu, bfloat16, 128 new tokens"
    checkpoint = Session(monkeypatch, prompts, ONE_B, model_folder(tmp_path, "run-1", LLAMA_1B), device, memory)
    checkpoint.start()
    measured = [(rows, round(seconds, 2)) for rows, seconds in base.controller.queue.pace.batches]
    assert checkpoint.controller.queue.pace.batches == measured == [(8, 24.42), (22, 32.68)]
    # its first batch is the one those call for (10 pairs, `test_later_batches_grow...`), not 4
    assert len(checkpoint.controller.queue.pairs) + 1 == 10 and len(checkpoint.host.jobs) == 1
    small = {**LLAMA_1B, "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
             "vocab_size": 49152, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}
    other = Session(monkeypatch, prompts, SMALL, model_folder(tmp_path, "smol", small), device, memory)
    other.start()
    assert other.controller.queue.pace.batches == [] and other.controller.queue.pace.sampler.startswith("135M model")
