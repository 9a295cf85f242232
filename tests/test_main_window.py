import pytest
from PySide6.QtWidgets import QWidget

from app.main import create_window


@pytest.fixture
def window(qtbot, tmp_path, tiny_model_dir):
    ctx, win = create_window(tmp_path / "p.sqlite", str(tiny_model_dir), device="cpu")
    qtbot.addWidget(win)
    yield ctx, win
    ctx.shutdown()


def test_window_opens_and_model_loads_in_background(qtbot, window):
    ctx, win = window
    win.show()
    assert win.isVisible()
    assert [win.nav.item(i).text() for i in range(win.nav.count())] == ["Label", "Data", "Train", "Compare"]
    with qtbot.waitSignal(ctx.modelStateChanged, timeout=30_000, check_params_cb=lambda s, d: s == "ready"):
        ctx.load_active_model()
    assert win.state_label.text() == "Ready"
    assert win.device_label.text() == "Device: cpu, float32 (fp32: set by DPO_STUDIO_DTYPE)"  # conftest pins fp32


def test_status_bar_names_the_auto_precision_and_why(qtbot, tmp_path, tiny_model_dir, monkeypatch):
    from dpo_engine import precision

    monkeypatch.delenv("DPO_STUDIO_DTYPE")
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "native_bf16_flags", lambda: ["amx_bf16"])
    monkeypatch.setattr(precision, "measure", lambda: {"speedup": 3.0, "measured": "2026-12-02T10:00:00+00:00"})
    ctx, win = create_window(tmp_path / "p.sqlite", str(tiny_model_dir), device="cpu")
    qtbot.addWidget(win)
    try:
        assert win.device_label.text() == ("Device: cpu, bfloat16 (bf16: CPU has amx_bf16, matmul 3.0x fp32 "
                                           "(measured 2026-12-02))")
        assert "Precision: bf16: CPU has amx_bf16" in win.device_label.toolTip()
    finally:
        ctx.shutdown()


def test_bad_model_shows_error_and_app_survives(qtbot, tmp_path):
    ctx, win = create_window(tmp_path / "p.sqlite", str(tmp_path / "missing" / "model"), device="cpu")
    qtbot.addWidget(win)
    with qtbot.waitSignal(ctx.modelStateChanged, timeout=10_000, check_params_cb=lambda s, d: s == "error"):
        ctx.load_active_model()
    assert "No model at" in win.state_label.text()
    ctx.shutdown()


def test_every_interactive_widget_has_object_and_accessible_name(window):
    from PySide6.QtWidgets import QAbstractButton, QAbstractItemView, QLineEdit, QPlainTextEdit, QSpinBox, QComboBox

    _, win = window
    kinds = (QAbstractButton, QAbstractItemView, QLineEdit, QPlainTextEdit, QSpinBox, QComboBox)
    missing = [w for w in win.findChildren(QWidget) if isinstance(w, kinds) and w.isVisibleTo(win)
               and not (w.objectName() and w.accessibleName())
               and not w.objectName().startswith("qt_")]
    assert not missing, [f"{type(w).__name__} {w.objectName()!r}" for w in missing]


def test_model_cache_reloads_a_rewritten_checkpoint(tmp_path, tiny_model_dir):
    import os
    import shutil

    from app.plumbing.context import ModelCache
    from dpo_engine.devices import pick_device

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, folder)
    cache = ModelCache(pick_device("cpu"))
    first = cache.get(str(folder))
    assert cache.get(str(folder)) is first  # unchanged: served from memory
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert cache.get(str(folder)) is not first  # rewritten in place: loaded again


def test_scores_use_fp32_copies_where_they_fit_and_say_when_not(tiny_model_dir, monkeypatch):
    import torch

    import app.plumbing.context as context
    from app.plumbing.context import ModelCache
    from dpo_engine.devices import DeviceChoice

    auto_bf16 = DeviceChoice("cpu", "bfloat16", "no GPU found", "bf16: CPU has avx512_bf16 (faked)")
    cache = ModelCache(auto_bf16)
    ref = str(tiny_model_dir)
    sampling = cache.get(ref)
    scoring = cache.scoring(ref)
    assert next(sampling.model.parameters()).dtype == torch.bfloat16
    assert next(scoring.model.parameters()).dtype == torch.float32 and cache.scoring_choice.dtype == "float32"
    assert cache.get(ref) is sampling and cache.scoring(ref) is scoring  # both kept: no reload per round
    cache.drop(ref)
    monkeypatch.setattr(context, "memory_budget", lambda device: (1000, "cpu"))  # fp32 cannot fit now
    tight = cache.scoring(ref)
    assert next(tight.model.parameters()).dtype == torch.bfloat16
    assert "fp32 weights do not fit" in cache.scoring_choice.precision_reason


def test_first_run_preparation_progress_shows_in_the_status_bar(qtbot, window, monkeypatch):
    """Preparing the model (the default on first run, a .gguf) reports each stage in the status bar."""
    import app.plumbing.context as context
    from dpo_engine.models import PrepareProgress

    ctx, win = window
    seen = []
    ctx.modelStateChanged.connect(lambda s, d: seen.append((s, win.state_label.text())))

    def fake_load(ref, device, tokenizer=None):
        yield PrepareProgress("download", 0.05, "Downloading the default model")
        yield PrepareProgress("dequantise", 0.4, "Dequantising")
        return type("L", (), {"name": "stub"})()

    monkeypatch.setattr(context, "load_model_events", fake_load)
    ctx.model_ref = "default"
    with qtbot.waitSignal(ctx.modelStateChanged, timeout=10_000, check_params_cb=lambda s, d: s == "ready"):
        ctx.load_active_model()
    texts = [t for s, t in seen if s == "loading"]
    assert "Downloading the default model (5%)" in texts and "Dequantising (40%)" in texts


def _job_without_pause_points(seconds: float):
    """Like converting a .gguf: one long call before the first yield (nothing to cancel at)."""
    import time

    def factory():
        time.sleep(seconds)
        yield "done"
    return factory


def close_while_a_long_job_runs(qtbot, ctx, win) -> None:
    win.show()
    started = []
    ctx.submit("convert-gguf", _job_without_pause_points(3.0)).started.connect(lambda: started.append(True))
    qtbot.waitUntil(lambda: bool(started), timeout=20_000)  # running now (after the page's own first jobs)
    win.close()


def busy_dialog(qtbot, win):
    from PySide6.QtWidgets import QMessageBox

    qtbot.waitUntil(lambda: win.findChild(QMessageBox, "closeWhileBusyDialog") is not None, timeout=5_000)
    return win.findChild(QMessageBox, "closeWhileBusyDialog")


def test_closing_during_a_job_without_pause_points_asks_then_closes_when_done(qtbot, window):
    ctx, win = window
    close_while_a_long_job_runs(qtbot, ctx, win)
    assert win.isVisible() and "Finishing" in win.state_label.text()
    box = busy_dialog(qtbot, win)
    assert "convert-gguf" in box.text() and "cannot stop midway" in box.text()
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=15_000)  # it closed by itself once the job ended
    assert not ctx.runner._thread.isRunning()


def test_keep_working_cancels_the_close(qtbot, window):
    from PySide6.QtWidgets import QPushButton

    ctx, win = window
    close_while_a_long_job_runs(qtbot, ctx, win)
    busy_dialog(qtbot, win).findChild(QPushButton, "keepWorking").click()
    qtbot.waitUntil(lambda: not ctx.runner.busy(), timeout=15_000)
    qtbot.wait(300)
    assert win.isVisible() and "Kept open" in win.state_label.text()


def test_a_missing_page_dependency_stops_start_up_with_the_install_command(qtbot, tmp_path, tiny_model_dir,
                                                                           monkeypatch, capsys):
    """The pages are imported with the window: without pyqtgraph (the Train page's plots) the app
    names the module and how to install it, and exits non-zero, instead of showing a blank page."""
    import sys

    import app.main as main_module

    for name in [m for m in sys.modules if m == "app.main_window" or m.startswith(("app.pages.", "app.widgets."))]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, against the missing package
    monkeypatch.setitem(sys.modules, "pyqtgraph", None)  # as if not installed
    shown = []
    monkeypatch.setattr(main_module, "startup_error_box",
                        lambda message: type("Box", (), {"exec": lambda self: shown.append(message)})())
    code = main_module.run_app(["--project", str(tmp_path / "p.sqlite"), "--model", str(tiny_model_dir),
                             "--device", "cpu"])
    assert code == 1
    assert len(shown) == 1 and "'pyqtgraph' is missing" in shown[0] and "pip install 'pyqtgraph'" in shown[0]
    assert shown[0] in capsys.readouterr().err


def test_pages_get_their_controllers_from_the_window(window):
    from app.controllers.compare_controller import CompareController
    from app.controllers.data_controller import DataController
    from app.controllers.train_controller import TrainController

    ctx, win = window
    kinds = {"Data": DataController, "Train": TrainController, "Compare": CompareController}
    assert {name: type(win.pages[name].controller) for name in kinds} == kinds
    assert all(win.pages[name].controller.ctx is ctx for name in ("Train", "Compare"))
