"""How far ahead the Label page samples: sized by the sampler's and the person's measured pace.

The queue is topped up in one batch once half of it is free (`LabelQueue.fill`), so
while a batch is written the person reads the other half. No wait needs that half to last
the batch: (queue / 2) x seconds per verdict >= seconds per batch. Both sides differ by
machine and person by an order of magnitude, so both are measured, not assumed:

* a batch of the default model's answers (128 tokens) took 7-9 s for 1-4 pairs on an
  avx512_bf16 CPU in bf16, where a queue of 8 pairs kept a 4 s person from waiting; on a
  2-core AVX2 CPU (fp32; no native bf16) it took 28 s for 1 pair, 37 s for 4, 46 s for 8
  and 62 s for 16 (bench/README.md, "Labeling pace"): a queue of 8 there left the person
  waiting 12-23 s every few verdicts;
* a person's seconds per verdict range from ~2 (a quick glance) to 15+ (a ranking read
  carefully).

Decoding reads the weights once per token step whatever the batch, so a bigger batch costs
a little more time for many more answers: the queue this sizes converges (on the AVX2 CPU,
queue 2b with b = 1.25 (27 + 2.2 b) / 4.5 gives b ~ 19 pairs; capped below).

What was measured is remembered (a small JSON file in the user cache, `memory_file()`): the
batch time per sampler (model, device and precision, answer length) and the person's seconds
per verdict per task (pairwise, ranking of k). A new session then starts with the queue the
last one ended with, and samples its first half in one batch with the pair shown first
(`first_batch`): on the AVX2 CPU the first session's start-up cost the person two long waits
(45 s after the first verdict, 66 s at the ninth) while the queue grew from 8 to 32 pairs. A
first session does the same with the starting queue (4 pairs), so that the first batch measured
is written before the first verdict and sizes the queue while the person reads it.
A file that is missing, unreadable or unwritable costs only that memory, never an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dpo_engine.paths import cache_dir, write_cache_json

MARGIN = 1.25  # the half-queue should outlast the batch by this much (batch times vary ~20%)
START_ROWS = 16  # answers sampled ahead before anything is measured (8 pairs: the old fixed queue)
MAX_ROWS = 64  # answers sampled ahead at most: their keys/values cost ~0.5 GB for the default model
# a person's seconds per verdict until one is measured: the middle think time of the scripted
# person in bench/labeling_pace.py
FIRST_GUESS_S = 4.0
EMA = 0.3  # weight of the newest verdict time: follows a person who speeds up, forgets one long pause
MEMORY_VERSION = 1


def memory_file() -> Path:
    """Where the measured pace is remembered between sessions (tests point it elsewhere)."""
    return cache_dir() / "labeling-pace.json"


class Pace:
    """The measured pace of sampling and of the person, and the queue length they call for.

    `memory`: the JSON file that keeps them between sessions (None: this session only).
    `use(sampler, task)` says what is being measured; it recalls what an earlier session
    measured for that sampler and that task, if anything."""

    def __init__(self, memory: Path | None = None) -> None:
        self.batch_s: float | None = None  # seconds the last full batch took to write
        self.verdict_s: float | None = None  # the person's seconds per prompt (a verdict or a ranking)
        self.memory = memory
        self.sampler = self.task = ""
        self._record = self._read()

    # ------------------------------------------------------------------ memory
    def _read(self) -> dict:
        empty = {"version": MEMORY_VERSION, "samplers": {}, "tasks": {}}
        if self.memory is None:
            return empty
        try:
            record = json.loads(self.memory.read_text())
        except (OSError, ValueError):
            return empty
        if not isinstance(record, dict) or record.get("version") != MEMORY_VERSION:
            return empty
        for part in ("samplers", "tasks"):
            if not isinstance(record.get(part), dict):
                record[part] = {}
        return record

    @staticmethod
    def _recall(part: dict, key: str) -> float | None:
        value = part.get(key)
        return float(value) if isinstance(value, (int, float)) and 0 < value < 3600 else None

    def use(self, sampler: str, task: str) -> None:
        """Measure for `sampler` (what writes the answers and how long they are) and `task`
        (pairwise or ranking of k): a new one starts from what was remembered for it."""
        if sampler != self.sampler:
            self.sampler = sampler
            self.batch_s = self._recall(self._record["samplers"], sampler)
        if task != self.task:
            self.task = task
            self.verdict_s = self._recall(self._record["tasks"], task)

    def _save(self) -> None:
        if self.memory is not None:  # a read-only cache: this session's pace is used, only not remembered
            write_cache_json(self.memory, self._record)

    # ------------------------------------------------------------------ measuring
    def batch_written(self, seconds: float) -> None:
        self.batch_s = seconds
        if self.sampler:
            self._record["samplers"][self.sampler] = round(seconds, 2)
            self._save()

    def judged(self, seconds: float) -> None:
        """A verdict `seconds` after its prompt's answers were complete on screen."""
        seconds = min(max(seconds, 0.5), 60.0)  # a pause for coffee is not the person's pace
        self.verdict_s = seconds if self.verdict_s is None else EMA * seconds + (1 - EMA) * self.verdict_s
        if self.task:
            self._record["tasks"][self.task] = round(self.verdict_s, 2)
            self._save()

    def ahead(self, answers_per_prompt: int) -> int:
        """Prompts to keep queued or being sampled (each writes `answers_per_prompt` answers)."""
        low, high = START_ROWS // answers_per_prompt, max(1, MAX_ROWS // answers_per_prompt)
        if self.batch_s is None:
            return low
        per_verdict = self.verdict_s or FIRST_GUESS_S
        return max(low, min(high, 2 * math.ceil(MARGIN * self.batch_s / per_verdict)))

    def first_batch(self, answers_per_prompt: int) -> int:
        """Prompts to sample in one batch when nothing is on screen, the one shown first among
        them (its answers stream while the batch is written): half the queue, which the person
        reads while the other half is written, so no verdict waits for the queue to fill.
        Unmeasured (a first session), half the starting queue: its time is the first batch
        measured, which sizes the rest of the queue before the person has read those pairs.
        (Sampling the shown pair alone first, then the queue behind it, made the first
        verdict wait for the whole queue's batch: 11.6 verdicts/min, p95 wait 10 s at a 4 s
        think on an AMX Xeon; decoding 8 answers costs little more than 2 on a CPU.)"""
        return max(1, (self.ahead(answers_per_prompt) + 1) // 2)
