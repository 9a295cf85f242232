"""Data page (pytest-qt, offscreen) and its controller: list, filter, view, flip, delete
with undo, import report, export, lazy paging."""

from __future__ import annotations

import json
import time

import pytest
from PySide6.QtCore import QElapsedTimer, QTimer, Qt

from app.widgets.comparison_table import PAGE_SIZE
from app.plumbing.context import AppContext
from app.controllers.data_controller import DataController, ImportProgress, report_text
from app.pages.data_page import DataPage
from dpo_engine.devices import pick_device
from dpo_engine.pairs import PreferencePair
from dpo_engine.store.opening import open_project
from dpo_engine.store.project import normalize_prompt, prompt_key, split_of
from tests.store_helpers import label, sample_pairs


@pytest.fixture
def filled(project_file):
    """5 imported pairs, then labeled: a tie, a right and a left verdict (newest last)."""
    with open_project(project_file) as project:
        project.import_pairs(sample_pairs())
        ids = {"tie": label(project, "Tie prompt", "same-ish", "similar", "tie"),
               "right": label(project, "Right prompt", "<b>not bold</b>", "better answer", "right"),
               "left": label(project, "Left prompt", "good", "bad", "left", note="sure")}
    return project_file, ids


@pytest.fixture
def page(qtbot, filled):
    ctx = AppContext(filled[0], "default", pick_device("cpu"))
    page = DataPage(ctx, DataController(ctx.project_path, on_changed=ctx.comparisonsChanged.emit, submit=ctx.submit))
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    yield page
    page.controller.close()
    ctx.shutdown()


def _verdicts(page) -> list[str]:
    model = page.controller.model
    return [model.row_at(r).verdict for r in range(model.rowCount())]


def _select(page, cid: int) -> None:
    page.select_id(cid)
    assert page.selected_ids() == [cid]


def test_lists_newest_first_and_shows_a_pair_in_full(page, filled):
    _, ids = filled
    assert page.table.model().rowCount() == 8
    assert _verdicts(page)[:3] == ["left", "right", "tie"]
    _select(page, ids["right"])
    assert page.left_view.toPlainText() == "<b>not bold</b>"  # shown literally, never as HTML
    assert page.right_view.toPlainText() == "better answer"
    assert [t.text() for t in page.detail_titles[1:]] == ["Left — rejected", "Right — chosen"]
    assert "8 of 8 comparisons" in page.summary.text() and "7 usable pairs" in page.summary.text()


@pytest.mark.parametrize("widget,value,expected", [
    ("verdict_filter", "tie", 1), ("source_filter", "import", 5), ("source_filter", "label", 3),
    ("split_filter", "eval", 1), ("split_filter", "train", 8), ("search", "Paris", 1), ("search", "no such text", 0),
])
def test_filters(qtbot, page, widget, value, expected):
    if widget == "split_filter":  # add one prompt that hashes into eval (the fixture's are all train)
        text = next(t for t in (f"held out {i}" for i in range(1000))
                    if split_of(prompt_key(normalize_prompt(t))) == "eval")
        with open_project(page.ctx.project_path) as other:
            label(other, text, "a", "b", "left")
        page.ctx.comparisonsChanged.emit()
    w = getattr(page, widget)
    if widget == "search":
        w.setText(value)
        qtbot.waitUntil(lambda: page.controller.model.filter.text == value, timeout=2000)
    else:
        w.setCurrentIndex(w.findData(value))
    rows = [page.controller.model.row_at(r) for r in range(page.controller.model.rowCount())]
    assert len(rows) == expected
    if widget != "search":
        assert {getattr(r, widget.removesuffix("_filter")) for r in rows} == {value}


def test_flip_changes_the_stored_pair_and_undo_restores_it(qtbot, page, filled):
    path, ids = filled
    _select(page, ids["left"])
    with qtbot.waitSignal(page.ctx.comparisonsChanged):
        qtbot.mouseClick(page.flip_button, Qt.MouseButton.LeftButton)
    with open_project(path, read_only=True) as project:
        assert project.queries.comparison(ids["left"]).verdict == "right"
        assert PreferencePair((("user", "Left prompt"),), "bad", "good") in {
            p.pair for p in project.queries.training_pairs(None)}
    assert page.selected_ids() == [ids["left"]] and page.right_view.toPlainText() == "bad"
    assert page.detail_titles[2].text() == "Right — chosen"
    qtbot.mouseClick(page.undo_button, Qt.MouseButton.LeftButton)
    with open_project(path, read_only=True) as project:
        assert project.queries.comparison(ids["left"]).verdict == "left"


def test_delete_then_undo(qtbot, page, filled):
    path, ids = filled
    _select(page, ids["tie"])
    qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)
    assert page.table.model().rowCount() == 7
    assert page.controller.model.row_of(ids["tie"]) == -1
    with open_project(path, read_only=True) as project:
        assert project.queries.stats().by_verdict["tie"] == 0
    assert page.undo_button.isEnabled()
    qtbot.mouseClick(page.undo_button, Qt.MouseButton.LeftButton)
    assert page.table.model().rowCount() == 8 and page.selected_ids() == [ids["tie"]]
    assert not page.undo_button.isEnabled()


def test_import_shows_row_level_report(qtbot, page, tmp_path, monkeypatch):
    path = tmp_path / "more.jsonl"
    path.write_text(json.dumps({"prompt": "New", "chosen": "x", "rejected": "y"}) + "\n{broken\n", encoding="utf-8")
    monkeypatch.setattr(page, "_ask_import_paths", lambda: [path])
    qtbot.mouseClick(page.import_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.report_dialog is not None, timeout=10_000)  # imported on the worker
    dialog = page.report_dialog
    assert dialog.isVisible()
    assert "1 new pairs" in dialog.body.toPlainText()
    assert f"{path}:line 2: invalid JSON" in dialog.body.toPlainText()
    assert "1 rows rejected" in dialog.headline.text()
    assert page.table.model().rowCount() == 9
    dialog.reject()


def test_export_writes_the_chosen_format_on_the_worker(qtbot, page, tmp_path, monkeypatch):
    """The file is written by the torch worker, through its own connection, and is the file an
    export on the GUI thread writes."""
    import threading

    import app.controllers.data_controller as dc

    out, threads, real_export = tmp_path / "pairs.csv", [], dc.export_pairs

    def spy(project, path, fmt):
        threads.append(threading.current_thread())
        return real_export(project, path, fmt)

    monkeypatch.setattr(dc, "export_pairs", spy)
    monkeypatch.setattr(page, "_ask_export_target", lambda: (out, "csv"))
    page.export_button.click()
    qtbot.waitUntil(lambda: "Exported" in page.summary.text(), timeout=10_000)
    assert "Exported 7 pairs" in page.summary.text() and str(out) in page.summary.text()
    assert threads and threads[0] is not threading.main_thread()
    assert out.read_text(encoding="utf-8").startswith("prompt,chosen,rejected")
    assert page.controller.export(tmp_path / "here.csv", "csv") == 7  # on this thread, the same file
    assert (tmp_path / "here.csv").read_bytes() == out.read_bytes()


def test_an_export_that_cannot_be_written_says_why(qtbot, page, filled, monkeypatch):
    """Onto the project file itself: refused on the worker, the reason shown, the project intact."""
    before = filled[0].read_bytes()
    monkeypatch.setattr(page, "_ask_export_target", lambda: (filled[0], "trl"))
    page.export_button.click()
    qtbot.waitUntil(lambda: "Export failed" in page.summary.text(), timeout=10_000)
    assert "the file being read" in page.summary.text()
    qtbot.waitUntil(lambda: page.controller.export_job is None, timeout=5_000)
    assert filled[0].read_bytes() == before


def test_refreshes_when_another_page_labels(page, filled):
    with open_project(filled[0]) as other:  # e.g. the Label page's own connection
        label(other, "From the Label page", "a", "b", "left")
    page.ctx.comparisonsChanged.emit()
    assert page.table.model().rowCount() == 9


def test_rows_are_fetched_page_by_page(tmp_path):
    path = tmp_path / "big.sqlite"
    with open_project(path) as project:
        project.import_pairs([PreferencePair(f"q{i}", "a", "b") for i in range(450)])
    controller = DataController(path)
    model = controller.model
    assert (model.rowCount(), model.total) == (PAGE_SIZE, 450)
    assert model.canFetchMore()
    model.fetchMore()
    model.fetchMore()
    assert model.rowCount() == 450 and not model.canFetchMore()
    controller.set_filter(text="q44")  # q44, q440..q449
    assert model.rowCount() == 11
    controller.close()


def test_controller_flip_skips_non_pairs_and_undo_is_last_in_first_out(filled):
    path, ids = filled
    changes = []
    controller = DataController(path, on_changed=lambda: changes.append(1))
    assert controller.flip([ids["tie"]]) == 0 and not controller.undo_stack  # a tie has no side to flip
    controller.flip([ids["left"], ids["right"]])
    controller.delete([ids["left"]])
    assert controller.undo().kind == "delete"
    assert controller.project.queries.comparison(ids["left"]).verdict == "right"
    assert controller.undo().kind == "verdict"
    assert [controller.project.queries.comparison(i).verdict for i in (ids["left"], ids["right"])] == ["left", "right"]
    assert controller.undo() is None and len(changes) == 4
    controller.close()


def test_locked_project_opens_read_only(filled, monkeypatch):
    from dpo_engine.store import opening as store
    from dpo_engine.errors import ProjectLockedError

    real = store.open_project

    def locked(path, read_only=False):
        if not read_only:
            raise ProjectLockedError(f"{path} is open in another DPO Studio process (pid 1).")
        return real(path, read_only=True)

    monkeypatch.setattr("app.controllers.data_controller.open_project", locked)
    controller = DataController(filled[0])
    assert not controller.writable and controller.model.rowCount() == 8
    assert "Read-only" in controller.summary() and "pid 1" in controller.summary()
    controller.close()


def test_every_interactive_widget_is_named(page):
    from PySide6.QtWidgets import QAbstractButton, QAbstractItemView, QComboBox, QLineEdit, QPlainTextEdit, QWidget

    kinds = (QAbstractButton, QAbstractItemView, QLineEdit, QPlainTextEdit, QComboBox)
    widgets = [w for w in page.findChildren(QWidget) if isinstance(w, kinds) and w.isVisibleTo(page)
               and not w.objectName().startswith("qt_")]
    assert len(widgets) >= 12
    assert [w for w in widgets if not (w.objectName() and w.accessibleName())] == []


def test_import_runs_on_the_worker_with_progress_and_the_window_stays_responsive(qtbot, page, filled, tmp_path,
                                                                                 monkeypatch):
    """Two files, each import held up 0.5 s: the GUI thread keeps ticking a 10 ms timer, the progress
    bar shows each file, and the project ends as a synchronous import leaves a copy of it."""
    import shutil
    import threading

    import app.controllers.data_controller as dc

    files = [tmp_path / "a.jsonl", tmp_path / "b.csv"]
    files[0].write_text(json.dumps({"prompt": "New", "chosen": "x", "rejected": "y"}) + "\n{broken\n", encoding="utf-8")
    files[1].write_text("prompt,chosen,rejected\nAlso new,p,q\nNew,x,y\n", encoding="utf-8")
    copy = tmp_path / "copy.sqlite"
    shutil.copy(filled[0], copy)  # the same project, imported the old way (on the calling thread)
    in_place = DataController(copy)
    expected = in_place.import_files(files)

    threads, real_import = [], dc.import_file

    def slow_import(project, path, strict=False):
        threads.append(threading.current_thread())
        time.sleep(0.5)
        return real_import(project, path, strict=strict)

    monkeypatch.setattr(dc, "import_file", slow_import)
    monkeypatch.setattr(page, "_ask_import_paths", lambda: files)
    clock, gaps, seen = QElapsedTimer(), [], []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: (gaps.append(clock.restart()),
                                   seen.append((page.import_progress.isVisible(), page.import_progress.value()))))
    page.controller.importProgress.connect(lambda p: seen.append(p.text))
    clock.start()
    timer.start()
    qtbot.mouseClick(page.import_button, Qt.MouseButton.LeftButton)
    assert not page.import_button.isEnabled()  # no second import meanwhile
    qtbot.waitUntil(lambda: page.report_dialog is not None, timeout=20_000)
    timer.stop()
    assert len(threads) == 2 and threading.main_thread() not in threads
    assert max(gaps[1:]) < 250, f"the event loop stalled {max(gaps[1:])} ms"  # each import sleeps 500 ms
    assert "Importing a.jsonl (1 of 2)…" in seen and "Importing b.csv (2 of 2)…" in seen
    assert (True, 1) in seen  # the bar showed the second file while it was imported
    assert not page.import_progress.isVisible() and page.import_button.isEnabled()
    dialog = page.report_dialog
    assert dialog.headline.text() == "Imported 2 new items from 2 file(s); 1 rows rejected."
    assert dialog.body.toPlainText() == report_text(expected)
    assert [(r.added, r.duplicates, len(r.errors)) for r in expected] == [(1, 0, 1), (1, 1, 0)]

    def contents(project):
        return sorted((r.prompt if isinstance(r.prompt, str) else str(r.prompt), r.left, r.right, r.verdict)
                      for r in project.queries.list_comparisons())

    assert contents(page.controller.project) == contents(in_place.project)
    assert page.table.model().rowCount() == 10
    in_place.close()
    dialog.reject()


def test_the_data_controller_imports_on_the_worker_for_a_mocked_page(qtbot, filled, tmp_path):
    """The controller alone: progress then the outcome reach the listening (mocked) page."""
    from unittest.mock import MagicMock

    ctx = AppContext(filled[0], "default", pick_device("cpu"))
    controller = DataController(filled[0], on_changed=ctx.comparisonsChanged.emit, submit=ctx.submit)
    view = MagicMock()
    controller.importProgress.connect(view.show_progress)
    controller.importFinished.connect(view.show_outcome)
    ctx.comparisonsChanged.connect(view.comparisons_changed)
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    assert controller.start_import([path])
    assert not controller.start_import([path])  # one import at a time
    qtbot.waitUntil(lambda: view.show_outcome.called, timeout=10_000)
    view.show_progress.assert_called_once_with(ImportProgress(0, 1, str(path)))
    outcome = view.show_outcome.call_args.args[0]
    assert outcome.headline == "Imported 1 new items from 1 file(s); 0 rows rejected."
    assert view.comparisons_changed.call_count == 1 and controller.model.total == 9
    controller.close()
    ctx.shutdown()
