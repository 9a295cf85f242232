"""The export dialog (Train page run history, Compare page): the export runs on the torch
worker with progress, says what it wrote (and the `ollama create` command), a failure is a
message, and a cancel leaves nothing under the chosen name."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.main import create_window
from app.controllers.export_controller import ExportController
from app.pages.export_dialog import ExportDialog


@pytest.fixture
def window(qtbot, tmp_path, tiny_model_dir):
    ctx, win = create_window(tmp_path / "p.dpo", str(tiny_model_dir), "cpu")
    qtbot.addWidget(win)
    yield ctx, win
    ctx.shutdown()


def run_export(qtbot, dialog, fmt: str, out) -> None:
    dialog.format.setCurrentIndex(dialog.format.findData(fmt))
    dialog.path.setText(str(out))
    dialog.start()
    qtbot.waitUntil(lambda: dialog.controller.job is None, timeout=120_000)


def test_exports_an_ollama_folder_on_the_worker_and_shows_the_command(qtbot, window, full_run_dir, tmp_path):
    ctx, win = window
    dialog = ExportDialog(ExportController(ctx, str(full_run_dir)), win)
    qtbot.addWidget(dialog)
    progress = []
    dialog.progress.valueChanged.connect(progress.append)
    run_export(qtbot, dialog, "ollama", tmp_path / "mine")
    assert (tmp_path / "mine" / "Modelfile").is_file() and (tmp_path / "mine" / "mine.gguf").is_file()
    text = dialog.output.toPlainText()
    assert "ollama create mine -f" in text and "Modelfile" in text
    assert progress and progress[-1] == 100 and len(set(progress)) > 2  # it moved while it worked
    assert dialog.status.textFormat() == Qt.TextFormat.PlainText
    assert "## Results" in (tmp_path / "mine" / "README.md").read_text()  # the card read the window's project


def test_a_refused_export_is_a_message(qtbot, window, full_run_dir, tmp_path):
    ctx, win = window
    dialog = ExportDialog(ExportController(ctx, str(full_run_dir)), win)
    qtbot.addWidget(dialog)
    run_export(qtbot, dialog, "peft", tmp_path / "adapter")  # a full run has no adapter
    assert dialog.status.text().startswith("Export failed:") and not (tmp_path / "adapter").exists()
    assert dialog.export_button.isEnabled()  # the person can choose another format


def test_a_cancelled_export_leaves_nothing(qtbot, window, full_run_dir, tmp_path, monkeypatch):
    """The person presses Cancel while the GGUF is being written: simulated deterministically by
    cancelling the job, from the worker, at the export's first tensor (a tiny export may finish in
    50 ms); the worker then closes the generator at that yield."""
    import dpo_engine.export
    from dpo_engine.iters import mapped

    ctx, win = window
    real = dpo_engine.export.export_events

    def cancel_at_first_tensor(event):
        if "tensor" in event.message:
            ctx.runner.cancel_foreground()  # as the Cancel button does (the job's flag), from then on
        return event

    monkeypatch.setattr(dpo_engine.export, "export_events",
                        lambda *a, **k: mapped(real(*a, **k), cancel_at_first_tensor))
    dialog = ExportDialog(ExportController(ctx, str(full_run_dir)), win)
    qtbot.addWidget(dialog)
    dialog.format.setCurrentIndex(dialog.format.findData("gguf"))
    out = tmp_path / "exports" / "m.gguf"
    dialog.path.setText(str(out))
    with qtbot.waitSignal(dialog.controller.cancelled, timeout=120_000):
        dialog.start()
    qtbot.waitUntil(lambda: dialog.controller.job is None, timeout=120_000)
    assert dialog.controller.result is None and "cancelled" in dialog.status.text().lower()
    assert list(out.parent.iterdir()) == []  # no file, no temporary sibling


def test_compare_exports_the_after_model(qtbot, window, full_run_dir):
    ctx, win = window
    compare = win.pages["Compare"]
    compare.controller.after_ref = str(full_run_dir)
    dialog = compare._on_export_clicked()
    assert dialog is not None and dialog.model_ref == str(full_run_dir)
    dialog.close()


def test_the_dialog_lists_what_the_model_allows_with_sizes(qtbot, window, full_run_dir, tmp_path):
    """A full run: the adapter formats are greyed out with the reason; each GGUF type shows its size before
    writing, and the file written is within 10% of it (the tokenizer is estimated from tokenizer.json)."""
    ctx, win = window
    dialog = ExportDialog(ExportController(ctx, str(full_run_dir)), win)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: bool(dialog.controller.options), timeout=60_000)
    items = {dialog.format.itemData(i): dialog.format.model().item(i) for i in range(dialog.format.count())}
    assert not items["peft"].isEnabled() and "full fine-tune" in items["peft"].toolTip()
    assert not items["gguf-lora"].isEnabled() and items["gguf"].isEnabled() and "MB" in items["gguf"].text()
    dialog.format.setCurrentIndex(dialog.format.findData("gguf"))
    sizes = {}
    for quant in ("f16", "q8_0", "q4_0"):
        dialog.quant.setCurrentIndex(dialog.quant.findData(quant))
        assert dialog.size.text().startswith("About ")
        sizes[quant] = dialog.controller.options[("gguf", quant)].size_bytes
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]
    dialog.format.setCurrentIndex(dialog.format.findData("peft"))
    assert dialog.size.text().startswith("Not for this model:")
    dialog.format.setCurrentIndex(dialog.format.findData("gguf"))
    dialog.quant.setCurrentIndex(dialog.quant.findData("f16"))
    dialog.path.setText(str(tmp_path / "m.gguf"))
    dialog.start()
    qtbot.waitUntil(lambda: dialog.controller.job is None, timeout=120_000)
    written = (tmp_path / "m.gguf").stat().st_size
    assert 0.9 * sizes["f16"] < written <= sizes["f16"]
    assert "MB)" in dialog.status.text()
