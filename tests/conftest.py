import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# "auto" precision measures the machine (bf16 where the CPU runs it natively and faster): tests
# pin fp32 so that their numbers do not depend on the CPU; test_precision.py unpins it.
os.environ.setdefault("DPO_STUDIO_DTYPE", "float32")

import pytest

from dpo_engine._compat import quiet_transformers

quiet_transformers()

from tests.tiny_model import build_tiny_model


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
