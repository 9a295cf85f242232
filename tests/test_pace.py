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
