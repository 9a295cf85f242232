"""How far ahead the Label page samples, and in what batches: sized by the sampler's and the
person's measured pace and by the memory a batch's keys/values take.

The queue is topped up in one batch once half of it is free (`LabelQueue.fill`), so
while a batch is written the person reads the other half. No wait needs that half to last
the batch: (queue / 2) x seconds per verdict >= seconds per batch. Both sides differ by
machine, model size and person by an order of magnitude, so both are measured, not assumed:

* a batch of the default model's answers (128 tokens) took 7-9 s for 1-4 pairs on an
  avx512_bf16 CPU in bf16, where a queue of 8 pairs kept a 4 s person from waiting; on a
  2-core AVX2 CPU (fp32; no native bf16) it took 28 s for 1 pair, 37 s for 4, 46 s for 8
  and 62 s for 16 (bench/README.md, "Labeling pace"): a queue of 8 there left the person
  waiting 12-23 s every few verdicts;
* a 1B-shaped model in bf16 on a 2-core AMX Xeon samples 6.5 tokens/s for one answer and
  43 tokens/s in a batch of 8 (issue 34): a batch of 128-token answers takes ~20 s whatever
  its size, and a first session there waited 35-48 s (p95) while the queue grew;
* a person's seconds per verdict range from ~2 (a quick glance) to 15+ (a ranking read
  carefully).

Decoding reads the weights once per token step whatever the batch, so a batch's time is a
line in its rows (answers): t(rows) = fixed + per_row x rows, fitted to the batches measured
for this sampler; from batches of one size alone per_row is taken as PER_ROW of fixed. The
batch (`batch`) is the smallest whose reading outlasts the next batch of its size:
n x verdict >= MARGIN x t(n x answers), n = MARGIN x fixed / (verdict - MARGIN x per_row x
answers), and the queue twice that. This finds at once the size that growing the queue from
the last batch's time only converged to, and no top-up is bigger: at 1B a first session
filled 19 free places in one batch (~40 s) while the person had 4 pairs (16 s) to read.
A batch is also capped by the memory its keys/values take (`kv_rows`): harmless at 135M
(64 answers cost ~0.5 GB), decisive for a 3B model without enough free memory.

What was measured is remembered (a small JSON file in the user cache, `memory_file()`): the
batches' (rows, seconds) per sampler (the model's size, device and precision, answer length;
`LabelQueue` names it: a checkpoint of the same model shares its base's pace) and the person's
seconds per verdict per task (pairwise, ranking of k). A new session then starts with the batch
the last one measured, the pair shown first among it (`LabelQueue.fill`): on the AVX2 CPU the first
session's start-up cost the person two long waits (45 s after the first verdict, 66 s at the
ninth) while the queue grew from 8 to 32 pairs. A first session samples FIRST_ROWS answers at
once, the shown pair among them, so that the first batch measured is written before the first
verdict and sizes the rest while the person reads it.
A file that is missing, unreadable or unwritable costs only that memory, never an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dpo_engine.paths import cache_dir, write_cache_json

MARGIN = 1.25  # the half-queue should outlast the batch by this much (batch times vary ~20%)
START_ROWS = 16  # answers queued at least (8 pairs: the old fixed queue, enough at 135M on a bf16 CPU)
FIRST_ROWS = 8  # answers in a first session's first batch: the shown pair and 3 more (4 pairs)
MAX_ROWS = 64  # answers queued at most: a batch, half of them, is then 32 (~0.25 GB of keys/values at 135M)
# a batch's time per answer row, as a share of its fixed time, until two batch sizes are
# measured: 0.043 on the AVX2 CPU at 135M fp32 (28 s for 1 pair, 62 s for 16), 0.031 for the
# 1B shape in bf16 on the AMX Xeon (6.5 tokens/s for 1 answer, 43 for 8); the higher one
PER_ROW = 0.04
BATCHES_KEPT = 8  # (rows, seconds) remembered per sampler: recent enough to follow a changed machine
# a person's seconds per verdict until one is measured: the middle think time of the scripted
# person in bench/labeling_pace.py
FIRST_GUESS_S = 4.0
EMA = 0.3  # weight of the newest verdict time: follows a person who speeds up, forgets one long pause
# a batch's keys/values may take this share of the free memory: a training run may start beside
# it on a GPU, and the prefill's activations, the GUI and allocator slack need the rest
KV_SHARE = 0.25
# a prompt's tokens with its chat template, for the memory estimate: the starter prompts are
# 30-80, and a batch pads every prompt to its longest
PROMPT_TOKENS = 256
MEMORY_VERSION = 2  # 2: batches as (rows, seconds) per sampler; 1 kept seconds only


def memory_file() -> Path:
    """Where the measured pace is remembered between sessions (tests point it elsewhere)."""
    return cache_dir() / "labeling-pace.json"


def kv_rows(layers: int, kv_dim: int, value_bytes: int, new_tokens: int, free_bytes: int) -> int:
    """Answers one batch may decode at once: their keys and values (2 x `layers` x `kv_dim`
    values a token, for the prompt and the answer) within KV_SHARE of `free_bytes`."""
    per_row = 2 * layers * kv_dim * value_bytes * (PROMPT_TOKENS + new_tokens)
    if per_row <= 0 or free_bytes <= 0:
        return MAX_ROWS  # the shape or the memory unknown: the queue's own ceiling
    return max(1, int(KV_SHARE * free_bytes // per_row))


class Pace:
    """The measured pace of sampling and of the person, and the batch and queue they call for.

    `memory`: the JSON file that keeps them between sessions (None: this session only).
    `use(sampler, task)` says what is being measured; it recalls what an earlier session
    measured for that sampler and that task, if anything. `max_rows`: the most answers one
    batch may write (the memory for their keys/values, `kv_rows`), set by the queue."""

    def __init__(self, memory: Path | None = None) -> None:
        self.batches: list[tuple[int, float]] = []  # (rows, seconds) of this sampler's full batches, oldest first
        self.verdict_s: float | None = None  # the person's seconds per prompt (a verdict or a ranking)
        self.max_rows = MAX_ROWS
        self.memory = memory
        self.sampler = self.task = ""
        self._record = self._read()

    @property
    def batch_s(self) -> float | None:
        """Seconds the last full batch took to write (None before one was measured)."""
        return self.batches[-1][1] if self.batches else None

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
    def _recall_seconds(part: dict, key: str) -> float | None:
        value = part.get(key)
        return float(value) if isinstance(value, (int, float)) and 0 < value < 3600 else None

    @staticmethod
    def _recall_batches(part: dict, key: str) -> list[tuple[int, float]]:
        value = part.get(key)
        good = [(int(b[0]), float(b[1])) for b in value if isinstance(b, list) and len(b) == 2
                and all(isinstance(x, (int, float)) for x in b) and b[0] >= 1 and 0 < b[1] < 3600] \
            if isinstance(value, list) else []
        return good[-BATCHES_KEPT:]

    def use(self, sampler: str, task: str) -> None:
        """Measure for `sampler` (what writes the answers and how long they are) and `task`
        (pairwise or ranking of k): a new one starts from what was remembered for it."""
        if sampler != self.sampler:
            self.sampler = sampler
            self.batches = self._recall_batches(self._record["samplers"], sampler)
        if task != self.task:
            self.task = task
            self.verdict_s = self._recall_seconds(self._record["tasks"], task)

    def _save(self) -> None:
        if self.memory is not None:  # a read-only cache: this session's pace is used, only not remembered
            write_cache_json(self.memory, self._record)

    # ------------------------------------------------------------------ measuring
    def batch_written(self, seconds: float, rows: int) -> None:
        """A batch of `rows` answers (all of them complete) took `seconds` to write."""
        self.batches = [*self.batches, (rows, seconds)][-BATCHES_KEPT:]
        if self.sampler:
            self._record["samplers"][self.sampler] = [[r, round(t, 2)] for r, t in self.batches]
            self._save()

    def judged(self, seconds: float) -> None:
        """A verdict `seconds` after its prompt's answers were complete on screen."""
        seconds = min(max(seconds, 0.5), 60.0)  # a pause for coffee is not the person's pace
        self.verdict_s = seconds if self.verdict_s is None else EMA * seconds + (1 - EMA) * self.verdict_s
        if self.task:
            self._record["tasks"][self.task] = round(self.verdict_s, 2)
            self._save()

    # ------------------------------------------------------------------ sizing
    def batch_time(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per row) of a batch, from the batches measured (None: none)."""
        if not self.batches:
            return None
        rows = [r for r, _ in self.batches]
        if len(set(rows)) == 1:  # one size measured: the per-row share of the fixed time is assumed
            fixed = sum(t for _, t in self.batches) / len(self.batches) / (1 + PER_ROW * rows[0])
            return fixed, PER_ROW * fixed
        mean_r = sum(rows) / len(rows)
        mean_t = sum(t for _, t in self.batches) / len(self.batches)
        slope = sum((r - mean_r) * (t - mean_t) for r, t in self.batches) / sum((r - mean_r) ** 2 for r in rows)
        per_row = max(slope, 0.0)  # noise may tilt the line down; a bigger batch is never faster
        fixed = max(mean_t - per_row * mean_r, 0.1 * min(t for _, t in self.batches))
        return fixed, per_row

    def batch(self, answers_per_prompt: int) -> int:
        """Prompts to sample in one batch: before any is measured FIRST_ROWS answers' worth,
        then the smallest batch whose reading outlasts the next (module docstring), never
        fewer than FIRST_ROWS answers, never more than `max_rows` (nor half of MAX_ROWS)."""
        cap = max(1, min(self.max_rows, MAX_ROWS // 2) // answers_per_prompt)
        least = max(1, FIRST_ROWS // answers_per_prompt)  # a batch costs about the same down to here
        line = self.batch_time()
        if line is None:
            return min(cap, least)
        fixed, per_row = line
        spare = (self.verdict_s or FIRST_GUESS_S) - MARGIN * per_row * answers_per_prompt
        if spare <= 0:
            return cap  # the sampler cannot keep up at any size: its fastest pace, the biggest batch
        return min(cap, max(least, math.ceil(MARGIN * fixed / spare)))

    def ahead(self, answers_per_prompt: int) -> int:
        """Prompts to keep queued or being sampled (each writes `answers_per_prompt` answers):
        two batches, one read while the other is written; START_ROWS answers at least."""
        return max(START_ROWS // answers_per_prompt, 2 * self.batch(answers_per_prompt))
