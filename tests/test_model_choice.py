"""One model picker wherever the window asks for a model: the model to teach (status bar),
Compare's "after" model and Train's reference; a model that fits only with LoRA turns LoRA
(and checkpointing) on and says so."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QDialog, QPushButton

import app.pages.model_choice as mc
from app.main import create_window
from app.widgets.model_picker import ModelPickerDialog
from dpo_engine.catalog import iter_models
from dpo_engine.catalog.sources import Locations
from dpo_engine.run_plan import PlanRequest, plan_run

GiB = 2**30


@pytest.fixture
def window(qtbot, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(mc, "iter_models", lambda project=None, folders=(), device="cpu": iter_models(
        paths=[tiny_model_dir], folders=folders, locations=Locations(), free_bytes=64 * GiB, device="cpu",
        include_default=False))
    ctx, win = create_window(tmp_path / "p.dpo", "default", "cpu")
    qtbot.addWidget(win)
    yield ctx, win
    ctx.shutdown()


@pytest.fixture
def picks(monkeypatch, qtbot):
    """The person waits for the listing (on the worker), picks the row with this path and presses
    "Use this model"."""
    chosen = {}

    def exec_(dialog):
        chosen["loading"] = dialog.loading  # the dialog opens before the listing arrives
        qtbot.waitUntil(lambda: not dialog.loading, timeout=30_000)
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
    assert picks["loading"] and picks["rows"] >= 1
    assert ctx.model_ref == ctx.base_model_ref == str(tiny_model_dir)  # labeling samples it; training starts from it


def test_a_model_that_fits_only_with_lora_turns_lora_on_and_says_so(window):
    ctx, win = window
    train = win.pages["Train"]
    assert not train.fields["lora"].isChecked()
    plan = plan_run(PlanRequest("cpu", "float32")).trained(True, "fp32", True, "LoRA fp32 with checkpointing fits")
    win.use_model(mc.ModelChoice("some/model", plan))
    assert train.fields["lora"].isChecked() and train.fields["gradient_checkpointing"].isChecked()
    assert "LoRA is on" in win.state_label.text()
    train.controller.settings = train.read_settings()
    config = train.controller.build_config(ctx.project_path.parent / "out")
    assert config.lora is not None and config.gradient_checkpointing and config.base_bits is None


def test_the_pickers_lora_4bit_plan_reaches_the_train_config(qtbot, tmp_path, monkeypatch, picks):
    """Llama-3.2-3B's shape on a (mocked) 8 GB bf16 CUDA GPU with bitsandbytes: the picker's fit is
    LoRA over a 4-bit base with checkpointing in micro-batches of 2 pairs (at 4 pairs x 512 tokens the
    estimate is ~8.7 GiB, at 2 pairs ~6.0 of 7.2 usable), and that plan travels through the window to
    the TrainConfig the Train button builds: LoRA, checkpointing, base_bits=4, and the page's 4 x 2
    pairs as 2 x 4 (the same effective batch)."""
    import torch

    from dpo_engine import devices, quant
    from dpo_engine.catalog import Catalog, with_fit
    from dpo_engine.catalog.entry import CatalogEntry
    from tests.test_fit_modes import LLAMA_3_2_3B, shape_of

    monkeypatch.setattr(devices, "_device", lambda device: ("cuda", "a CUDA GPU is available") if device == "cuda"
                        else ("cpu", "requested"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("DPO_STUDIO_DTYPE", raising=False)  # "auto": the GPU's bf16
    monkeypatch.setattr(quant, "catalog_reason", lambda device: None)  # bitsandbytes runs there
    shape = shape_of(LLAMA_3_2_3B)
    free = 8 * GiB
    entry = CatalogEntry("Llama-3.2-3B", "folder", str(tmp_path / "llama-3.2-3b"), "safetensors", "llama",
                         shape.parameters, shape=shape)
    def listing(project=None, folders=(), device="cuda"):
        yield from ()
        return Catalog([with_fit(entry, free, "cuda")], "cuda", free, 0.0)

    monkeypatch.setattr(mc, "iter_models", listing)
    ctx, win = create_window(tmp_path / "p.dpo", "default", "cpu")
    qtbot.addWidget(win)
    try:
        picks["path"] = entry.path
        win.choose_model_button.click()
        train = win.pages["Train"]
        assert train.fields["lora"].isChecked() and train.fields["gradient_checkpointing"].isChecked()
        assert train.fields["base_bits"].currentData() == 4 and "4-bit" in win.state_label.text()
        assert "batch size 2 x accumulation 4 (was 4 x 2)" in win.state_label.text()
        train.controller.settings = train.read_settings()
        config = train.controller.build_config(tmp_path / "out")
        assert (config.base_bits, config.lora is not None, config.gradient_checkpointing) == (4, True, True)
        assert (config.batch_size, config.grad_accum) == (2, 4)
        assert "over a 4-bit frozen base" in train.controller.plan_text()
    finally:
        ctx.shutdown()


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


def test_the_train_page_offers_4bit_only_where_bitsandbytes_runs(qtbot, tmp_path, monkeypatch):
    """Greyed, with the reason, where it does not; the page says how the run will train."""
    from dpo_engine import quant

    monkeypatch.setattr(quant, "catalog_reason", lambda device: f"4-bit needs bitsandbytes: {quant.INSTALL_HINT}")
    ctx, win = create_window(tmp_path / "p.dpo", "default", "cpu")
    qtbot.addWidget(win)
    try:
        train = win.pages["Train"]
        base = train.fields["base_bits"]
        four = base.model().item(base.findData(4))
        assert not four.isEnabled() and "pip install 'dpo-studio[gpu]'" in four.toolTip()
        train.fields["lora"].setChecked(True)
        assert train.plan_label.text() == "Training on cpu in float32 over an fp32 frozen base (fp32: set by " \
                                          "DPO_STUDIO_DTYPE)"
    finally:
        ctx.shutdown()
