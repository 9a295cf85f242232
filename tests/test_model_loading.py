"""Loading a model says how far it is, and refuses at once what cannot fit (dpo_engine/weights.py).

A tiny Llama saved in shards (save_pretrained's max_shard_size), so that transformers reads
several files and sets its weights one by one, as it does a 1-3B model's."""

import threading
from pathlib import Path

import pytest
import torch

from dpo_engine import weights
from dpo_engine.devices import pick_device
from dpo_engine.errors import ModelError
from dpo_engine.models import PrepareProgress, load_model_events
from dpo_engine.weights import GIB, reported_load, weight_files, weight_sizes

from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def sharded_model_dir(tmp_path_factory):
    """The tiny model saved again in shards of at most 20 kB (its fp32 weights are ~90 kB)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    whole = build_tiny_model(tmp_path_factory.mktemp("whole"))
    folder = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(whole).save_pretrained(folder, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(whole).save_pretrained(folder)
    return folder


def events_and_result(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def test_sizes_come_from_every_shard_in_the_load_precision(sharded_model_dir):
    files = weight_files(sharded_model_dir)
    assert len(files) >= 3 and all(f.name.startswith("model-0") for f in files)
    fp32, bf16 = weight_sizes(files, torch.float32), weight_sizes(files, torch.bfloat16)
    model = events_and_result(load_model_events(str(sharded_model_dir), pick_device("cpu", "float32")))[1].model
    # tied embeddings: the files hold the embedding once, as the model's parameters() count it
    assert sum(fp32.values()) == 4 * sum(p.numel() for p in model.parameters())
    assert {name: 2 * size for name, size in bf16.items()} == fp32


def test_a_load_reports_the_tokenizer_then_its_weights_up_to_one(sharded_model_dir, monkeypatch):
    monkeypatch.setattr(weights, "PROGRESS_EVERY_S", 0.0)  # every weight its own event
    events, loaded = events_and_result(load_model_events(str(sharded_model_dir), pick_device("cpu", "float32")))
    assert [e.stage for e in events[:2]] == ["tokenizer", "weights"]
    weight_events = [e for e in events if e.stage == "weights"]
    fractions = [e.fraction for e in weight_events]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    assert len(weight_events) >= len(list(loaded.model.state_dict())) // 2  # one per weight set, not just 0 and 1
    total_mib = sum(weight_sizes(weight_files(sharded_model_dir), torch.float32).values()) / 2**20
    assert weight_events[-1].message == f"Loading weights {total_mib:.0f} / {total_mib:.0f} MiB"
    assert not loaded.model.training and next(loaded.model.parameters()).dtype == torch.float32


def fake_load(items: dict, each=lambda name: None):
    """A `from_pretrained` stand-in: transformers' own "Loading weights" loop over `items`."""
    from transformers.utils.logging import tqdm

    def load():
        for name, _ in tqdm(items.items(), desc="Loading weights"):
            each(name)
        return "model"
    return load


def test_progress_is_in_bytes_of_the_weights_set(monkeypatch):
    monkeypatch.setattr(weights, "PROGRESS_EVERY_S", 0.0)
    sizes = {"embed": 3 * GIB // 2, "head": GIB}  # 1.5 + 1.0 GiB
    events, value = events_and_result(reported_load(fake_load(sizes), sizes))
    assert value == "model"
    assert [(e.fraction, e.message) for e in events] == [
        (0.0, "Loading weights 0.0 / 2.5 GiB"), (0.6, "Loading weights 1.5 / 2.5 GiB"),
        (1.0, "Loading weights 2.5 / 2.5 GiB")]


def test_without_sizes_progress_counts_the_weights(monkeypatch):
    monkeypatch.setattr(weights, "PROGRESS_EVERY_S", 0.0)
    events, _ = events_and_result(reported_load(fake_load(dict.fromkeys("abcd")), {}))
    assert [e.message for e in events] == ["Loading weights (0 of 1 tensors)"] + [
        f"Loading weights ({n} of 4 tensors)" for n in (1, 2, 3, 4)]


def test_a_failed_load_raises_in_the_callers_thread():
    def load():
        raise ModelError("damaged shard")

    with pytest.raises(ModelError, match="damaged shard"):
        events_and_result(reported_load(load, {}))


def test_closing_the_load_stops_it_at_the_next_weight():
    """The window cancels a job by closing its generator: the helper thread must stop loading too."""
    release, seen = threading.Event(), []

    def each(name):
        seen.append(name)
        release.wait(5)  # the first weight takes a while: the close arrives during it

    gen = reported_load(fake_load(dict.fromkeys(range(100)), each), {})
    next(gen)  # the first event (0 of ...); the helper is setting weight 0
    threading.Timer(0.5, release.set).start()
    gen.close()  # waits for the helper, which stops when weight 0 is done
    assert seen == [0]
    assert not any(t.name == "load-weights" for t in threading.enumerate())


def test_a_model_that_cannot_fit_is_refused_before_anything_loads(sharded_model_dir, monkeypatch):
    import dpo_engine.models as models

    files = weight_files(sharded_model_dir)
    weights_bytes = sum(weight_sizes(files, torch.float32).values())
    monkeypatch.setattr(weights, "free_memory", lambda device: weights_bytes)  # the weights, but no room to run
    monkeypatch.setattr(models, "load_tokenizer", lambda resolved: pytest.fail("loaded a tokenizer"))
    gen = load_model_events(str(sharded_model_dir), pick_device("cpu", "float32"))
    with pytest.raises(ModelError) as refused:
        next(gen)
    need = int(weights_bytes * weights.LOAD_SPARE)  # 1.1 x the fp32 weights
    text = str(refused.value)
    mib = weights_bytes / 2**20
    assert text == (f"{sharded_model_dir.name} does not fit in memory: it needs {need / 2**20:.1f} MiB (its float32 "
                    f"weights, {mib:.1f} MiB, and room to sample) and {mib:.1f} MiB is free (cpu). Pick a smaller "
                    "model, close other programs, or train it as LoRA over a 4-bit base on a CUDA GPU.")


def test_unknown_free_memory_does_not_refuse(sharded_model_dir, monkeypatch):
    monkeypatch.setattr(weights, "free_memory", lambda device: 0)  # neither psutil nor /proc/meminfo
    events, loaded = events_and_result(load_model_events(str(sharded_model_dir), pick_device("cpu", "float32")))
    assert loaded.model is not None and isinstance(events[0], PrepareProgress)


# --------------------------------------------------------------------------- the window


@pytest.fixture
def sharded_window(qtbot, tmp_path, sharded_model_dir):
    from app.main import create_window

    ctx, win = create_window(tmp_path / "p.sqlite", str(sharded_model_dir), device="cpu")
    qtbot.addWidget(win)
    texts = []
    ctx.modelStateChanged.connect(lambda state, detail: texts.append((state, win.state_label.text())))
    yield ctx, win, texts
    ctx.shutdown()


def test_the_status_bar_shows_the_loading_steps(qtbot, sharded_window, monkeypatch):
    monkeypatch.setattr(weights, "PROGRESS_EVERY_S", 0.0)
    ctx, win, texts = sharded_window
    ctx.models.drop(ctx.model_ref)  # the tokenizer loaded before the window showed is forgotten too
    with qtbot.waitSignal(ctx.modelStateChanged, timeout=30_000, check_params_cb=lambda s, d: s == "ready"):
        ctx.load_active_model()
    loading = [text for state, text in texts if state == "loading"]
    name = ctx.model_ref.rsplit("/", 1)[-1]
    assert f"Loading the tokenizer of {name} (0%)" in loading
    weight_texts = [t for t in loading if t.startswith("Loading weights")]
    assert weight_texts[0].endswith("MiB (0%)") and weight_texts[-1].endswith("MiB (100%)")
    assert len(weight_texts) > 2 and win.state_label.text() == "Ready"


def saved_verdicts(path) -> list[tuple]:
    """The verdicts on disk, read through a connection of our own (not the window's)."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT prompt_id, verdict FROM comparisons ORDER BY id").fetchall()


def test_a_model_too_large_says_so_in_the_status_bar_and_loses_nothing(qtbot, sharded_window, monkeypatch):
    from tests.store_helpers import label

    ctx, win, texts = sharded_window
    label(ctx.project, "Which is kinder?", "a kind answer", "a rude one", "left", note="kept")
    before = saved_verdicts(ctx.project_path)
    measured = weights.free_memory
    monkeypatch.setattr(weights, "free_memory", lambda device: 1000)  # 1 kB free: not even the tiny model fits
    with qtbot.waitSignal(ctx.modelStateChanged, timeout=30_000, check_params_cb=lambda s, d: s == "error"):
        ctx.load_active_model()
    text = win.state_label.text()
    name = Path(ctx.model_ref).name
    assert text.startswith(f"Model failed to load: {name} does not fit in memory: it needs 0.1 MiB")
    assert "0.0 MiB is free (cpu). Pick a smaller model" in text and win.state_label.wordWrap()
    assert win.model_label.text() == f"Model: {name}" and win.model_label.toolTip() == ctx.model_ref
    assert saved_verdicts(ctx.project_path) == before and len(before) == 1
    monkeypatch.setattr(weights, "free_memory", measured)  # the person closed other programs
    with qtbot.waitSignal(ctx.modelStateChanged, timeout=30_000, check_params_cb=lambda s, d: s == "ready"):
        ctx.set_active_model(ctx.model_ref)  # and picked the same model again: it loads now
    assert win.state_label.text() == "Ready" and not win.state_label.wordWrap()
    assert saved_verdicts(ctx.project_path) == before


def test_the_first_load_takes_the_tokenizer_loaded_before_the_window_showed(qtbot, tmp_path, sharded_model_dir,
                                                                            monkeypatch):
    """Loaded on the torch worker, the tokenizer's GIL-holding calls stalled the opening window
    (bench/README.md, "Loading at real size"): `create_window` loads it first, and the first load
    of the model uses that one; a later load of the same model loads its own."""
    from app.main import create_window
    from dpo_engine import models

    threads = []
    real = models.load_tokenizer

    def counted(resolved):
        threads.append(threading.current_thread().name)
        return real(resolved)

    monkeypatch.setattr(models, "load_tokenizer", counted)
    ctx, win = create_window(tmp_path / "p.sqlite", str(sharded_model_dir), device="cpu")
    qtbot.addWidget(win)
    try:
        assert threads == [threading.main_thread().name]
        texts = []
        ctx.modelStateChanged.connect(lambda state, detail: texts.append(detail))
        with qtbot.waitSignal(ctx.modelStateChanged, timeout=30_000, check_params_cb=lambda s, d: s == "ready"):
            ctx.load_active_model()
        assert threads == [threading.main_thread().name]  # the worker loaded none
        assert not any(t.startswith("Loading the tokenizer") for t in texts)
        assert any(t.startswith("Loading weights") for t in texts)
        first = ctx.models.get(ctx.model_ref)
        assert first.tokenizer("a kind answer")["input_ids"] == real(first.resolved)("a kind answer")["input_ids"]
        ctx.models.drop(ctx.model_ref)
        with qtbot.waitSignal(ctx.modelStateChanged, timeout=30_000, check_params_cb=lambda s, d: s == "ready"):
            ctx.load_active_model()
        assert len(threads) == 2 and threads[1] != threading.main_thread().name
    finally:
        ctx.shutdown()


@pytest.mark.parametrize("kind", ["hub id", "no tokenizer", "lora run"])
def test_no_tokenizer_is_loaded_ahead_for_what_the_load_must_prepare_or_explain(tmp_path, sharded_model_dir, kind):
    from dpo_engine.models import preload_tokenizer

    if kind == "hub id":
        assert preload_tokenizer("someone/some-model") is None
        return
    folder = tmp_path / "m"
    folder.mkdir()
    for f in sharded_model_dir.iterdir():
        if kind == "no tokenizer" and f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            continue
        (folder / f.name).write_bytes(f.read_bytes())
    if kind == "lora run":
        (folder / "adapter").mkdir()
    assert preload_tokenizer(str(folder)) is None
    assert preload_tokenizer(str(sharded_model_dir)) is not None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from Linux's /proc")
def test_freed_memory_goes_back_to_the_os():
    """glibc keeps freed heap memory for the process: a training run's many mid-sized tensors left
    2.2 GB of it in the window (bench/README.md); `return_freed_memory` hands it back."""
    import re

    from dpo_engine.weights import return_freed_memory

    def anon() -> int:
        return int(re.search(r"RssAnon:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    tensors = [torch.ones(16 * 1024) for _ in range(8000)]  # 64 KB each (under glibc's mmap threshold): 0.5 GB
    last = tensors[-1]  # the heap's top stays in use, as it does in a window that goes on
    held = anon()
    del tensors
    if not return_freed_memory():
        pytest.skip("no glibc malloc_trim here")
    assert held - anon() > 400 * 2**20, (held, anon())
    assert last.sum() == 16 * 1024
