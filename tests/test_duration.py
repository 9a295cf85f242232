"""How long a run will take, said before it starts (`dpo_engine.train.duration`): the work a run
does counted as the trainer counts it, a run's phases timed from its events, the speed kept per
model and settings, and the estimate of a run with a known speed."""

import pytest

from dpo_engine.pairs import PreferencePair
from dpo_engine.train import duration
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.train.duration import (RunClock, RunSpeed, RunWork, estimate_seconds, read_speed, run_work,
                                       speed_key, write_speed)
from dpo_engine.train.events import ReferenceProgress, StepEvent, TrainSummary


def pair(n: int) -> PreferencePair:
    return PreferencePair("p" * n, "c" * n, "r" * n)  # 3n characters


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"output_dir": "out", "batch_size": 2, "grad_accum": 2, "epochs": 3, **kw})


def test_the_work_is_counted_as_the_trainer_counts_steps():
    pairs = [pair(100)] * 10  # 300 characters each
    work = run_work(config(eval_fraction=0.0), pairs)
    assert work.steps == 3 * 3  # ceil(ceil(10 / 2) / 2) = 3 steps an epoch, 3 epochs
    assert work.trained_kchars == pytest.approx(9 * 4 * 0.3)  # 4 pairs a step
    assert work.scored_kchars == pytest.approx(3.0)
    held = run_work(config(), pairs, eval_pairs=[pair(50)] * 2)
    assert held.scored_kchars == pytest.approx(3.0 + 0.3)
    assert run_work(config(max_steps=5, eval_fraction=0.0), pairs).steps == 5


def step(n: int, elapsed: float) -> StepEvent:
    return StepEvent(step=n, total_steps=4, epoch=0.0, grad_norm=1.0, learning_rate=1e-5, tokens_per_s=10.0,
                     elapsed=elapsed, eta=0.0, loss=0.69, rewards_chosen=0.0, rewards_rejected=0.0,
                     rewards_accuracies=0.0, rewards_margins=0.0, logps_chosen=-1.0, logps_rejected=-1.0)


def test_a_run_s_phases_are_timed_from_its_events_and_estimate_its_own_time(monkeypatch):
    """A run of 4 steps: 3 s of loading, a reference pass of 4 batches of 2 pairs at 1 s a batch,
    then 2 s a step. The clock sees the pass's pace from its batches after the first (the first
    one's start is hidden behind the load), the loop's from the steps after the first (6 s for 3
    steps of 2 kchars), and counts the rest as fixed: 3 s. The estimate of the same work is the
    run's own time, 15 s."""
    now = [0.0]
    monkeypatch.setattr(duration.time, "perf_counter", lambda: now[0])
    work = RunWork(steps=4, trained_kchars=8.0, scored_kchars=2.0)
    clock = RunClock(work)
    for t, done in ((4.0, 2), (5.0, 4), (6.0, 6), (7.0, 8)):
        now[0] = t
        clock.observe(ReferenceProgress(done, 8, cached=False))
    for n in (1, 2, 3, 4):
        now[0] = 7.0 + 2 * n
        clock.observe(step(n, elapsed=2.0 * n))
    now[0] = 15.0
    clock.observe(TrainSummary("finished", 4, 4, 15.0, "out", "", 10.0, 0.5))  # nothing after the last step
    speed = clock.speed()
    assert speed.setup_s == pytest.approx(3.0)
    assert speed.score_s_per_kchar == pytest.approx(4.0 / 2.0)
    assert speed.loop_s_per_kchar == pytest.approx(8.0 / 8.0)
    assert estimate_seconds(work, speed) == pytest.approx(15.0)
    bigger = RunWork(steps=8, trained_kchars=16.0, scored_kchars=4.0)  # twice the pairs: 3 + 8 + 16
    assert estimate_seconds(bigger, speed) == pytest.approx(27.0)


def test_what_a_run_does_once_stays_fixed_in_the_estimate(monkeypatch):
    """A first step 5 s slower than the others (kernel warm-up) and 6 s of final eval and save after
    the last step are fixed costs: a run of twice the steps does not pay them twice."""
    now = [0.0]
    monkeypatch.setattr(duration.time, "perf_counter", lambda: now[0])
    clock = RunClock(RunWork(steps=4, trained_kchars=4.0, scored_kchars=1.0))
    clock.observe(ReferenceProgress(4, 4, cached=True))
    for n, t in enumerate((8.0, 9.0, 10.0, 11.0), start=1):  # 2 s of loading, then 6 s for step 1, 1 s each after
        now[0] = t
        clock.observe(step(n, elapsed=t - 2.0))
    now[0] = 17.0
    clock.observe(TrainSummary("finished", 4, 4, 17.0, "out", "", 10.0, 0.5))
    speed = clock.speed()
    assert speed.loop_s_per_kchar == pytest.approx(1.0) and speed.score_s_per_kchar is None
    assert speed.setup_s == pytest.approx(2.0 + 5.0 + 6.0)
    assert estimate_seconds(RunWork(8, 8.0, 2.0), speed) == pytest.approx(13.0 + 8.0)


def test_too_short_a_run_measures_nothing(monkeypatch):
    clock = RunClock(RunWork(1, 1.0, 1.0))
    clock.observe(step(1, elapsed=1.0))
    clock.observe(TrainSummary("finished", 1, 1, 2.0, "out", "", 10.0, 0.5))
    assert clock.speed() is None  # one step: no pace between steps to time


def test_speeds_are_kept_per_key_and_a_cached_reference_keeps_the_last_rate(tmp_path):
    path = tmp_path / "speed.json"
    full, lora = config(), config(lora=LoraSettings())
    assert speed_key(full) != speed_key(lora) != speed_key(config(gradient_checkpointing=True))
    assert read_speed(speed_key(full), path) is None
    write_speed(speed_key(full), RunSpeed(2.0, 0.5, 1.0, "2026-12-07T10:00:00+00:00"), path)
    write_speed(speed_key(full), RunSpeed(3.0, None, 1.5, "2026-12-08T10:00:00+00:00"), path)
    assert read_speed(speed_key(full), path) == RunSpeed(3.0, 0.5, 1.5, "2026-12-08T10:00:00+00:00")
    assert read_speed(speed_key(lora), path) is None
    path.write_text("{not json")
    assert read_speed(speed_key(full), path) is None  # a damaged record: no estimate, no error
