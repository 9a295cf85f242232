"""The round machinery shared by Label and Compare (app/controllers/rounds.py), and the two
controllers wired to it, against `MagicMock(spec=RoundHost)`: no window, no worker thread,
no model. Jobs are fakes that the test runs (the worker) and delivers (the GUI thread) by
hand, so a cancelled job's late events can be delivered on purpose."""

import random
import subprocess
import sys
from types import SimpleNamespace
from unittest.mock import MagicMock, call

import pytest

import app.controllers.rounds as rounds
from app.controllers.rounds import (
    HELDOUT_GONE,
    ComparePrompts,
    LabelPrompts,
    PromptSource,
    Round,
    RoundHost,
    VoteTally,
    sample_round,
    sample_rounds,
)
from dpo_engine.generate import GenerationResult, GenerationSettings, RowEnded, TokenEvent
from dpo_engine.starter import starter_prompts
from dpo_engine.winrate import win_rate


# ---------------------------------------------------------------------------- fakes
class FakeSignal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class FakeJob:
    """A job handle like app.plumbing.workers.Job: `work()` runs the generator as the worker
    does and returns what it would emit; `deliver()` emits it, as the GUI thread's event
    loop does later."""

    def __init__(self, name, factory):
        self.name, self.factory, self.cancelled = name, factory, False
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
        except Exception as exc:
            out.append((self.failed, str(exc)))
        return out

    @staticmethod
    def deliver(emitted):
        for signal, value in emitted:
            signal.emit(value)

    def run(self):
        self.deliver(self.work())


def make_host(project, model_ref="model-a"):
    """A mocked context: a real project, jobs kept in `host.jobs` until the test runs them."""
    host = MagicMock(spec=RoundHost)
    host.project, host.model_ref, host.base_model_ref = project, model_ref, model_ref
    host.models = MagicMock()
    host.comparisonsChanged, host.activeModelChanged, host.saveFailed = MagicMock(), MagicMock(), MagicMock()
    host.modelStateChanged = MagicMock()
    host.jobs = []

    def submit(name, factory):
        host.jobs.append(FakeJob(name, factory))
        return host.jobs[-1]

    host.submit.side_effect = submit
    host.submit_with_model.side_effect = lambda name, ref, fn: submit(
        name, lambda: fn(SimpleNamespace(model=ref, tokenizer=None)))  # the "model" says which ref ran
    host.try_save.side_effect = lambda write: (True, write())
    return host


def run_all(host):
    while host.jobs:
        host.jobs.pop(0).run()


def scripted(answers_by_call, calls=None):
    """A stand-in for stream_generate: answer i of a call streams word by word as row i."""
    answers = iter(answers_by_call)

    def fake(model, tokenizer, prompt, n=1, settings=None):
        if calls is not None:
            calls.append((model, n, settings))
        texts = list(next(answers))[:n]
        for i, text in enumerate(texts):
            for step, word in enumerate(text.split(" ")):
                yield TokenEvent(i, (" " if step else "") + word, step + 1)
        return GenerationResult(texts, [len(t.split(" ")) for t in texts], [True] * n)

    return fake


# ---------------------------------------------------------------------------- prompt sources
def test_the_rounds_module_is_plain_python():
    """Prompt sources, rounds, the sampler and the tally load no Qt: they run in any test."""
    code = ("import sys, app.controllers.rounds\n"
            "bad = [m for m in sys.modules if m.startswith(('PySide6', 'shiboken6'))]\nassert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_typed_prompts_come_first_in_order_and_are_stored_as_typed(fresh_db):
    source = PromptSource(fresh_db, random.Random(0))
    assert not source.add_typed("   ") and source.next() is None  # nothing typed, no own sources
    assert source.add_typed(" first ") and source.add_typed("second")
    got = [source.next(), source.next(), source.next()]
    assert [(p.value, p.text) for p in got[:2]] == [("first", "first"), ("second", "second")]
    assert got[2] is None
    rows = fresh_db.db.conn.execute("SELECT id, source FROM prompts ORDER BY id").fetchall()
    assert rows == [(got[0].id, "typed"), (got[1].id, "typed")]


def test_label_prompts_least_labeled_first_then_every_starter_once(fresh_db):
    labeled, plain, chat = (fresh_db.add_prompt(p, "import") for p in (
        "Labeled already", "Plain", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]))
    ids = [fresh_db.add_response(labeled, t, "m") for t in ("a", "b")]
    fresh_db.record_comparison(labeled, ids[0], ids[1], "left")
    source = LabelPrompts(fresh_db, random.Random(7))
    source.add_typed("Typed one")

    typed, first, second, third = (source.next() for _ in range(4))
    assert typed.text == "Typed one"
    assert (first.id, first.value, first.text) == (plain, [{"role": "user", "content": "Plain"}], "Plain")
    assert (second.id, second.text) == (chat, "Hi?") and second.value[0] == {"role": "system", "content": "Be brief."}
    assert third.id == labeled  # the one with a verdict comes last among the project's prompts

    expected = starter_prompts()
    random.Random(7).shuffle(expected)  # the injected rng decides the starters' order
    stored_before = fresh_db.queries.counts().prompts
    starters = [source.next() for _ in expected]
    assert [p.text for p in starters] == expected[::-1]  # taken from the end of the shuffled list
    assert fresh_db.queries.counts().prompts == stored_before + len(expected)  # stored one by one as used
    assert source.next() is None  # every prompt shown once this session: exhausted
    source.release(first.id)  # dropped before its verdict (a mode switch): it may come again
    assert source.next().id == first.id and source.next() is None


def test_compare_prompts_heldout_then_starters_with_a_notice_or_typed_only(fresh_db):
    fresh_db.add_prompts([f"Question {i}?" for i in range(40)], "import")
    heldout = [p.id for p in fresh_db.queries.prompts(split="eval")]
    assert 0 < len(heldout) < 40
    notices = []
    source = ComparePrompts(fresh_db, random.Random(3), on_notice=notices.append)
    got = [source.next() for _ in heldout]
    assert sorted(p.id for p in got) == sorted(heldout) and not notices
    assert all(p.value == [{"role": "user", "content": p.text}] for p in got)  # sampled as chat messages
    after = source.next()
    assert notices == [HELDOUT_GONE] and after.text in starter_prompts()

    typed_only = ComparePrompts(fresh_db, random.Random(3))
    typed_only.mode = "typed"
    typed_only.add_typed("Mine")
    assert typed_only.next().text == "Mine" and typed_only.next() is None


def test_the_same_seed_gives_the_same_order(fresh_db):
    fresh_db.add_prompts([f"Question {i}?" for i in range(40)], "import")
    orders = []
    for _ in range(2):
        source = ComparePrompts(fresh_db, random.Random(11))
        orders.append([source.next().id for _ in range(5)])
    assert orders[0] == orders[1]


# ---------------------------------------------------------------------------- the sampler
def new_round(refs=("m", "m"), prompt="Say hi"):
    return Round(1, prompt, prompt, refs, GenerationSettings(max_new_tokens=8, seed=5))


def callbacks():
    return MagicMock(name="on_token"), MagicMock(name="on_done"), MagicMock(name="on_failed")


def test_one_batched_job_when_all_sides_share_a_model(fresh_db, monkeypatch):
    calls = []
    monkeypatch.setattr(rounds, "stream_generate", scripted([["one a", "two b c", "three", "four"]], calls))
    host, rnd = make_host(fresh_db), new_round(("m",) * 4)
    on_token, on_done, on_failed = callbacks()
    texts = sample_round(host, rnd, on_token, on_done, on_failed, name="sample-pair")
    assert [j.name for j in host.jobs] == ["sample-pair"] and rnd.jobs == host.jobs
    run_all(host)
    assert calls == [("m", 4, rnd.settings)]
    assert rnd.texts == ["one a", "two b c", "three", "four"] and rnd.tokens == [2, 3, 1, 1]
    assert rnd.sampled and texts == dict(enumerate(rnd.texts))
    on_done.assert_called_once_with(rnd, (0, 1, 2, 3))
    assert on_token.call_count == 7 and not on_failed.called


def test_one_job_per_side_for_two_models_relabelled_by_side(fresh_db, monkeypatch):
    calls = []
    monkeypatch.setattr(rounds, "stream_generate", scripted([["left words"], ["right"]], calls))
    host, rnd = make_host(fresh_db), new_round(("m", "other"))
    on_token, on_done, on_failed = callbacks()
    seeded = GenerationSettings(max_new_tokens=8, seed=99)
    sample_round(host, rnd, on_token, on_done, on_failed, settings=seeded)
    host.jobs[0].run()
    assert rnd.texts == ["left words", ""] and not rnd.sampled
    on_done.assert_called_once_with(rnd, (0,))
    host.jobs[1].run()  # its row 0 is side 1
    assert rnd.texts == ["left words", "right"] and rnd.sampled
    assert calls == [("m", 1, seeded), ("other", 1, seeded)]
    assert on_token.call_args_list == [call(rnd, 0), call(rnd, 0), call(rnd, 1)]


def test_late_events_of_a_cancelled_job_are_dropped(fresh_db, monkeypatch):
    monkeypatch.setattr(rounds, "stream_generate", scripted([["a b", "c d"]]))
    host, rnd = make_host(fresh_db), new_round()
    on_token, on_done, on_failed = callbacks()
    sample_round(host, rnd, on_token, on_done, on_failed)
    emitted = host.jobs[0].work()  # the worker wrote it all before the cancel
    FakeJob.deliver(emitted[:1])
    assert rnd.texts == ["a", ""]
    rnd.cancel()  # the person moved on
    FakeJob.deliver(emitted[1:])  # ... and the queued events arrive afterwards
    assert rnd.texts == ["a", ""] and not rnd.sampled
    assert on_token.call_count == 1 and not on_done.called


def test_a_replaced_job_cannot_overwrite_the_new_answers(fresh_db, monkeypatch):
    monkeypatch.setattr(rounds, "stream_generate", scripted([["old", "stale"], ["new", "fresh"]]))
    host, rnd = make_host(fresh_db), new_round()
    on_token, on_done, on_failed = callbacks()
    sample_round(host, rnd, on_token, on_done, on_failed)
    old = host.jobs.pop(0)
    old_events = old.work()
    sample_round(host, rnd, on_token, on_done, on_failed)  # sampled again ("R")
    assert old.cancelled and rnd.jobs == host.jobs and rnd.texts == ["", ""]
    run_all(host)
    FakeJob.deliver(old_events)
    assert rnd.texts == ["new", "fresh"]
    on_done.assert_called_once_with(rnd, (0, 1))


def test_a_failed_job_sets_the_error_and_reports_it(fresh_db, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of cheese")
        yield  # pragma: no cover

    monkeypatch.setattr(rounds, "stream_generate", broken)
    host, rnd = make_host(fresh_db), new_round()
    on_token, on_done, on_failed = callbacks()
    sample_round(host, rnd, on_token, on_done, on_failed)
    run_all(host)
    assert rnd.error == "out of cheese" and not rnd.sampled
    on_failed.assert_called_once_with(rnd, "out of cheese")


def scripted_batch(answers_by_call, calls=None):
    """A stand-in for stream_generate_batch: row i writes answer i word by word, the rows
    in step, and a row ends (RowEnded) after its last word, so short rows end first."""
    answers = iter(answers_by_call)

    def fake(model, tokenizer, prompts, settings=None):
        if calls is not None:
            calls.append((model, list(prompts), settings))
        words = [t.split(" ") for t in list(next(answers))[:len(prompts)]]
        for step in range(max(len(w) for w in words)):
            for i, w in enumerate(words):
                if step < len(w):
                    yield TokenEvent(i, (" " if step else "") + w[step], step + 1)
                    if step == len(w) - 1:
                        yield RowEnded(i, " ".join(w), len(w), True)
        return GenerationResult([" ".join(w) for w in words], [len(w) for w in words], [True] * len(words))

    return fake


def test_several_rounds_of_one_model_in_one_job_each_done_when_its_answers_are(fresh_db, monkeypatch):
    calls = []
    monkeypatch.setattr(rounds, "stream_generate_batch", scripted_batch([["a", "b c d", "e f", "g"]], calls))
    host = make_host(fresh_db)
    first, second = new_round(prompt="First"), new_round(prompt="Second")
    on_token, on_done, on_failed = callbacks()
    sample_rounds(host, [first, second], on_token, on_done, on_failed, name="sample-pair")
    assert [j.name for j in host.jobs] == ["sample-pair"]  # one job for both rounds
    emitted = host.jobs[0].work()
    done_at = []  # after how many delivered events each round was reported done
    for n, item in enumerate(emitted):
        FakeJob.deliver([item])
        done_at += [(n, c.args[0].prompt) for c in on_done.call_args_list[len(done_at):]]
    assert calls == [("m", ["First", "First", "Second", "Second"], first.settings)]
    assert first.texts == ["a", "b c d"] and second.texts == ["e f", "g"]
    assert first.tokens == [1, 3] and second.tokens == [2, 1] and first.sampled and second.sampled
    assert [prompt for _, prompt in done_at] == ["Second", "First"]  # the shorter round is done first
    assert done_at[0][0] < len(emitted) - 3  # ... while the other one is still being written
    assert on_done.call_args_list == [call(second, (0, 1)), call(first, (0, 1))]
    assert on_token.call_count == 7 and not on_failed.called


def test_two_models_one_job_each_across_rounds(fresh_db, monkeypatch):
    calls = []
    monkeypatch.setattr(rounds, "stream_generate_batch", scripted_batch([["mine 1", "mine 2"], ["theirs"] * 2], calls))
    host = make_host(fresh_db)
    first, second = new_round(("m", "other"), "First"), new_round(("other", "m"), "Second")
    on_token, on_done, on_failed = callbacks()
    sample_rounds(host, [first, second], on_token, on_done, on_failed)
    run_all(host)
    assert [(model, prompts) for model, prompts, _ in calls] == [("m", ["First", "Second"]),
                                                                 ("other", ["First", "Second"])]
    assert first.texts == ["mine 1", "theirs"] and second.texts == ["theirs", "mine 2"]
    assert first.sampled and second.sampled
    assert on_done.call_args_list == [call(first, (0,)), call(second, (1,)), call(first, (1,)), call(second, (0,))]


def test_a_cancelled_round_drops_its_events_the_others_go_on(fresh_db, monkeypatch):
    monkeypatch.setattr(rounds, "stream_generate_batch", scripted_batch([["a b", "c d", "e f", "g h", "i", "j"]]))
    host = make_host(fresh_db)
    rnds = [new_round(prompt=p) for p in ("One", "Two", "Three")]
    on_token, on_done, on_failed = callbacks()
    sample_rounds(host, rnds, on_token, on_done, on_failed)
    job = host.jobs[0]
    emitted = job.work()
    rnds[1].cancel()  # dropped (a skip, a new mode) while the batch was being written
    assert not job.cancelled  # the other rounds still need it
    FakeJob.deliver(emitted)
    assert rnds[0].texts == ["a b", "c d"] and rnds[2].texts == ["i", "j"]
    assert rnds[1].texts == ["", ""] and not rnds[1].sampled
    assert [c.args[0] for c in on_done.call_args_list] == [rnds[2], rnds[0]]
    rnds[0].cancel(), rnds[2].cancel()
    assert job.cancelled  # nobody needs it any more: the worker stops it at its next token


def test_a_failed_batch_reports_to_each_round_still_waiting(fresh_db, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of cheese")
        yield  # pragma: no cover

    monkeypatch.setattr(rounds, "stream_generate_batch", broken)
    host = make_host(fresh_db)
    rnds = [new_round(prompt=p) for p in ("One", "Two")]
    on_token, on_done, on_failed = callbacks()
    sample_rounds(host, rnds, on_token, on_done, on_failed)
    rnds[0].cancel()
    run_all(host)
    assert rnds[1].error == "out of cheese" and rnds[0].error == ""
    on_failed.assert_called_once_with(rnds[1], "out of cheese")


# ---------------------------------------------------------------------------- the tally
def test_vote_tally_counts_blind_votes_only_from_the_after_models_side():
    tally = VoteTally()
    for verdict, after_side in [("left", 0), ("right", 0), ("right", 1), ("tie", 0), ("both_bad", 1), ("left", 1)]:
        tally.add_vote(verdict, after_side, blind=True)
    tally.add_vote("left", 0, blind=False)  # the person knew which answer was whose
    tally.add_lengths(10, 20)
    tally.add_lengths(30, 40)
    s = tally.stats()
    # after wins: ("left", 0), ("right", 1); loses: ("right", 0), ("left", 1); ties: tie, both_bad
    assert (s.wins, s.losses, s.ties, s.votes, s.unblinded) == (2, 2, 2, 6, 1)
    assert (s.rate, s.low, s.high) == win_rate(2, 2, 2) and s.rate == 0.5
    assert (s.after_tokens, s.before_tokens, s.rounds) == (20, 30, 2)
    empty = VoteTally().stats()
    assert empty.rate is None and empty.after_tokens is None and empty.votes == 0


# ---------------------------------------------------------------------------- the controllers
def test_app_context_provides_what_round_controllers_take():
    from app.plumbing.context import AppContext

    wanted = [n for n in vars(RoundHost) if not n.startswith("_")] + list(RoundHost.__annotations__)
    instance_only = {"project", "model_ref", "base_model_ref", "models"}  # set in AppContext.__init__
    assert set(wanted) >= instance_only
    assert all(hasattr(AppContext, n) for n in wanted if n not in instance_only)


@pytest.fixture
def label(qapp, fresh_db, monkeypatch):
    from app.controllers.label_controller import LabelController

    answers = [[f"answer {i} left", f"answer {i} right"] for i in range(20)]
    monkeypatch.setattr(rounds, "stream_generate", scripted(answers))
    for text in ("First prompt", "Second prompt", "Third prompt"):
        fresh_db.add_prompt(text, "import")
    host = make_host(fresh_db)
    controller = LabelController(host, prefetch=1, seed=0)
    shown, ready, messages = [], [], []
    controller.pairShown.connect(shown.append)
    controller.pairReady.connect(lambda: ready.append(controller.current))
    controller.message.connect(messages.append)
    return host, controller, shown, ready, messages


def comparisons(project):
    return project.db.conn.execute(
        "SELECT c.verdict, l.text, r.text FROM comparisons c JOIN responses l ON l.id = c.left_id "
        "JOIN responses r ON r.id = c.right_id WHERE c.deleted IS NULL ORDER BY c.id").fetchall()


def test_label_judges_only_complete_pairs_then_shows_the_prefetched_one(label):
    host, controller, shown, ready, messages = label
    controller.start()
    assert len(host.jobs) == 2 and shown[0].prompt_id == controller.current.prompt_id and len(controller.queue.pairs) == 1
    assert not controller.judge("left") and "still being written" in messages[-1]
    first, second = controller.current, controller.queue.pairs[0]
    run_all(host)
    assert first.done and second.done and ready == [first]
    assert first.texts == ["answer 0 left", "answer 0 right"] and first.prompt_text == "First prompt"

    assert controller.judge("left")
    assert comparisons(host.project) == [("left", "answer 0 left", "answer 0 right")]
    assert controller.current is second and ready[-1] is second  # prefetched: ready at once
    host.comparisonsChanged.emit.assert_called_once_with()
    assert len(host.jobs) == 1  # the next prompt is being sampled ahead
    with pytest.raises(ValueError):
        controller.judge("maybe")


def test_label_undo_removes_the_last_verdict_and_shows_its_pair_again(label):
    host, controller, shown, ready, messages = label
    controller.start()
    run_all(host)
    first = controller.current
    assert controller.judge("right") and controller.progress().session == 1
    second = controller.current
    assert controller.undo()
    assert comparisons(host.project) == [] and controller.progress().session == 0
    assert controller.current is first and shown[-1].prompt_id == first.prompt_id and controller.queue.pairs[0] is second
    assert host.comparisonsChanged.emit.call_count == 2
    assert not controller.undo()  # nothing left to undo


def test_label_keys_act_by_the_map_of_the_mode_and_the_view_gets_snapshots(label):
    from dataclasses import FrozenInstanceError

    from app.controllers import keys

    host, controller, shown, ready, messages = label
    completed = []
    controller.pairReady.connect(completed.append)
    controller.start()
    assert not shown[-1].ready and shown[-1].notice == "Writing both answers…"
    assert [(a.text, a.writing) for a in shown[-1].answers] == [("", True), ("", True)]
    asked = []
    controller.writeBetterAsked.connect(asked.append)
    assert not controller.ask_write_better() and controller.press("E") and asked == []  # nothing to edit yet
    run_all(host)
    first = controller.current
    assert completed == [controller.shown()] and completed[0].ready and completed[0].notice == keys.verdict_help()
    assert [a.text for a in completed[0].answers] == first.texts == ["answer 0 left", "answer 0 right"]
    with pytest.raises(FrozenInstanceError):  # a snapshot: the view cannot change the controller's pair
        completed[0].prompt = "changed"
    assert controller.press("E") and asked == [completed[0]]  # the page opens its editor on these answers
    assert not controller.press("5") and not controller.press("=") and not controller.press("Backspace")
    assert comparisons(host.project) == [] and controller.current is first  # keys of no action here
    assert controller.press("Right")  # the arrow and 2 are one binding
    assert comparisons(host.project) == [("right", "answer 0 left", "answer 0 right")]
    assert controller.progress().session == 1
    controller.set_mode("ranking", 3)
    assert controller.bindings() == keys.RANKING
    assert not controller.press("Left") and messages[-1].startswith("Rank the answers")


def test_label_a_verdict_that_cannot_be_saved_keeps_the_pair(label):
    host, controller, shown, ready, messages = label
    controller.start()
    run_all(host)
    pair = controller.current
    host.try_save.side_effect = lambda write: (False, None)  # the disk is full
    assert not controller.judge("left")
    assert controller.current is pair and not controller.history and comparisons(host.project) == []
    assert not host.comparisonsChanged.emit.called


def test_label_skip_while_sampling_cancels_and_late_answers_are_not_stored(label):
    host, controller, shown, ready, messages = label
    controller.start()
    first = controller.current
    first_job = host.jobs[0]
    assert controller.judge("skip") and first_job.cancelled and controller.current is not first
    first_job.run()  # its answers arrive after the skip
    assert not first.done and first.texts == ["", ""]
    assert host.project.queries.counts().prompts == 3
    assert host.project.db.conn.execute("SELECT count(*) FROM responses").fetchone()[0] == 0


def test_compare_counts_only_blind_votes_and_stores_both_answers(qapp, fresh_db, monkeypatch, tmp_path):
    from app.controllers.compare_controller import CompareController

    monkeypatch.setattr(rounds, "stream_generate", scripted([["mine"], ["theirs"]] * 4))
    fresh_db.runs.add_model(str(tmp_path / "ckpt"), "checkpoint", parent="base")
    host = make_host(fresh_db, model_ref="base")
    controller = CompareController(host, seed=1)
    assert controller.after_ref == str(tmp_path / "ckpt")
    controller.add_typed_prompt("Compare on this")
    rnd = controller.current
    assert rnd.prompt_text == "Compare on this" and set(rnd.refs) == {"base", str(tmp_path / "ckpt")}
    host.jobs[0].run(), host.jobs[1].run()  # the two answers; the scoring job is not needed here
    assert rnd.done and rnd.texts == ["mine", "theirs"]
    assert controller.vote("left")
    row = host.project.db.conn.execute(
        "SELECT c.verdict, c.source, l.model, r.model FROM comparisons c JOIN responses l ON l.id = c.left_id "
        "JOIN responses r ON r.id = c.right_id").fetchone()
    assert row == ("left", "compare", *rnd.refs)
    s = controller.stats()
    assert (s.wins, s.losses, s.votes, s.rounds) == (int(rnd.after_side == 0), int(rnd.after_side == 1), 1, 1)


def test_compare_hides_names_and_rewards_until_the_blind_vote(qapp, fresh_db, monkeypatch, tmp_path):
    from app.controllers.compare_controller import CompareController, ModelOptions, SideView

    monkeypatch.setattr(rounds, "stream_generate", scripted([["mine"], ["theirs"]] * 4))
    after = str(tmp_path / "ckpt")
    fresh_db.runs.add_model(after, "checkpoint", parent="base")
    host = make_host(fresh_db, model_ref="base")
    controller = CompareController(host, seed=1)
    assert controller.model_options() == ModelOptions(("base", after), (after,), "base", after)
    controller.set_generation(16, 0.2)
    assert (controller.settings.max_new_tokens, controller.settings.temperature, controller.settings.top_p) == \
        (16, 0.2, 0.95)
    controller.add_typed_prompt("Compare on this")
    rnd = controller.current
    host.jobs[0].run(), host.jobs[1].run()
    hidden = SideView("Left answer", "Implicit reward: shown after your vote")
    assert controller.side_views() == (hidden, SideView("Right answer", hidden.reward))
    rnd.rewards = (0.5, -0.25)
    assert controller.side_views()[0] == hidden  # scored, but still blind
    controller.vote("left")
    names = {0: "After: ckpt", 1: "Before: base"} if rnd.after_side == 0 else {0: "Before: base", 1: "After: ckpt"}
    assert controller.side_views() == (
        SideView(f"Left — {names[0]}", "Implicit reward β·log(π_after/π_before) = +0.500  (β 0.1)"),
        SideView(f"Right — {names[1]}", "Implicit reward β·log(π_after/π_before) = -0.250  (β 0.1)"))
    who = "the trained model (after)" if rnd.after_side == 0 else "the base model (before)"
    assert controller.preference_text() == f"You preferred {who}. Press N for the next prompt."
    assert controller.export_controller().model_ref == after


def test_label_samples_the_queue_in_one_batch_and_tops_it_up_half_at_a_time(qapp, fresh_db, monkeypatch):
    from app.controllers.label_controller import LabelController

    calls = []
    answers = [[f"answer {i} {side}" for i in range(8) for side in ("left", "right")]] * 5
    monkeypatch.setattr(rounds, "stream_generate", scripted([[f"now {i}", f"now {i}!"] for i in range(5)]))
    monkeypatch.setattr(rounds, "stream_generate_batch", scripted_batch(answers, calls))
    for i in range(12):
        fresh_db.add_prompt(f"Prompt {i}", "import")
    host = make_host(fresh_db)
    controller = LabelController(host, prefetch=4, seed=0)
    controller.start()
    # the pair to show now is sampled alone; the four queued ones in one batch of 8 answers
    assert len(host.jobs) == 2 and len(controller.queue.pairs) == 4
    run_all(host)
    assert [len(prompts) for _, prompts, _ in calls] == [8] and all(p.done for p in controller.queue.pairs)
    assert controller.judge("left") and not host.jobs  # one place free, three ready: wait for more places
    assert controller.judge("right") and len(host.jobs) == 1  # half the queue free: one batch for both
    assert controller.judge("tie") and len(host.jobs) == 1  # a batch is being written: the next one waits
    run_all(host)
    assert [len(prompts) for _, prompts, _ in calls] == [8, 4]
    assert len(controller.queue.pairs) == 3 and all(p.done for p in controller.queue.pairs)
    assert controller.judge("left") and len(host.jobs) == 1  # half free again
    run_all(host)
    assert [len(prompts) for _, prompts, _ in calls] == [8, 4, 4]
    shown = [controller.current, *controller.queue.pairs]
    assert len(shown) == 5 and len({p.prompt_id for p in shown}) == 5


def paced_label(fresh_db, monkeypatch, prompts: int, batches: int):
    """The Label controller's module with a settable clock and scripted batches of 40 pairs:
    (module, clock, calls) for the tests of the paced queue."""
    import app.controllers.label_controller as lc

    clock = [1000.0]
    monkeypatch.setattr(lc.time, "monotonic", lambda: clock[0])
    calls = []
    answers = [[f"answer {i} {side}" for i in range(40) for side in ("left", "right")]] * batches
    monkeypatch.setattr(rounds, "stream_generate", scripted([[f"now {i}", f"now {i}!"] for i in range(5)]))
    monkeypatch.setattr(rounds, "stream_generate_batch", scripted_batch(answers, calls))
    for i in range(prompts):
        fresh_db.add_prompt(f"Prompt {i}", "import")
    return lc, clock, calls


def test_a_first_session_samples_half_the_starting_queue_with_the_first_pair(qapp, fresh_db, monkeypatch):
    """Nothing remembered: the shown pair and three more are one batch, so that the first
    verdicts have pairs ready (sampling the shown pair alone, then the queue behind it, made
    the first verdict wait for the whole queue: bench/README.md, "Labeling pace")."""
    lc, clock, calls = paced_label(fresh_db, monkeypatch, prompts=60, batches=3)
    host = make_host(fresh_db)
    controller = lc.LabelController(host, seed=0)
    assert controller.queue.prefetch is None  # the default: sized by the pace
    ready = []
    controller.pairReady.connect(lambda: ready.append(controller.current))
    controller.start()
    assert len(host.jobs) == 1 and len(controller.queue.pairs) == 3  # one job: 4 prompts, 8 answers
    assert controller.current is not None and not controller.current.done
    clock[0] += 9.0
    host.jobs.pop(0).run()
    assert [len(prompts) for _, prompts, _ in calls][0] == 8
    assert ready == [controller.current] and all(p.done for p in list(controller.queue.pairs)[:3])
    for _ in range(3):  # three verdicts, each shows a pair that is ready at once
        clock[0] += 4.0
        assert controller.judge("left") and ready[-1] is controller.current and controller.current.done


def test_label_queue_grows_from_the_first_batch_measured(qapp, fresh_db, monkeypatch):
    """The default queue follows the measured pace, from the first batch on: a slow batch
    and quick verdicts make its batches bigger (a fixed 8 left the person waiting on a 2-core
    AVX2 CPU, bench/README.md), sized before the person has read the first batch's pairs, and
    filled one batch at a time. The sampler here is that CPU's: 26 s + 1.1 s an answer (128
    tokens of the default model in fp32: 28 s for 1 pair, 62 s for 16)."""
    lc, clock, calls = paced_label(fresh_db, monkeypatch, prompts=60, batches=5)
    host = make_host(fresh_db)
    controller = lc.LabelController(host, seed=0)
    controller.start()
    assert len(controller.queue.pairs) == 3 and controller.queue.ahead() == 8  # nothing measured yet: the old fixed queue
    clock[0] += 34.8  # the first batch, 4 pairs: 26 + 8 x 1.1
    host.jobs.pop(0).run()
    # measured at once, one size only: 4% of the fixed time an answer, 34.8 / 1.32 = 26.4 s
    # fixed and 1.05 s an answer. n pairs read at 4 s (the first guess) outlast the next n when
    # 4 n >= 1.25 (26.4 + 2.1 n): n >= 24.2, over the cap of 16 pairs (32 answers) a batch
    assert controller.queue.pace.batch_s == pytest.approx(34.8) and controller.queue.ahead() == 32
    assert len(controller.queue.pairs) == 3 + 16 and len(host.jobs) == 1  # one batch, not all 29 free places
    clock[0] += 3.0
    assert controller.judge("left")
    assert controller.queue.pace.verdict_s == 3.0 and controller.queue.ahead() == 32
    assert len(host.jobs) == 1  # a batch is being written: the next one waits for it
    for _ in range(3):
        clock[0] += 5.0  # a slower person than the first verdict said
        assert controller.judge("left")
    assert 4.0 < controller.queue.pace.verdict_s < 5.0
    clock[0] += 61.2 - 18.0  # that batch took 26 + 32 x 1.1 = 61.2 s in all
    host.jobs.pop(0).run()
    # two sizes measured: the line through them is the sampler's, exactly
    fixed, per_row = controller.queue.pace.batch_time()
    assert fixed == pytest.approx(26.0) and per_row == pytest.approx(1.1)
    # 4.31 s a verdict: n >= 1.25 x 26 / (4.31 - 1.25 x 2.2) = 20.8, still the cap; 15 ready,
    # 17 places free: the next 16 in one batch
    assert controller.queue.ahead() == 32 and len(host.jobs) == 1 and len(controller.queue.pairs) == 15 + 16
    assert [len(prompts) // 2 for _, prompts, _ in calls] == [4, 16]


def test_a_new_session_starts_with_the_remembered_queue(qapp, fresh_db, monkeypatch, tmp_path):
    """The second session on a slow CPU samples half the grown queue at once, the shown pair
    among them, instead of growing it from 8 again (two long waits on the AVX2 CPU)."""
    lc, clock, calls = paced_label(fresh_db, monkeypatch, prompts=90, batches=8)
    memory = tmp_path / "labeling-pace.json"
    host = make_host(fresh_db)
    first = lc.LabelController(host, seed=0, pace_memory=memory)
    first.start()
    clock[0] += 46.0
    host.jobs.pop(0).run()  # nothing known: half the starting queue, 4 pairs, in 46 s
    clock[0] += 3.0
    assert first.judge("left")  # 1.25 * 46 / 3 = 19.2 -> 20 x 2 = 40, capped at 32
    assert first.queue.ahead() == 32 and memory.exists()

    again = make_host(fresh_db)  # the app opened again
    second = lc.LabelController(again, seed=1, pace_memory=memory)
    second.start()
    assert second.queue.pace.batch_s == 46.0 and second.queue.pace.verdict_s == 3.0 and second.queue.ahead() == 32
    # one job: the shown pair and 15 more, one batch of 32 answers; the other half waits for it
    assert len(again.jobs) == 1 and second.current is not None and len(second.queue.pairs) == 15
    assert not second.current.done
    clock[0] += 60.0
    first_half = [second.current, *second.queue.pairs]
    again.jobs.pop(0).run()
    assert len(calls[-1][1]) == 32 and all(p.done for p in first_half)
    # written: the batch is measured (60 s for 32 answers beside 46 s for 8: 41.3 s + 0.58 s
    # an answer, n >= 1.25 x 41.3 / (3 - 1.25 x 1.17) = 34 -> still the cap), and the next
    # batch, 16 of the 17 free places, is sampled now while the person reads the first
    assert second.queue.pace.batch_s == 60.0 and second.queue.ahead() == 32
    assert len(again.jobs) == 1 and len(second.queue.pairs) == 31
    assert [p.done for p in second.queue.pairs] == [True] * 15 + [False] * 16
    shown = [second.current, *second.queue.pairs]
    assert len({p.prompt_id for p in shown}) == len(shown)  # no prompt twice


def test_a_fixed_prefetch_still_wins_over_the_pace(label):
    host, controller, *_ = label  # prefetch=1: tests and screenshots keep their queue
    controller.queue.pace.batch_written(100.0, 8)
    assert controller.queue.ahead() == 1
