import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# "auto" precision measures the machine (bf16 where the CPU runs it natively and faster): tests
# pin fp32 so that their numbers do not depend on the CPU; test_precision.py unpins it.
os.environ.setdefault("DPO_STUDIO_DTYPE", "float32")

import pytest

from dpo_engine._compat import quiet_transformers

quiet_transformers()

from tests.tiny_model import build_bpe_model, build_tiny_model


def pytest_configure(config):
    """`make test-other-isa` caps torch's CPU kernels by environment variable; a cap that did not
    take (a renamed variable, a torch that ignores it) would rerun the same kernels and prove
    nothing, so the run stops at once instead."""
    expected = os.environ.get("DPO_STUDIO_EXPECT_CPU_CAPABILITY")
    if expected:
        import torch

        running = torch.backends.cpu.get_cpu_capability()
        if running.upper() != expected.upper():
            raise pytest.UsageError(f"ATen runs {running} kernels, not the capped {expected}: "
                                    "the other-ISA pass would test nothing new.")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + byte tokenizer saved as a local model folder (nothing downloaded)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    """The tiny model loaded on the CPU through the engine's own loader."""
    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model

    return load_model(str(tiny_model_dir), pick_device("cpu"))


@pytest.fixture(autouse=True)
def _pace_memory_in_tmp(tmp_path, monkeypatch):
    """The Label page remembers the labeling pace in the user cache: tests keep theirs apart
    (a remembered slow pace would change the queue of the next test's window)."""
    from app.controllers import pace

    monkeypatch.setattr(pace, "memory_file", lambda: tmp_path / "labeling-pace.json")


@pytest.fixture(autouse=True)
def _train_speed_in_tmp(tmp_path, monkeypatch):
    """Runs remember their speed in the user cache (`train.duration`): tests keep theirs apart."""
    from dpo_engine.train import duration

    monkeypatch.setattr(duration, "speed_file", lambda: tmp_path / "train-speed.json")


@pytest.fixture
def private_cache(tmp_path_factory, monkeypatch):
    """A user cache of the test's own (DPO_STUDIO_CACHE): training keeps the reference model's
    log-probs there by fingerprint (dpo_engine/train/reference.py), so a test that trains must
    not find another test's."""
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path_factory.mktemp("cache")))


# --------------------------------------------------------------------------- the CPU's precision


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """pick_device's view of the CPU, faked; "auto" unpinned (the top of this file pins fp32); a private cache."""
    from dpo_engine import precision
    from tests.fake_cpu import FakeCpu

    fake = FakeCpu()
    monkeypatch.delenv("DPO_STUDIO_DTYPE", raising=False)
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "native_bf16_flags", lambda: fake.flags)
    monkeypatch.setattr("dpo_engine.devices.native_bf16_flags", lambda: fake.flags)
    monkeypatch.setattr(precision, "measure", fake.measure)
    return fake


# --------------------------------------------------------------------------- projects


@pytest.fixture
def fresh_db():
    """An empty in-memory project (fast; no file, no lock)."""
    from dpo_engine.store.opening import open_project

    project = open_project(":memory:")
    yield project
    project.close()


@pytest.fixture
def project_file(tmp_path):
    """Path of a project file that does not exist yet."""
    return tmp_path / "project.dpo.sqlite"


# --------------------------------------------------------------------------- checkpoints to export
# Module scope: built once per test module that exports, so a test that wrote into one (the
# export tests check that none does) could not change what another module reads.


@pytest.fixture(scope="module")
def bpe_model_dir(tmp_path_factory):
    """The BPE-tokenizer Llama a GGUF can carry (tests/tiny_model.py, build_bpe_model)."""
    return build_bpe_model(tmp_path_factory.mktemp("bpe-model"))


def _write_run_files(folder, base: str, lora: dict | None) -> None:
    """The files the trainer writes beside a checkpoint's weights: run record, trainer state, manifest."""
    import json

    config = {"loss": "sigmoid", "beta": 0.1, "lr": 5e-5 if lora else 5e-6, "epochs": 1, "batch_size": 2,
              "grad_accum": 4, "max_length": 512, "seed": 42, "lora": lora}
    info = {"base_model": base, "lora": lora is not None, "merged": False, "step": 12, "total_steps": 12,
            "status": "finished", "config": config}
    (folder / "dpo_studio_run.json").write_text(json.dumps(info))
    (folder / "trainer_state").mkdir()
    (folder / "trainer_state" / "state.json").write_text("{}")
    (folder / "checkpoint.json").write_text(json.dumps({"format": 1, "files": {}}))


@pytest.fixture(scope="module")
def full_run_dir(bpe_model_dir, tmp_path_factory):
    """A full fine-tune's checkpoint as the trainer leaves it: a model folder plus our files."""
    import shutil

    folder = tmp_path_factory.mktemp("runs") / "full"
    shutil.copytree(bpe_model_dir, folder)
    _write_run_files(folder, "default", None)
    return folder


@pytest.fixture(scope="module")
def lora_run_dir(bpe_model_dir, tmp_path_factory):
    """A LoRA run's checkpoint: adapter (with non-zero B, so merging changes the logits), tokenizer, our files."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("runs") / "lora"
    base = AutoModelForCausalLM.from_pretrained(bpe_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(bpe_model_dir).save_pretrained(folder)
    _write_run_files(folder, str(bpe_model_dir), {"rank": 4, "alpha": 8, "dropout": 0.0,
                                                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    return folder


# --------------------------------------------------------------------------- windows


def _fill_project(project_path, n=16):
    """n learnable conversational pairs in a new project file."""
    from dpo_engine.pairs import conversation
    from dpo_engine.store.opening import open_project

    with open_project(project_path) as p:
        pairs = [conversation(f"Say something {i}", "yes " * (1 + i % 3), "no " * (2 + i % 4)) for i in range(n)]
        p.import_pairs(pairs)


@pytest.fixture
def train_window(qtbot, tmp_path, tiny_model_dir):
    """The main window on the Train page, over a project of 16 pairs, on the tiny model (CPU)."""
    from app.main import create_window

    _fill_project(tmp_path / "p.sqlite")
    ctx, win = create_window(tmp_path / "p.sqlite", str(tiny_model_dir), device="cpu")
    qtbot.addWidget(win)
    win.show()
    win.show_page("Train")
    page = win.pages["Train"]
    page.fields["max_length"].setValue(128)  # the byte tokenizer makes prompts ~70 tokens
    yield ctx, win, page
    if page.controller.running:
        page.controller.stop()
        qtbot.waitUntil(lambda: not page.controller.running, timeout=60_000)
    ctx.shutdown()
