"""The model picker dialog on the fixture stores (tests/model_stores.py): every model a row,
broken ones greyed and unselectable with their reason, verdicts shown, LoRA-only announced,
untrusted names as plain text."""

import gc

import pytest
from PySide6.QtCore import QCoreApplication, QEvent, Qt

from app.widgets.model_picker import MODEL_COLUMNS, ENTRY_ROLE, ModelPickerDialog
from dpo_engine.catalog import list_models
from dpo_engine.catalog.fit import FULL_FITS, LORA_ONLY, TOO_LARGE
from dpo_engine.catalog.sources import Locations
from dpo_engine.catalog import fit as fit_mod
from tests.model_stores import build_gguf_folder, build_hf_cache, build_ollama_store, write_gguf

GiB = 2**30


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("picker")
    build_hf_cache(root / "hf")
    build_ollama_store(root / "ollama", root / "scratch")
    build_gguf_folder(root / "ggufs")
    write_gguf(root / "ggufs" / "<b>bold<i> & <img src=x onerror=alert(1)>.gguf")
    return root


@pytest.fixture(autouse=True)
def collect_dialogs(qapp):
    """Free the closed dialogs (and the catalog entries their models hold) before the next test:
    left to a later garbage collection they would move the refcounts tests/test_qt_refcounts.py reads."""
    yield
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


def lister(root, free=64 * GiB):
    loc = Locations(root / "hf", root / "ollama", ())
    return lambda folders: list_models(folders=folders, locations=loc, free_bytes=free, device="cpu",
                                       include_default=False)


def open_picker(qtbot, root, folders=(), free=64 * GiB):
    list_fn = lister(root, free)
    dialog = ModelPickerDialog(list_fn(list(folders)), lister=list_fn)
    qtbot.addWidget(dialog)
    return dialog


def rows(dialog):
    m = dialog.model
    return {m.data(m.index(r, 0)): [m.data(m.index(r, c)) for c in range(len(MODEL_COLUMNS))]
            for r in range(m.rowCount())}


def row_of(dialog, name):
    return next(r for r in range(dialog.model.rowCount()) if dialog.model.data(dialog.model.index(r, 0)) == name)


def test_lists_the_stores_with_verdicts_and_greys_broken_ones(qtbot, stores):
    dialog = open_picker(qtbot, stores, [str(stores / "ggufs")])
    table = rows(dialog)
    for name in ("tiny-org/tiny-qwen2-chat", "tiny-org/tiny-gemma2-base", "tiny-org/tiny-GGUF/tiny-q8.gguf",
                 "tiny:latest", "someone/tiny-base:q8", "good.gguf", "nested/deeper.gguf"):
        assert table[name][MODEL_COLUMNS.index("Fit")] == FULL_FITS, name
    assert table["tiny:latest"][MODEL_COLUMNS.index("Source")] == "ollama"
    assert table["tiny-org/tiny-gemma2-base"][MODEL_COLUMNS.index("Chat")] == "no (plain text)"
    assert "gated:" in table["tiny-org/tiny-gemma2-base"][MODEL_COLUMNS.index("Notes")]
    for name, reason in (("random.gguf", "not a GGUF file"), ("cut.gguf", "cut off"),
                         ("gone:latest", "blob is missing"), ("tiny-org/damaged", "missing commit")):
        row = row_of(dialog, name)
        assert reason in table[name][MODEL_COLUMNS.index("Notes")]
        assert table[name][MODEL_COLUMNS.index("Fit")] == "unusable"
        flags = dialog.model.flags(dialog.model.index(row, 0))
        assert not flags & Qt.ItemFlag.ItemIsEnabled and not flags & Qt.ItemFlag.ItemIsSelectable
        assert dialog.model.data(dialog.model.index(row, 0), Qt.ItemDataRole.ForegroundRole) is not None
    assert "unusable, greyed" in dialog.summary.text()


def test_selecting_a_model_shows_its_estimate_and_returns_its_path(qtbot, stores):
    dialog = open_picker(qtbot, stores)
    assert not dialog.ok.isEnabled()
    dialog.table.selectRow(row_of(dialog, "tiny:latest"))
    entry = dialog.selected()
    assert dialog.ok.isEnabled() and entry.name == "tiny:latest"
    assert "full fine-tune needs ~" in dialog.detail.toPlainText() and "AdamW" in dialog.detail.toPlainText()
    assert "TINY LICENSE 1.0" in dialog.detail.toPlainText()
    with qtbot.waitSignal(dialog.modelChosen) as chosen:
        dialog.ok.click()
    assert chosen.args == [entry.path] and dialog.result() == dialog.DialogCode.Accepted


def test_broken_rows_cannot_be_selected(qtbot, stores):
    dialog = open_picker(qtbot, stores, [str(stores / "ggufs")])
    dialog.table.selectRow(row_of(dialog, "random.gguf"))
    assert dialog.selected() is None and not dialog.ok.isEnabled()
    assert not dialog.select_path(dialog.model.data(dialog.model.index(row_of(dialog, "cut.gguf"), 0), ENTRY_ROLE).path)


def test_lora_only_and_too_large_are_announced(qtbot, stores, tmp_path):
    """With free memory between the LoRA and the full estimate of a model, picking it says LoRA goes on."""
    # a 64k vocabulary and 8 layers: LoRA (4 B a frozen weight) must undercut full fine-tuning (16 B), which a
    # model of a few million weights does not, since its adapters keep more activations than its weights cost
    path = write_gguf(tmp_path / "mid.gguf", vocab=64_000, hidden=256, layers=8, ffn=1024)
    probe = list_models(paths=[path], locations=Locations(), free_bytes=GiB, device="cpu", include_default=False)
    shape = probe.entries[0].shape
    lora = fit_mod.training_memory(shape, lora=True, batch_pairs=1, checkpointed=True).total
    full = fit_mod.training_memory(shape, lora=False, batch_pairs=1, checkpointed=True).total  # the last full way
    assert lora < full
    between = int((lora + full) / 2 / fit_mod.HEADROOM)
    dialog = ModelPickerDialog(list_models(paths=[path], locations=Locations(), free_bytes=between, device="cpu",
                                           include_default=False))
    qtbot.addWidget(dialog)
    dialog.table.selectRow(0)
    plan = dialog.plan
    assert dialog.selected().fit.verdict == LORA_ONLY and plan.lora and plan.checkpointing and plan.base == "fp32"
    pairs = plan.micro_batch
    assert pairs and f"Only LoRA with gradient checkpointing in micro-batches of {pairs} pair" in \
        dialog.lora_notice.text()
    starved = ModelPickerDialog(list_models(paths=[path], locations=Locations(), free_bytes=GiB // 8, device="cpu",
                                            include_default=False))
    qtbot.addWidget(starved)
    starved.table.selectRow(0)
    assert starved.selected().fit.verdict == TOO_LARGE and starved.plan is None
    assert "Too large" in starved.lora_notice.text()


def test_added_folder_and_hand_picked_file_join_the_list(qtbot, stores, tmp_path):
    dialog = open_picker(qtbot, stores)
    assert "good.gguf" not in rows(dialog)
    dialog.add_folders([str(stores / "ggufs")])
    assert "good.gguf" in rows(dialog) and dialog.folders == [str(stores / "ggufs")]
    (tmp_path / "notes.txt").write_text("not a model")
    from dpo_engine.catalog.sources import inspect_path

    dialog.add_entry(inspect_path(tmp_path / "notes.txt"))
    assert dialog.model.data(dialog.model.index(0, MODEL_COLUMNS.index("Notes"))).startswith("not a model")
    assert "not a model" in dialog.detail.toPlainText()
    dialog.add_entry(inspect_path(stores / "ggufs" / "nested" / "deeper.gguf"))
    assert dialog.selected().path == str(stores / "ggufs" / "nested" / "deeper.gguf")


def test_untrusted_names_stay_plain_text(qtbot, stores):
    dialog = open_picker(qtbot, stores, [str(stores / "ggufs")])
    name = "<b>bold<i> & <img src=x onerror=alert(1)>.gguf"
    row = row_of(dialog, name)
    assert dialog.model.data(dialog.model.index(row, 0), Qt.ItemDataRole.ToolTipRole) is None
    dialog.table.selectRow(row)
    assert dialog.detail.toPlainText().splitlines()[0] == name
    labels = [dialog.summary, dialog.lora_notice]
    assert all(label.textFormat() == Qt.TextFormat.PlainText for label in labels)


def test_every_interactive_widget_is_named(qtbot, stores):
    from PySide6.QtWidgets import QAbstractButton, QAbstractItemView, QPlainTextEdit, QWidget

    dialog = open_picker(qtbot, stores)
    dialog.show()
    kinds = (QAbstractButton, QAbstractItemView, QPlainTextEdit)
    missing = [w for w in dialog.findChildren(QWidget) if isinstance(w, kinds) and w.isVisibleTo(dialog)
               and not (w.objectName() and w.accessibleName()) and not w.objectName().startswith("qt_")]
    assert not missing, [f"{type(w).__name__} {w.objectName()!r}" for w in missing]
