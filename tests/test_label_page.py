"""Label page, offscreen, on the tiny model (and a scripted sampler where the test needs
exact texts)."""

import time
from dataclasses import replace

import pytest
from PySide6.QtCore import Qt

import app.controllers.rounds as lc  # the sampler (stream_generate) moved here
from app.main import create_window
from dpo_engine.generate import GenerationResult, RowEnded, TokenEvent
from dpo_engine.store.opening import open_project
from tests.label_helpers import scripted_stream, wait_ready


@pytest.fixture
def label_window(qtbot, tmp_path, tiny_model_dir):
    ctx, win = create_window(tmp_path / "p.sqlite", str(tiny_model_dir), device="cpu")
    qtbot.addWidget(win)
    page = win.pages["Label"]
    page.max_tokens.setValue(16)  # short answers keep the tiny model's sampling fast
    win.show()
    yield ctx, win, page
    ctx.shutdown()


def scripted_batch_stream():
    """A stand-in for stream_generate_batch (the queue sampled ahead): distinct readable
    answers, one per row, each row ended after its last word."""

    def fake(model, tokenizer, prompts, settings=None):
        texts = [f"queued {time.monotonic_ns()} {i}" for i in range(len(prompts))]
        for i, text in enumerate(texts):
            for step, word in enumerate(text.split(" ")):
                yield TokenEvent(i, (" " if step else "") + word, step + 1)
            yield RowEnded(i, text, 3, True)
        return GenerationResult(texts, [3] * len(texts), [True] * len(texts))

    return fake


def stored(ctx):
    with open_project(ctx.project_path) as p:
        return p.queries.list_comparisons()


def test_keyboard_verdicts_store_right_chosen_and_rejected(qtbot, label_window, monkeypatch):
    ctx, win, page = label_window
    monkeypatch.setattr(lc, "stream_generate", scripted_stream([]))  # distinct readable answers
    monkeypatch.setattr(lc, "stream_generate_batch", scripted_batch_stream())  # ... for the queue too
    page.controller.queue.drop()  # the tiny model's random bytes may hold a "\r" the pane shows as "\n"
    page.controller.regenerate()
    seen = []
    for key, verdict in [(Qt.Key.Key_1, "left"), (Qt.Key.Key_2, "right"), (Qt.Key.Key_3, "tie"),
                         (Qt.Key.Key_4, "both_bad"), (Qt.Key.Key_Left, "left"), (Qt.Key.Key_Right, "right")]:
        wait_ready(qtbot, page)
        pair = page.controller.current
        seen.append((verdict, pair.texts[0], pair.texts[1]))
        assert page.left.text.toPlainText() == pair.texts[0]
        qtbot.keyClick(page, key)
        # committed before the next pair shows: the row is in the file already
        assert stored(ctx)[0].verdict == verdict
    rows = list(reversed(stored(ctx)))
    assert [r.verdict for r in rows] == [v for v, _, _ in seen]
    with open_project(ctx.project_path) as p:
        pairs = p.queries.training_pairs(split=None)
    expected = {(l, r) if v == "left" else (r, l) for v, l, r in seen if v in ("left", "right")}
    assert {(sp.pair.chosen, sp.pair.rejected) for sp in pairs} == expected
    assert page.controller.progress().session == 6


def test_undo_removes_exactly_the_last_verdict(qtbot, label_window):
    ctx, win, page = label_window
    wait_ready(qtbot, page)
    qtbot.keyClick(page, Qt.Key.Key_1)
    wait_ready(qtbot, page)
    second = page.controller.current
    qtbot.keyClick(page, Qt.Key.Key_2)
    assert len(stored(ctx)) == 2
    qtbot.keyClick(page, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    rows = stored(ctx)
    assert [r.verdict for r in rows] == ["left"]
    assert page.controller.current is second  # the undone pair is shown again
    assert page.left.length.text().startswith(f"{second.tokens[0]} tokens")


def test_html_and_angle_brackets_show_literally(qtbot, label_window, monkeypatch):
    ctx, win, page = label_window
    evil = ["<img src=x onerror=alert(1)>", "if a<b and c>d: <b>bold</b>"]
    page.controller.queue.drop()
    monkeypatch.setattr(lc, "stream_generate", scripted_stream([evil] * 10))
    page.controller.regenerate()
    qtbot.waitUntil(lambda: page.controller.current.done and page.controller.current.texts == evil, timeout=10_000)
    assert page.left.text.toPlainText() == evil[0]
    assert page.right.text.toPlainText() == evil[1]
    assert page.left.text.document().toHtml().count("<img") == 0  # shown as text, not an image
    page._on_controller_pairShown(replace(page.controller.shown(), prompt="<script>alert(1)</script>"))
    assert page.prompt_view.toPlainText() == "<script>alert(1)</script>"


def test_streamed_text_appears_before_generation_ends(qtbot, label_window, monkeypatch):
    ctx, win, page = label_window
    long = [" ".join(f"w{i}" for i in range(40)), " ".join(f"v{i}" for i in range(40))]
    page.controller.queue.drop()
    monkeypatch.setattr(lc, "stream_generate", scripted_stream([long] * 10, delay=0.01))
    partial = []

    def on_text(answer):
        if answer.side == 0 and answer.writing:
            partial.append((answer.text, page.left.text.toPlainText(), page.left.length.text(),
                            page.buttons["left"].isEnabled()))

    page.controller.textUpdated.connect(on_text)
    page.controller.regenerate()
    wait_ready(qtbot, page)
    assert page.left.text.toPlainText() == long[0]
    shown = [p for p in partial if p[0] == "w0 w1 w2"]
    assert shown, "the left pane never showed a partial answer"
    text, pane_text, length, can_judge = shown[0]
    assert pane_text == "w0 w1 w2" and "writing" in length
    assert not can_judge  # cannot judge a half-written answer


def test_prefetch_shows_next_pair_without_waiting(qtbot, label_window):
    ctx, win, page = label_window
    c = page.controller
    wait_ready(qtbot, page)
    qtbot.waitUntil(lambda: len(c.queue.pairs) >= 1 and c.queue.pairs[0].done, timeout=30_000)
    nxt = c.queue.pairs[0]
    qtbot.keyClick(page, Qt.Key.Key_1)
    assert c.current is nxt and c.current.done  # shown at once, no new generation wait
    assert page.buttons["left"].isEnabled()


def test_identical_samples_are_sampled_again(qtbot, label_window, monkeypatch):
    ctx, win, page = label_window
    page.controller.queue.drop()
    monkeypatch.setattr(lc, "stream_generate", scripted_stream([["same", "same"], ["one", "two"]]))
    page.controller.regenerate()
    qtbot.waitUntil(lambda: page.controller.current.done, timeout=10_000)
    assert page.controller.current.texts == ["one", "two"]


def test_write_better_answer_becomes_chosen(qtbot, label_window):
    ctx, win, page = label_window
    wait_ready(qtbot, page)
    pair = page.controller.current
    assert page.controller.write_better("My ideal answer.", worse_side=1)
    with open_project(ctx.project_path) as p:
        pairs = p.queries.training_pairs(split=None)
    assert [(sp.pair.chosen, sp.pair.rejected) for sp in pairs] == [("My ideal answer.", pair.texts[1])]


def test_sampling_failure_shows_message_and_labeling_goes_on(qtbot, label_window, monkeypatch):
    ctx, win, page = label_window

    def broken(*a, **k):
        raise RuntimeError("boom")
        yield  # pragma: no cover

    monkeypatch.setattr(lc, "stream_generate", broken)
    page.controller.regenerate()
    qtbot.waitUntil(lambda: "Sampling failed" in page.notice.text(), timeout=10_000)
    monkeypatch.undo()
    page.controller.regenerate()
    wait_ready(qtbot, page)


def test_leaving_the_page_leaves_the_worker_to_the_other_pages(qtbot, label_window, monkeypatch):
    """A new active model (a run just finished) refills the queue only once the person is back
    on the Label page: on the Compare page its rounds would wait behind the refill."""
    ctx, win, page = label_window
    monkeypatch.setattr(lc, "stream_generate_batch", scripted_batch_stream())
    c = page.controller
    wait_ready(qtbot, page)
    qtbot.waitUntil(lambda: c.queue.pairs and all(p.done for p in c.queue.pairs), timeout=30_000)
    win.show_page("Compare")
    assert not page.isVisible() and c.queue.paused
    batches = []
    monkeypatch.setattr(c.queue, "sample", lambda *pairs: batches.append(pairs))
    ctx.activeModelChanged.emit(ctx.model_ref)  # what following a finished run does
    assert not c.queue.pairs and not batches  # the queue from the old model is dropped, nothing sampled
    win.show_page("Label")
    assert page.isVisible() and not c.queue.paused
    assert len(batches) == 1 and len(c.queue.pairs) == len(batches[0]) > 0  # refilled now, in one batch


def test_buttons_and_help_lines_are_written_from_the_key_map(qtbot, label_window):
    """The texts a person reads, spelled out: the key map must reproduce them exactly."""
    from app.controllers import keys
    from app.pages.label_page import QT_PAGE_KEYS

    ctx, win, page = label_window
    assert [b.text() for b in page.buttons.values()] == [
        "← Left is better  [1]", "Tie  [3]", "Both bad  [4]", "Right is better  [2] →", "Skip  [S]"]
    assert page.buttons["left"].accessibleName() == "Left is better"
    assert [b.text() for b in (page.regen_button, page.edit_button, page.undo_button)] == [
        "Regenerate both  [R]", "Write a better answer  [E]", "Undo last  [Ctrl+Z]"]
    assert page.place_buttons[2].text() == "3" and page.place_buttons[2].toolTip() == \
        "Answer 3 takes the next place  [3]"
    assert keys.verdict_help() == "Which answer is better? 1 / ← left, 2 / → right, 3 tie, 4 both bad, S skip."
    assert keys.ranking_hint(4) == "Rank the 4 answers: the number of the best first. = ties, Enter saves."
    assert page.rank_help.text() == (
        "Rank: press the number of the best answer, then the next best, and so on. "
        "= before a number ties it with the previous one. Backspace takes back the last place. "
        "Enter saves (answers not placed tie for last); placing the last answer saves too. "
        "Or drag the answers in the row above into order, then press Enter. "
        "A ranking of 4 gives up to 6 training pairs.")
    assert set(QT_PAGE_KEYS.values()) == set(keys.PAGE_KEYS)  # the keys the page reads itself
    for bindings in (keys.PAIRWISE, keys.RANKING, keys.COMPARE):  # one action per key in a map
        every = [k for b in bindings for k in b.keys]
        assert len(every) == len(set(every))
    wait_ready(qtbot, page)
    assert page.notice.text() == keys.verdict_help()


def test_e_opens_the_editor_and_its_answer_is_stored(qtbot, label_window, monkeypatch):
    from PySide6.QtWidgets import QDialog

    from app.pages.write_better_dialog import WriteBetterDialog

    ctx, win, page = label_window
    opened = []

    def accept(dialog):  # the person writes an answer that beats the right one
        opened.append(dialog.editor.toPlainText())
        dialog.editor.setPlainText("Mine.")
        dialog.worse.setCurrentIndex(1)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(WriteBetterDialog, "exec", accept)
    monkeypatch.setattr(lc, "stream_generate", scripted_stream([["The left one.", "The right one."]]))
    page.controller.queue.drop()  # the tiny model's random bytes may hold a "\r" the editor shows as "\n"
    page.controller.regenerate()
    wait_ready(qtbot, page)
    pair = page.controller.current
    assert pair.texts == ["The left one.", "The right one."]
    qtbot.keyClick(page, Qt.Key.Key_E)
    assert opened == [pair.texts[0]]  # it starts from the left answer
    with open_project(ctx.project_path) as p:
        pairs = p.queries.training_pairs(split=None)
    assert [(sp.pair.chosen, sp.pair.rejected) for sp in pairs] == [("Mine.", "The right one.")]


def test_the_readme_names_every_pairwise_key_of_the_key_map():
    """The README's list of labeling keys is prose; the key map (`app/controllers/keys.py`) is the
    one source: a key changed there without the README fails here."""
    from pathlib import Path

    from app.controllers import keys

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for binding in keys.PAIRWISE:
        assert f"**{binding.keys[0]}**" in readme, binding
