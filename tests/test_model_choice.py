"""One model picker wherever the window asks for a model: the model to teach (status bar),
Compare's "after" model and Train's reference; a model that fits only with LoRA turns LoRA
(and checkpointing) on and says so."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QDialog, QPushButton

import app.pages.model_choice as mc
from app.main import create_window
from app.widgets.model_picker import ModelPickerDialog
from dpo_engine.catalog import list_models
from dpo_engine.catalog.sources import Locations

GiB = 2**30


@pytest.fixture
def window(qtbot, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(mc, "list_models", lambda project=None, folders=(), device="cpu": list_models(
        paths=[tiny_model_dir], folders=folders, locations=Locations(), free_bytes=64 * GiB, device="cpu",
        include_default=False))
    ctx, win = create_window(tmp_path / "p.dpo", "default", "cpu")
    qtbot.addWidget(win)
    yield ctx, win
    ctx.shutdown()


@pytest.fixture
def picks(monkeypatch):
    """The person picks the row with this path and presses "Use this model"."""
    chosen = {}

    def exec_(dialog):
        chosen["rows"] = dialog.model.rowCount()
        if not dialog.select_path(chosen["path"]):
            return QDialog.DialogCode.Rejected
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(ModelPickerDialog, "exec", exec_)
    return chosen


def test_the_model_to_teach_is_chosen_in_the_picker(window, picks, tiny_model_dir):
    ctx, win = window
    picks["path"] = str(tiny_model_dir)
    win.choose_model_button.click()
    assert picks["rows"] >= 1
    assert ctx.model_ref == ctx.base_model_ref == str(tiny_model_dir)  # labeling samples it; training starts from it


def test_a_model_that_fits_only_with_lora_turns_lora_on_and_says_so(window):
    ctx, win = window
    train = win.pages["Train"]
    assert not train.fields["lora"].isChecked()
    win.use_model(mc.ModelChoice("some/model", needs_lora=True, needs_checkpointing=True))
    assert train.fields["lora"].isChecked() and train.fields["gradient_checkpointing"].isChecked()
    assert "LoRA is on" in win.state_label.text()
    train.controller.settings = train.read_settings()
    config = train.controller.build_config(ctx.project_path.parent / "out")
    assert config.lora is not None and config.gradient_checkpointing


def test_compare_and_train_choose_models_in_the_same_picker(window, picks, tiny_model_dir):
    ctx, win = window
    picks["path"] = str(tiny_model_dir)
    compare, train = win.pages["Compare"], win.pages["Train"]
    compare.browse_button.click()
    assert compare.after_model.currentText() == str(tiny_model_dir)
    train.findChild(QPushButton, "adv_reference_pick").click()
    assert train.fields["reference"].text() == str(tiny_model_dir)


def test_a_base_model_without_a_chat_template_is_announced_on_the_label_page(qtbot, tmp_path, tiny_model_dir):
    import json
    import shutil

    from app.pages.label_page import PLAIN_TEXT_NOTICE

    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    ctx, win = create_window(tmp_path / "p.dpo", str(base), "cpu")
    qtbot.addWidget(win)
    with qtbot.waitSignal(ctx.modelStateChanged, timeout=60_000, check_params_cb=lambda s, d: s == "ready"):
        ctx.load_active_model()
    assert ctx.plain_text and win.pages["Label"].notice.text() == PLAIN_TEXT_NOTICE
    ctx.shutdown()
