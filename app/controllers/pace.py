"""How far ahead the Label page samples: sized by the sampler's and the person's measured pace.

The queue is topped up in one batch once half of it is free (`LabelController.fill`), so
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
"""

from __future__ import annotations

import math

MARGIN = 1.25  # the half-queue should outlast the batch by this much (batch times vary ~20%)
START_ROWS = 16  # answers sampled ahead before anything is measured (8 pairs: the old fixed queue)
MAX_ROWS = 64  # answers sampled ahead at most: their keys/values cost ~0.5 GB for the default model
FIRST_GUESS_S = 4.0  # a person's seconds per verdict until one is measured (issue 15's scripted person)
EMA = 0.3  # weight of the newest verdict time: follows a person who speeds up, forgets one long pause


class Pace:
    """The measured pace of sampling and of the person, and the queue length they call for."""

    def __init__(self) -> None:
        self.batch_s: float | None = None  # seconds the last full batch took to write
        self.verdict_s: float | None = None  # the person's seconds per prompt (a verdict or a ranking)

    def batch_written(self, seconds: float) -> None:
        self.batch_s = seconds

    def judged(self, seconds: float) -> None:
        """A verdict `seconds` after its prompt's answers were complete on screen."""
        seconds = min(max(seconds, 0.5), 60.0)  # a pause for coffee is not the person's pace
        self.verdict_s = seconds if self.verdict_s is None else EMA * seconds + (1 - EMA) * self.verdict_s

    def ahead(self, answers_per_prompt: int) -> int:
        """Prompts to keep queued or being sampled (each writes `answers_per_prompt` answers)."""
        low, high = START_ROWS // answers_per_prompt, max(1, MAX_ROWS // answers_per_prompt)
        if self.batch_s is None:
            return low
        per_verdict = self.verdict_s or FIRST_GUESS_S
        return max(low, min(high, 2 * math.ceil(MARGIN * self.batch_s / per_verdict)))
