"""Compare page, offscreen: the tiny model as "before" and a noised copy of it (β 0.25 in
its run file) as the "after" checkpoint."""

import json
import re
import shutil
import time

import pytest
from PySide6.QtCore import Qt

import app.controllers.rounds as cc  # the sampler (stream_generate) moved here
from app.plumbing.context import AppContext
from app.controllers.compare_controller import CompareController
from app.pages.compare_page import ComparePage
from dpo_engine.train.checkpoints import RUN_FILE
from dpo_engine.devices import pick_device
from dpo_engine.generate import GenerationResult, TokenEvent
from dpo_engine.heldout import heldout_events
from dpo_engine.models import load_model
from dpo_engine.pairs import PreferencePair
from dpo_engine.store.project import normalize_prompt, prompt_key, split_of
from dpo_engine.winrate import win_rate
from tests.lora_run import BF16, adapter_bytes, train_lora_run
from tests.perturb import perturbed_copy
from dpo_engine.iters import drain

KEYS = {"left": Qt.Key.Key_1, "right": Qt.Key.Key_2, "tie": Qt.Key.Key_3, "both_bad": Qt.Key.Key_4}


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tiny_model_dir):
    # strongly noised: the tiny random model's next-token distribution is nearly uniform, so a
    # slightly different model sampled with the same seed would write the very same bytes
    folder = perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("trained"), scale=0.5)
    (folder / RUN_FILE).write_text(json.dumps({"config": {"beta": 0.25}}))
    return folder


def shown(text: str) -> str:
    """What a plain-text pane shows of a model's text: a bare CR (which a random tiny model can
    sample) becomes a line break."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def make_page(qtbot, tmp_path, base_dir, after_dir=None, device=None):
    ctx = AppContext(tmp_path / "p.sqlite", str(base_dir), device or pick_device("cpu"))
    if after_dir is not None:
        ctx.project.runs.add_model(str(after_dir), "checkpoint", parent=str(base_dir))
    page = ComparePage(ctx, CompareController(ctx))
    qtbot.addWidget(page)
    page.max_tokens.setValue(8)  # short answers keep the tiny models fast
    return ctx, page


@pytest.fixture
def compare(qtbot, tmp_path, tiny_model_dir, trained_dir):
    ctx, page = make_page(qtbot, tmp_path, tiny_model_dir, trained_dir)
    page.show()
    yield ctx, page
    ctx.shutdown()


def wait_scored(qtbot, page, timeout=30_000):
    qtbot.waitUntil(lambda: (r := page.controller.current) is not None and r.done and r.rewards is not None,
                    timeout=timeout)
    return page.controller.current


def response_models(ctx, cid):
    return ctx.project.db.conn.execute(
        "SELECT l.model, r.model, l.text, r.text, c.verdict, c.source FROM comparisons c "
        "JOIN responses l ON l.id = c.left_id JOIN responses r ON r.id = c.right_id WHERE c.id = ?", (cid,)).fetchone()


def test_both_models_stream_into_both_panes_with_the_same_seed(qtbot, tmp_path, tiny_model_dir):
    same = shutil.copytree(tiny_model_dir, tmp_path / "same-weights")  # "after" = base weights, another folder
    ctx, page = make_page(qtbot, tmp_path, tiny_model_dir, same)
    page.blind_box.setChecked(False)
    page.show()
    try:
        rnd = wait_scored(qtbot, page)
        assert set(rnd.refs) == {str(tiny_model_dir), str(same)}
        # same weights, same seed and settings -> the same answer on both sides
        assert rnd.texts[0] == rnd.texts[1] and rnd.tokens[0] == rnd.tokens[1] > 0
        for side in (0, 1):
            assert page.panes[side].text.toPlainText() == shown(rnd.texts[side])
            assert page.panes[side].length.text().startswith(f"{rnd.tokens[side]} tokens")
        assert rnd.rewards == (0.0, 0.0)  # identical policy and reference: log-ratio 0
        assert "+0.000" in page.rewards[0].text()
        s = page.controller.stats()
        assert s.rounds >= 1 and s.before_tokens == s.after_tokens  # same model, same lengths
        mean = s.after_tokens
        assert f"before {mean:.0f} → after {mean:.0f} tokens (+0%)" in page.length_label.text()
    finally:
        ctx.shutdown()


def test_blind_vote_hides_names_then_stores_sides_and_reveals(qtbot, compare, tiny_model_dir, trained_dir):
    ctx, page = compare
    rnd = wait_scored(qtbot, page)
    names = (tiny_model_dir.name, trained_dir.name)
    titles = [p.title.text() for p in page.panes]
    assert titles == ["Left answer", "Right answer"]
    assert not any(n in t for n in names for t in titles + [r.text() for r in page.rewards])
    assert "after your vote" in page.rewards[0].text()

    with qtbot.waitSignal(ctx.comparisonsChanged, timeout=5_000):
        qtbot.keyClick(page, Qt.Key.Key_1)
    left_model, right_model, left_text, right_text, verdict, source = response_models(ctx, rnd.comparison_id)
    assert (left_model, right_model) == rnd.refs  # what was shown left is stored left
    assert (left_text, right_text) == tuple(rnd.texts)
    assert (verdict, source) == ("left", "compare")
    after_title = page.panes[rnd.after_side].title.text()
    before_title = page.panes[1 - rnd.after_side].title.text()
    assert "After" in after_title and trained_dir.name in after_title
    assert "Before" in before_title and tiny_model_dir.name in before_title
    expected = rnd.rewards[0]
    assert f"{expected:+.3f}" in page.rewards[0].text() and "β 0.25" in page.rewards[0].text()
    # a left vote when the trained model was left is a win
    assert page.controller.stats().wins == (1 if rnd.after_side == 0 else 0)
    # the vote is a training pair where it decided something, so a next round can use it
    assert any(sp.comparison_id == rnd.comparison_id for sp in ctx.project.queries.training_pairs(split=None)), (
        rnd.texts, ctx.project.queries.training_pairs(split=None))


def test_moving_on_stops_the_scoring_of_the_round_left_so_the_next_answers_do_not_wait(qtbot, compare,
                                                                                       monkeypatch):
    """At 1B on a CPU a round's fp32 scoring takes minutes (bench/window_end_to_end.py): a person
    who votes and types the next prompt before it ends does not wait for scores no one will read."""
    import threading

    import app.controllers.compare_controller as compare_module

    ctx, page = compare
    c = page.controller
    first = wait_scored(qtbot, page)
    scoring, release, passes = threading.Event(), threading.Event(), []
    real = compare_module.implicit_rewards_events

    def slow(policy, *args):
        passes.append("policy")
        scoring.set()
        release.wait(10)  # the first pass of the next round's scores is "slow"
        inner = real(policy, *args)
        next(inner)
        yield
        passes.append("reference")
        try:
            next(inner)
        except StopIteration as stop:
            return stop.value

    monkeypatch.setattr(compare_module, "implicit_rewards_events", slow)
    with qtbot.waitSignal(ctx.comparisonsChanged, timeout=5_000):
        qtbot.keyClick(page, KEYS["left"])
    c.add_typed_prompt("What is the capital of France?")
    second = c.current
    qtbot.waitUntil(lambda: second.done, timeout=30_000)
    qtbot.waitUntil(scoring.is_set, timeout=30_000)  # its scoring started
    c.vote("right")
    c.add_typed_prompt("Name a colour.")
    third = c.current
    assert third is not second and any(job.cancelled for job in second.jobs)
    release.set()
    qtbot.waitUntil(lambda: third.done and third.rewards is not None, timeout=30_000)
    assert second.rewards is None and first.rewards is not None
    assert passes.count("reference") == 1  # the third round's; the second stopped after its first pass


def test_win_rate_counts_blind_votes_ties_half(qtbot, compare):
    ctx, page = compare
    plan = ["after", "after", "before", "tie"]
    for who in plan:
        rnd = wait_scored(qtbot, page)
        verdict = "tie" if who == "tie" else ("left" if (rnd.after_side == 0) == (who == "after") else "right")
        qtbot.keyClick(page, KEYS[verdict])
        assert rnd.verdict == verdict
        qtbot.keyClick(page, Qt.Key.Key_N)
    s = page.controller.stats()
    assert (s.wins, s.losses, s.ties, s.votes) == (2, 1, 1, 4)
    rate, low, high = win_rate(2, 1, 1)
    assert s.rate == rate == 0.625
    text = page.winrate_label.text()
    assert f"{100 * rate:.0f}%" in text and f"{100 * low:.0f}%" in text and f"{100 * high:.0f}%" in text
    assert "4 blind votes" in page.votes_label.text()

    page.blind_box.setChecked(False)  # a vote with names shown is stored but not counted
    wait_scored(qtbot, page)
    qtbot.keyClick(page, Qt.Key.Key_2)
    s = page.controller.stats()
    assert s.votes == 4 and s.unblinded == 1
    rows = ctx.project.queries.list_comparisons()
    assert len(rows) == 5 and {r.source for r in rows} == {"compare"}


def test_heldout_summary_matches_the_engine(qtbot, compare, tiny_model_dir, trained_dir):
    ctx, page = compare
    questions = [f"Question number {i}?" for i in range(200)]
    held = [q for q in questions if split_of(prompt_key(normalize_prompt(q))) == "eval"][:4]
    pairs = [PreferencePair((("user", q),), f"Good answer {i}.", f"bad {i}") for i, q in enumerate(held)]
    ctx.project.import_pairs(pairs)
    assert len(ctx.project.queries.training_pairs(split="eval")) == 4
    with qtbot.waitSignal(page.controller.heldoutReady, timeout=30_000) as got:
        page.heldout_button.click()
    summary = got.args[0]
    cpu = pick_device("cpu")
    base, trained = load_model(str(tiny_model_dir), cpu), load_model(str(trained_dir), cpu)
    gen = heldout_events(trained.model, base.model, trained.tokenizer,
                         [sp.pair for sp in ctx.project.queries.training_pairs(split="eval")], beta=0.25)
    expected = drain(gen)
    assert summary == expected
    text = page.heldout_label.text()
    assert text.startswith("4 held-out pairs") and "β 0.25" in text
    assert f"before {100 * expected.base_accuracy:.0f}% → after {100 * expected.trained_accuracy:.0f}%" in text
    assert f"after {expected.reward_margin:+.3f}" in text


def scripted(texts):
    def fake(model, tokenizer, prompt, n=1, settings=None):
        text = texts.pop(0) if texts else f"answer {time.monotonic_ns()}"
        for i, ch in enumerate(text):
            yield TokenEvent(0, ch, i + 1)
        return GenerationResult([text], [len(text)], [True])
    return fake


def test_answers_show_as_plain_text(qtbot, compare, monkeypatch):
    ctx, page = compare
    evil = ["<img src=x onerror=alert(1)>", "a<b and <b>bold</b>"]
    qtbot.waitUntil(lambda: not ctx.runner.busy(), timeout=30_000)  # the first rounds used the real model
    monkeypatch.setattr(cc, "stream_generate", scripted(list(evil)))
    page.controller.add_typed_prompt("<script>alert(1)</script>")
    qtbot.waitUntil(lambda: page.controller.current.done and page.controller.current.prompt_text.startswith("<s"),
                    timeout=10_000)
    rnd = page.controller.current
    assert sorted(rnd.texts) == sorted(evil)
    for side in (0, 1):
        assert page.panes[side].text.toPlainText() == shown(rnd.texts[side])
        assert "<img" not in page.panes[side].text.document().toHtml()
    assert page.prompt_view.toPlainText() == "<script>alert(1)</script>"


def test_without_a_checkpoint_it_says_so_and_accepts_a_folder(qtbot, tmp_path, tiny_model_dir, trained_dir):
    ctx, page = make_page(qtbot, tmp_path, tiny_model_dir)
    page.show()
    try:
        assert "No trained checkpoint" in page.notice.text()
        assert page.controller.current is None
        page.after_model.setEditText(str(trained_dir))
        page.after_model.lineEdit().editingFinished.emit()
        rnd = wait_scored(qtbot, page)
        assert set(rnd.refs) == {str(tiny_model_dir), str(trained_dir)}
    finally:
        ctx.shutdown()


def test_every_interactive_widget_is_named(compare):
    from PySide6.QtWidgets import (QAbstractButton, QAbstractItemView, QComboBox, QLineEdit, QPlainTextEdit,
                                   QSpinBox, QWidget)

    _, page = compare
    kinds = (QAbstractButton, QAbstractItemView, QLineEdit, QPlainTextEdit, QSpinBox, QComboBox)
    missing = [w for w in page.findChildren(QWidget) if isinstance(w, kinds) and w.isVisibleTo(page)
               and not (w.objectName() and w.accessibleName()) and not w.objectName().startswith("qt_")]
    assert not missing, [f"{type(w).__name__} {w.objectName()!r}" for w in missing]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """A LoRA run of the real trainer over the tiny model, saved as the window saves it (merged + adapter/)."""
    root = tmp_path_factory.mktemp("lora")
    return train_lora_run(tiny_model_dir, root / "run", root / "cache", merge=True)


def test_a_lora_checkpoint_is_compared_over_one_copy_of_its_base(qtbot, tmp_path, tiny_model_dir, lora_run):
    """bf16 sampling and fp32 scores, as on a CPU with native bf16: before (the base) and after (the
    LoRA checkpoint) share one base copy in each precision, and the rewards are those of the merged
    checkpoint and the base loaded on their own, in fp32."""
    from dpo_engine.heldout import implicit_rewards

    ctx, page = make_page(qtbot, tmp_path, tiny_model_dir, lora_run, device=BF16)
    page.blind_box.setChecked(False)
    page.show()
    try:
        rnd = wait_scored(qtbot, page, timeout=60_000)
        qtbot.waitUntil(lambda: not ctx.runner.busy(), timeout=60_000)  # the next round is written too
        fp32 = pick_device("cpu", "float32")
        merged, base = load_model(str(lora_run), fp32), load_model(str(tiny_model_dir), fp32)
        want = implicit_rewards(merged.model, base.model, merged.tokenizer, rnd.prompt, tuple(rnd.texts), rnd.beta)
        assert rnd.rewards == pytest.approx(want.rewards, abs=1e-5) and rnd.rewards != (0.0, 0.0)
        assert "Rewards in" not in page.rewards[0].text()  # fp32 fits: nothing to explain
        view = ctx.models.get(str(lora_run))  # held (the worker is idle): nothing is loaded here
        n_base = sum(p.numel() for p in base.model.parameters())
        assert ctx.models.held_bytes() == n_base * (2 + 4) + 2 * adapter_bytes(view.model)  # bf16 + fp32 base
    finally:
        ctx.shutdown()


def test_rewards_say_in_words_why_they_are_not_fp32(qtbot, tmp_path, tiny_model_dir, lora_run, monkeypatch):
    import app.plumbing.context as context

    monkeypatch.setattr(context, "memory_budget", lambda device: (1000, "cpu"))  # fp32 copies cannot fit
    ctx, page = make_page(qtbot, tmp_path, tiny_model_dir, lora_run, device=BF16)
    page.blind_box.setChecked(False)
    page.show()
    try:
        rnd = wait_scored(qtbot, page, timeout=60_000)
        words = r"Rewards in bf16: fp32 weights do not fit \(\d+\.\d GiB needed, \d+\.\d GiB free: "
        assert rnd.rewards is not None
        for label in page.rewards:
            assert re.search(words, label.text()), label.text()
        questions = [f"Question number {i}?" for i in range(200)]
        held = [q for q in questions if split_of(prompt_key(normalize_prompt(q))) == "eval"][:2]
        ctx.project.import_pairs([PreferencePair((("user", q),), "Good.", "bad") for q in held])
        with qtbot.waitSignal(page.controller.heldoutReady, timeout=60_000) as got:
            page.heldout_button.click()
        assert got.args[0].precision == "bfloat16" and re.search(words, page.heldout_label.text())
    finally:
        ctx.shutdown()
