"""Ranking mode on the Label page, offscreen, on the tiny model with a scripted sampler:
k answers sampled in one batch, ranked by keyboard, stored as one group; undo removes it."""

import pytest
from PySide6.QtCore import Qt

import app.controllers.rounds as lc  # the sampler (stream_generate) moved here
from app.main import create_window
from dpo_engine.store.opening import open_project
from tests.label_helpers import scripted_stream, wait_ready

ANSWERS = ["first answer", "second one", "third answer here", "fourth"]


@pytest.fixture
def ranking_window(qtbot, tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    fake = scripted_stream([ANSWERS] * 20)

    def recording(model, tokenizer, prompt, n=1, settings=None):
        calls.append((n, prompt))
        return (yield from fake(model, tokenizer, prompt, n, settings))

    monkeypatch.setattr(lc, "stream_generate", recording)
    ctx, win = create_window(tmp_path / "p.sqlite", str(tiny_model_dir), device="cpu")
    qtbot.addWidget(win)
    page = win.pages["Label"]
    page.controller.queue.prefetch = 0  # one prompt at a time keeps the scripted answers in order
    win.show()
    page.mode_box.setCurrentIndex(page.mode_box.findData("ranking"))
    yield ctx, page, calls
    ctx.shutdown()


def rows(ctx):
    with open_project(ctx.project_path) as p:
        return p.db.conn.execute(
            "SELECT l.text, r.text, c.verdict, c.group_id FROM comparisons c JOIN responses l ON l.id = c.left_id "
            "JOIN responses r ON r.id = c.right_id WHERE c.deleted IS NULL ORDER BY c.id").fetchall()


def test_keyboard_ranking_stores_all_pairs_in_one_group(qtbot, ranking_window):
    ctx, page, calls = ranking_window
    assert page.controller.k == 4 and page.mode_stack.currentIndex() == 1
    wait_ready(qtbot, page)
    pair = page.controller.current
    assert pair.n == 4 and pair.texts == ANSWERS
    # all four answers in one batched call (a pairwise sample may have begun before the switch)
    assert [n for n, prompt in calls if prompt == pair.prompt] == [4]
    assert [p.text.toPlainText() for p in page.rank_panes[:4]] == ANSWERS
    assert not page.rank_panes[4].isVisibleTo(page)
    # 3 = 1 > 4 > 2: "3", "=", "1", "4", then Enter (answer 2 unplaced: last)
    for key in (Qt.Key.Key_3, Qt.Key.Key_Equal, Qt.Key.Key_1, Qt.Key.Key_4):
        qtbot.keyClick(page, key)
    assert page.ranking_label.text() == "Your ranking: 3 = 1 > 4"
    assert "place 1 (tie)" in page.rank_panes[0].title.text()
    assert rows(ctx) == []  # nothing stored until the ranking is saved
    qtbot.keyClick(page, Qt.Key.Key_Return)
    stored = rows(ctx)  # committed before the next prompt shows
    assert len(stored) == 6 and len({g for *_, g in stored}) == 1
    a1, a2, a3, a4 = ANSWERS
    assert {(l, r): v for l, r, v, _ in stored} == {
        (a1, a2): "left", (a1, a3): "tie", (a1, a4): "left",
        (a2, a3): "right", (a2, a4): "right", (a3, a4): "left"}  # left/right in shown order
    with open_project(ctx.project_path) as p:
        pairs = {(sp.pair.chosen, sp.pair.rejected) for sp in p.queries.training_pairs(None)}
    assert pairs == {(a3, a4), (a3, a2), (a1, a4), (a1, a2), (a4, a2)}
    assert page.controller.current is not pair


def test_backspace_takes_back_and_undo_removes_the_whole_ranking(qtbot, ranking_window):
    ctx, page, _ = ranking_window
    wait_ready(qtbot, page)
    first = page.controller.current
    qtbot.keyClick(page, Qt.Key.Key_2)
    qtbot.keyClick(page, Qt.Key.Key_4)
    qtbot.keyClick(page, Qt.Key.Key_Backspace)
    assert page.controller.ranking.order == [1]
    for key in (Qt.Key.Key_1, Qt.Key.Key_3, Qt.Key.Key_4):  # placing the last answer saves
        qtbot.keyClick(page, key)
    assert len(rows(ctx)) == 6
    assert [r[2] for r in rows(ctx)].count("tie") == 0
    qtbot.keyClick(page, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert rows(ctx) == []
    assert page.controller.current is first and page.controller.ranking.order == []


def test_switching_back_to_pairwise_samples_two_answers(qtbot, ranking_window):
    ctx, page, calls = ranking_window
    wait_ready(qtbot, page)
    page.mode_box.setCurrentIndex(page.mode_box.findData("pairwise"))
    wait_ready(qtbot, page)
    assert page.controller.current.n == 2 and calls[-1][0] == 2
    qtbot.keyClick(page, Qt.Key.Key_1)  # digits are verdicts again
    assert [r[2] for r in rows(ctx)] == ["left"]


def test_answers_cut_off_at_the_cap_are_marked_and_stored_unfinished(qtbot, ranking_window, monkeypatch):
    ctx, page, _ = ranking_window
    wait_ready(qtbot, page)
    monkeypatch.setattr(lc, "stream_generate", scripted_stream([ANSWERS] * 5, ended=[True, False, True, False]))
    page.controller.regenerate()
    wait_ready(qtbot, page)
    shown = [p.length.text() for p in page.rank_panes[:4]]
    assert ["cut off" in t for t in shown] == [False, True, False, True], shown
    for key in (Qt.Key.Key_1, Qt.Key.Key_3, Qt.Key.Key_2, Qt.Key.Key_4):
        qtbot.keyClick(page, key)
    a1, a2, a3, a4 = ANSWERS
    with open_project(ctx.project_path) as p:
        pairs = {(sp.pair.chosen, sp.pair.rejected): (sp.pair.chosen_finished, sp.pair.rejected_finished)
                 for sp in p.queries.training_pairs(None)}
    assert pairs == {(a1, a3): (True, True), (a1, a2): (True, False), (a1, a4): (True, False),
                     (a3, a2): (True, False), (a3, a4): (True, False), (a2, a4): (False, False)}


def test_dragging_the_order_row_ranks_and_enter_saves(qtbot, ranking_window):
    from PySide6.QtCore import QModelIndex

    ctx, page, _ = ranking_window
    wait_ready(qtbot, page)
    row = page.rank_order
    assert row.isEnabled() and row.current_order() == [0, 1, 2, 3]
    assert [row.item(i).text() for i in range(4)] == [f"Answer {i} (not placed)" for i in range(1, 5)]
    qtbot.keyClick(page, Qt.Key.Key_2)  # a place by key shows first in the row
    assert row.current_order() == [1, 0, 2, 3] and row.item(0).text() == "Answer 2"
    # the drop of a drag: answer 4 moved to the front (QListWidget moves the row in its model)
    assert row.model().moveRow(QModelIndex(), 3, QModelIndex(), 0)
    qtbot.waitUntil(lambda: page.controller.ranking.order == [3, 1, 0, 2], timeout=2_000)
    assert page.ranking_label.text() == "Your ranking: 4 > 2 > 1 > 3"
    assert rows(ctx) == []  # a drag does not save: the person may keep rearranging
    qtbot.keyClick(page, Qt.Key.Key_Return)
    a1, a2, a3, a4 = ANSWERS
    with open_project(ctx.project_path) as p:
        pairs = {(sp.pair.chosen, sp.pair.rejected) for sp in p.queries.training_pairs(None)}
    assert pairs == {(a4, a2), (a4, a1), (a4, a3), (a2, a1), (a2, a3), (a1, a3)}
