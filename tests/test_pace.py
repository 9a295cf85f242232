"""The Label page's queue length follows the measured pace of sampling and of the person."""

import pytest

from app.controllers.pace import MAX_ROWS, START_ROWS, Pace


def test_before_any_batch_is_timed_the_queue_is_the_old_fixed_one():
    pace = Pace()
    assert pace.ahead(2) == START_ROWS // 2 == 8  # pairwise: 8 pairs
    assert pace.ahead(4) == 4  # a ranking of 4 writes as many answers as 2 pairs
    pace.judged(3.0)
    assert pace.ahead(2) == 8  # a verdict alone says nothing about the sampler


def test_a_fast_sampler_keeps_the_short_queue():
    pace = Pace()
    pace.batch_written(8.0)  # an avx512_bf16 CPU: 4 pairs in ~8 s
    for _ in range(5):
        pace.judged(4.5)
    assert pace.ahead(2) == 8


def test_a_slow_sampler_or_a_quick_person_gets_a_longer_queue():
    slow = Pace()
    slow.batch_written(46.0)  # 8 pairs on the 2-core AVX2 CPU in fp32
    for _ in range(5):
        slow.judged(4.5)
    # half the queue must outlast the next batch: 1.25 * 46 / 4.5 = 12.8 -> 13 prompts, x 2
    assert slow.ahead(2) == 26
    assert slow.ahead(2) // 2 * 4.5 >= 46.0
    quick = Pace()
    quick.batch_written(20.0)
    for _ in range(10):
        quick.judged(2.0)
    assert quick.ahead(2) == 26  # 1.25 * 20 / 2 = 12.5 -> 13 prompts, x 2


def test_the_queue_is_capped_in_answers():
    pace = Pace()
    pace.batch_written(300.0)  # a model far too slow for live labeling
    pace.judged(2.0)
    assert pace.ahead(2) == MAX_ROWS // 2
    assert pace.ahead(4) == MAX_ROWS // 4  # rankings of 4: as many answers


@pytest.mark.parametrize("pause", [600.0, 3600.0])
def test_one_long_pause_does_not_collapse_the_queue(pause):
    pace = Pace()
    pace.batch_written(46.0)
    for _ in range(5):
        pace.judged(4.0)
    before = pace.ahead(2)
    pace.judged(pause)  # the person went for coffee: counted as 60 s at most, weighted 0.3
    assert pace.verdict_s < 25
    assert pace.ahead(2) >= 8 and before > pace.ahead(2)


# ---------------------------------------------------------------------------- memory between sessions
SLOW = "SmolLM2-135M-Instruct on cpu, float32, 128 new tokens"


def measured(memory, sampler=SLOW, task="pairwise", batch=46.0, verdicts=(4.0, 5.0, 4.5)):
    pace = Pace(memory)
    pace.use(sampler, task)
    pace.batch_written(batch)
    for seconds in verdicts:
        pace.judged(seconds)
    return pace


def test_the_pace_is_remembered_for_the_next_session(tmp_path):
    memory = tmp_path / "cache" / "labeling-pace.json"  # a folder not made yet
    before = measured(memory)
    after = Pace(memory)
    assert after.batch_s is None  # nothing said what is measured yet
    after.use(SLOW, "pairwise")
    assert after.batch_s == 46.0  # recalled before this session sampled anything
    assert after.verdict_s == pytest.approx(before.verdict_s, abs=0.01)
    assert after.ahead(2) == before.ahead(2) == 28  # 1.25 * 46 / 4.36 = 13.2 -> 14 prompts, x 2
    # nothing on screen: the first half of that queue in one batch, the pair shown among them
    assert after.first_batch(2) == 14


def test_the_memory_is_per_sampler_and_per_task(tmp_path):
    memory = tmp_path / "labeling-pace.json"
    measured(memory)
    other_model = Pace(memory)
    other_model.use("a 1B model on cpu, float32, 128 new tokens", "pairwise")
    assert other_model.batch_s is None and other_model.verdict_s is not None  # the person is the same
    # an unmeasured sampler: half the starting queue (8 pairs; 4 rankings of 4), the shown one among them
    assert other_model.first_batch(2) == 4 and other_model.first_batch(4) == 2
    ranking = Pace(memory)
    ranking.use(SLOW, "ranking of 4")
    assert ranking.batch_s == 46.0 and ranking.verdict_s is None  # reading 4 answers is another pace
    ranking.use(SLOW, "pairwise")  # switching back recalls it
    assert ranking.verdict_s is not None


def test_a_new_measurement_replaces_the_remembered_one(tmp_path):
    memory = tmp_path / "labeling-pace.json"
    measured(memory, batch=46.0)
    measured(memory, batch=9.0)  # the machine got a GPU, or bf16
    fresh = Pace(memory)
    fresh.use(SLOW, "pairwise")
    assert fresh.batch_s == 9.0


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"version": 99, "samplers": {}}',
                                     '{"version": 1, "samplers": [], "tasks": {"pairwise": "fast"}}',
                                     '{"version": 1, "samplers": {"%s": -5}, "tasks": {}}' % SLOW])
def test_a_damaged_memory_is_ignored_and_replaced(tmp_path, content):
    memory = tmp_path / "labeling-pace.json"
    memory.write_text(content)
    pace = Pace(memory)
    pace.use(SLOW, "pairwise")
    assert pace.batch_s is None and pace.verdict_s is None and pace.first_batch(2) == 4
    pace.batch_written(30.0)
    again = Pace(memory)
    again.use(SLOW, "pairwise")
    assert again.batch_s == 30.0


def test_an_unwritable_memory_costs_only_the_memory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    pace = measured(blocker / "labeling-pace.json")  # its folder cannot be made: no error
    assert pace.batch_s == 46.0 and pace.ahead(2) == 28  # this session still follows its pace
    no_memory = measured(None)
    assert no_memory.ahead(2) == 28 and no_memory.first_batch(2) == 14
