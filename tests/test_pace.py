"""The Label page's queue length follows the measured pace of sampling and of the person."""

import pytest

from app.controllers.pace import BATCHES_KEPT, FIRST_ROWS, MARGIN, MAX_ROWS, PER_ROW, START_ROWS, Pace, kv_rows


def test_before_any_batch_is_timed_the_queue_is_the_old_fixed_one():
    pace = Pace()
    assert pace.ahead(2) == START_ROWS // 2 == 8  # pairwise: 8 pairs
    assert pace.batch(2) == FIRST_ROWS // 2 == 4  # sampled 4 at a time, the shown pair among the first
    assert pace.ahead(4) == 4 and pace.batch(4) == 2  # a ranking of 4 writes as many answers as 2 pairs
    pace.judged(3.0)
    assert pace.ahead(2) == 8  # a verdict alone says nothing about the sampler


def test_a_fast_sampler_keeps_the_short_queue():
    pace = Pace()
    pace.batch_written(8.0, 8)  # an avx512_bf16 CPU: 4 pairs in ~8 s
    for _ in range(5):
        pace.judged(4.5)
    # 8 / 1.32 = 6.06 s fixed, 0.24 s an answer: 2 pairs already outlast the next 2
    # (4.5 x 2 >= 1.25 x (6.06 + 4 x 0.24)); batches stay at 4, the queue at 8
    assert pace.batch(2) == 4 and pace.ahead(2) == 8


def test_one_batch_size_measured_assumes_a_small_cost_per_answer():
    """From one batch size alone, a row costs PER_ROW of the fixed time: 34.8 s for 8 answers
    is 34.8 / (1 + 8 x 0.04) = 26.4 s fixed and 1.05 s an answer."""
    pace = Pace()
    pace.batch_written(34.8, 8)
    fixed, per_row = pace.batch_time()
    assert fixed == pytest.approx(26.36, abs=0.01) and per_row == pytest.approx(PER_ROW * fixed)


def test_two_batch_sizes_give_the_sampler_its_own_line():
    """The 1B shape in bf16 on the AMX Xeon (issue 34): 128 tokens at 6.5 tokens/s alone, 43 in
    a batch of 8: 0.154 s a step + 0.0046 s an answer, x 128 = 19.7 s + 0.59 s an answer."""
    pace = Pace()
    for rows in (8, 22, 20):
        pace.batch_written(19.7 + 0.59 * rows, rows)
    fixed, per_row = pace.batch_time()
    assert fixed == pytest.approx(19.7) and per_row == pytest.approx(0.59)
    pace.judged(4.0)
    # n pairs read at 4 s outlast the next n when 4 n >= 1.25 (19.7 + 1.18 n): n >= 9.75
    assert pace.batch(2) == 10 and pace.ahead(2) == 20
    assert pace.batch(2) * 4.0 >= MARGIN * (19.7 + 0.59 * 2 * pace.batch(2))
    assert (pace.batch(2) - 1) * 4.0 < MARGIN * (19.7 + 0.59 * 2 * (pace.batch(2) - 1))  # the smallest such


def test_a_batch_never_looks_faster_for_being_bigger():
    pace = Pace()
    pace.batch_written(30.0, 8)
    pace.batch_written(25.0, 32)  # noise: the bigger batch had shorter answers
    fixed, per_row = pace.batch_time()
    assert per_row == 0.0 and fixed == pytest.approx(27.5)


def test_a_slow_sampler_or_a_quick_person_gets_bigger_batches():
    slow = Pace()
    slow.batch_written(19.7 + 0.59 * 8, 8)  # the 1B shape's first batch, 4 pairs
    for _ in range(5):
        slow.judged(4.5)
    # one size: 18.5 s + 0.74 s an answer; 4.5 n >= 1.25 (18.5 + 1.48 n): n >= 8.8
    assert slow.batch(2) == 9 and slow.ahead(2) == 18
    quick = Pace()
    quick.batch_written(19.7 + 0.59 * 8, 8)
    for _ in range(10):
        quick.judged(2.5)
    assert quick.batch(2) == 16  # 2.5 n >= 1.25 (18.5 + 1.48 n) needs n >= 33: the cap, 32 answers
    assert quick.ahead(2) == MAX_ROWS // 2


def test_the_batch_is_capped_in_answers_and_by_memory():
    pace = Pace()
    pace.batch_written(300.0, 8)  # a model far too slow for live labeling
    pace.judged(2.0)
    assert pace.batch(2) == MAX_ROWS // 4 and pace.ahead(2) == MAX_ROWS // 2
    assert pace.batch(4) == MAX_ROWS // 8  # rankings of 4: as many answers
    pace.max_rows = 12  # what the keys/values of 12 answers leave free (`kv_rows`)
    assert pace.batch(2) == 6 and pace.batch(4) == 3
    assert pace.ahead(2) == 12  # the queue is two such batches


def test_the_memory_for_keys_and_values_caps_the_rows():
    """Llama-3.2-3B's shape (28 layers, 8 KV heads of 128) in fp32: 2 x 28 x 1024 x 4 bytes =
    229 KB a token, x (256 prompt + 128 answer tokens) = 88 MB an answer; a quarter of 4 GiB
    free holds 12 answers. In bf16 with 8 GiB free, 48. SmolLM2-135M (30 layers, 3 KV heads of
    64) in fp32 with 4 GiB free: 60, nearly the queue's own ceiling."""
    assert kv_rows(28, 1024, 4, 128, 4 * 2**30) == 12
    assert kv_rows(28, 1024, 2, 128, 8 * 2**30) == 48
    assert kv_rows(30, 192, 4, 128, 4 * 2**30) == 60
    assert kv_rows(28, 1024, 4, 128, 2**20) == 1  # always one answer: sampling is slow, not refused
    assert kv_rows(0, 0, 4, 128, 4 * 2**30) == MAX_ROWS  # shape unknown: only the queue's ceiling


@pytest.mark.parametrize("pause", [600.0, 3600.0])
def test_one_long_pause_does_not_collapse_the_queue(pause):
    pace = Pace()
    pace.batch_written(19.7 + 0.59 * 8, 8)
    for _ in range(5):
        pace.judged(4.0)
    before = pace.ahead(2)
    pace.judged(pause)  # the person went for coffee: counted as 60 s at most, weighted 0.3
    assert pace.verdict_s < 25
    assert pace.ahead(2) >= 8 and before > pace.ahead(2)


# ---------------------------------------------------------------------------- memory between sessions
SAMPLER = "1.2B model on cpu, bfloat16, 128 new tokens"  # what `LabelQueue` names a sampler
FIRST = (8, 24.4)  # the 1B shape's first batch on the AMX Xeon: 4 pairs, 19.7 s + 8 x 0.59 s


def measured(memory, sampler=SAMPLER, task="pairwise", batch=FIRST, verdicts=(4.0, 5.0, 4.5)):
    pace = Pace(memory)
    pace.use(sampler, task)
    pace.batch_written(batch[1], batch[0])
    for seconds in verdicts:
        pace.judged(seconds)
    return pace


def test_the_pace_is_remembered_for_the_next_session(tmp_path):
    memory = tmp_path / "cache" / "labeling-pace.json"  # a folder not made yet
    before = measured(memory)
    after = Pace(memory)
    assert after.batch_s is None  # nothing said what is measured yet
    after.use(SAMPLER, "pairwise")
    assert after.batches == [FIRST]  # recalled before this session sampled anything
    assert after.verdict_s == pytest.approx(before.verdict_s, abs=0.01)
    # 18.5 s + 0.74 s an answer, 4.36 s a verdict: 4.36 n >= 1.25 (18.5 + 1.48 n), n >= 9.2
    assert after.batch(2) == before.batch(2) == 10 and after.ahead(2) == 20
    # nothing on screen: that batch at once, the pair shown among them (`LabelQueue.fill`)


def test_the_memory_is_per_sampler_and_per_task(tmp_path):
    memory = tmp_path / "labeling-pace.json"
    measured(memory)
    other_model = Pace(memory)
    other_model.use("135M model on cpu, bfloat16, 128 new tokens", "pairwise")
    assert other_model.batch_s is None and other_model.verdict_s is not None  # the person is the same
    # an unmeasured sampler: FIRST_ROWS answers (4 pairs; 2 rankings of 4), the shown one among them
    assert other_model.batch(2) == 4 and other_model.batch(4) == 2
    ranking = Pace(memory)
    ranking.use(SAMPLER, "ranking of 4")
    assert ranking.batches == [FIRST] and ranking.verdict_s is None  # reading 4 answers is another pace
    ranking.use(SAMPLER, "pairwise")  # switching back recalls it
    assert ranking.verdict_s is not None


def test_new_batches_join_the_remembered_ones_and_the_oldest_leave(tmp_path):
    memory = tmp_path / "labeling-pace.json"
    measured(memory)
    measured(memory, batch=(20, 31.5))  # the next session's bigger batch
    fresh = Pace(memory)
    fresh.use(SAMPLER, "pairwise")
    assert fresh.batches == [FIRST, (20, 31.5)] and fresh.batch_s == 31.5
    for i in range(BATCHES_KEPT):
        fresh.batch_written(9.0 + i, 8)  # the machine got a GPU, or bf16
    again = Pace(memory)
    again.use(SAMPLER, "pairwise")
    assert len(again.batches) == BATCHES_KEPT and (20, 31.5) not in again.batches


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"version": 99, "samplers": {}}',
                                     '{"version": 2, "samplers": [], "tasks": {"pairwise": "fast"}}',
                                     '{"version": 2, "samplers": {"%s": [[8, -5], [0, 3], "x"]}, "tasks": {}}'
                                     % SAMPLER,
                                     '{"version": 1, "samplers": {"%s": 46.0}, "tasks": {}}' % SAMPLER])
def test_a_damaged_or_old_memory_is_ignored_and_replaced(tmp_path, content):
    memory = tmp_path / "labeling-pace.json"
    memory.write_text(content)
    pace = Pace(memory)
    pace.use(SAMPLER, "pairwise")
    assert pace.batch_s is None and pace.verdict_s is None and pace.batch(2) == 4
    pace.batch_written(30.0, 8)
    again = Pace(memory)
    again.use(SAMPLER, "pairwise")
    assert again.batches == [(8, 30.0)]


def test_an_unwritable_memory_costs_only_the_memory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    pace = measured(blocker / "labeling-pace.json")  # its folder cannot be made: no error
    assert pace.batch_s == 24.4 and pace.ahead(2) == 20  # this session still follows its pace
    no_memory = measured(None)
    assert no_memory.ahead(2) == 20 and no_memory.batch(2) == 10
