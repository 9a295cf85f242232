"""What the trainer trusts and when it stops: a reference cache is used only when it verifies
(checksum, the code that computed it), a stop during the reference pass is honoured within a
batch and its work kept, and a diverging run stops as failed with the last good checkpoint.
Each test failed on the code before the fix; docs/reliability.md lists them."""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dpo_engine.atomic import find_checkpoint, read_manifest
from dpo_engine.encoding import encode_pair
from dpo_engine.iters import drain
from dpo_engine.losses import LossParams
from dpo_engine.paths import cache_dir
from dpo_engine.train import reference
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.events import LogLine, ReferenceProgress, StepEvent, TrainSummary
from dpo_engine.train.loop import train
from dpo_engine.train.step import StepContext
from tests.train_helpers import make_pairs

pytestmark = pytest.mark.usefixtures("private_cache")  # each test has its own reference cache


def config(tiny_model_dir, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(tiny_model_dir), lr=1e-3, batch_size=4, grad_accum=1,
                warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3, max_steps=1)
    return TrainConfig(**{**base, **kw})


def run(cfg, pairs, **kw) -> list:
    events = list(train(cfg, pairs, **kw))
    assert isinstance(events[-1], TrainSummary) and sum(isinstance(e, TrainSummary) for e in events) == 1
    return events


def of(kind, events) -> list:
    return [e for e in events if isinstance(e, kind)]


def cache_files() -> list:
    return sorted((cache_dir() / "reference-logps").glob("*.safetensors"))


# --------------------------------------------------------------------------- the reference cache


def _plausible_wrong_values(path, keep_metadata: bool) -> None:
    """Overwrite a cache file with the same tensors shifted by a few nats (plausible log-probs)."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() if keep_metadata else None
    tensors["chosen"] = tensors["chosen"] - 3.0
    tensors["rejected"] = tensors["rejected"] + 2.0
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("keep_metadata", [False, True], ids=["no-checksum", "checksum-mismatch"])
def test_a_cache_with_plausible_wrong_values_is_scored_again_and_said_so(tiny_model_dir, tmp_path, keep_metadata):
    pairs = make_pairs(8)
    first = run(config(tiny_model_dir, tmp_path / "a"), pairs)
    assert of(StepEvent, first)[0].loss == pytest.approx(math.log(2), abs=1e-6)
    [path] = cache_files()
    _plausible_wrong_values(path, keep_metadata)

    events = run(config(tiny_model_dir, tmp_path / "b"), pairs)
    assert of(StepEvent, events)[0].loss == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    warnings = [e.message for e in of(LogLine, events) if e.level == "warning"]
    assert any(str(path) in w and "scoring the pairs again" in w for w in warnings), warnings
    assert not any(e.cached for e in of(ReferenceProgress, events))
    third = run(config(tiny_model_dir, tmp_path / "c"), pairs)  # the rescored file verifies and is used
    assert [e.cached for e in of(ReferenceProgress, third)] == [True]
    assert not [e for e in of(LogLine, third) if e.level == "warning"]


def test_the_cache_version_follows_the_scoring_code(tiny_loaded, tmp_path, monkeypatch):
    """Editing any file of reference.SCORING_MODULES changes the version, hence the fingerprint."""
    import dpo_engine.logps

    enc = [encode_pair(tiny_loaded.tokenizer, p) for p in make_pairs(2)]
    before = reference.computation_version(), reference.reference_fingerprint("m", enc, 64, "fp32")
    edited = tmp_path / "logps.py"
    source = Path(dpo_engine.logps.__file__).read_text()
    edited.write_text(source.replace("HEAD_CHUNK_BYTES = 64", "HEAD_CHUNK_BYTES = 32"))
    monkeypatch.setattr(dpo_engine.logps, "__file__", str(edited))
    reference.computation_version.cache_clear()
    try:
        after = reference.computation_version(), reference.reference_fingerprint("m", enc, 64, "fp32")
    finally:
        monkeypatch.undo()
        reference.computation_version.cache_clear()
    assert after[0] != before[0] and after[1] != before[1]
    assert reference.computation_version() == before[0]


# Engine code that runs during a reference pass but cannot change a number: events and the
# generator helpers carry progress; train.model.is_peft only picks the adapter-off context.
NOT_NUMERIC = {"dpo_engine.train.events", "dpo_engine.iters", "dpo_engine.train.model"}


@pytest.mark.parametrize("group_answers", [False, True], ids=["pairwise", "grouped"])
def test_every_module_a_reference_pass_runs_is_in_the_cache_version(tiny_loaded, group_answers):
    """A new module on the scoring path must join SCORING_MODULES, or its changes would reuse stale caches."""
    enc = [encode_pair(tiny_loaded.tokenizer, p) for p in make_pairs(6)]
    ctx = StepContext("sigmoid", LossParams(), tiny_loaded.tokenizer.pad_token_id, torch.device("cpu"), True,
                      tiny_loaded.device.autocast, group_answers=group_answers)
    ran: set[str] = set()

    def profile(frame, event, arg):
        name = frame.f_globals.get("__name__", "")
        if event == "call" and name.startswith("dpo_engine"):
            ran.add(name)

    sys.setprofile(profile)
    try:
        scores = drain(reference.compute_reference(tiny_loaded.model, enc, ctx, 2))
    finally:
        sys.setprofile(None)
    assert scores.complete
    assert "dpo_engine.logps" in ran and ran - NOT_NUMERIC <= set(reference.SCORING_MODULES), ran


# --------------------------------------------------------------------------- a stop during the reference pass


def _stop_at_first_progress():
    flag = threading.Event()
    return flag, lambda e: isinstance(e, ReferenceProgress) and not e.cached and flag.set()


@pytest.mark.parametrize("separate", [False, True], ids=["policy-is-reference", "separate-reference"])
def test_a_stop_during_the_reference_pass_ends_within_a_batch_and_the_next_run_continues(
        tiny_model_dir, tmp_path, separate):
    from tests.tiny_model import build_tiny_model

    ref_model = str(build_tiny_model(tmp_path / "ref", seed=1)) if separate else None
    pairs = make_pairs(20)  # batch_size 1 -> reference batches of 2: 10 of them
    cfg = config(tiny_model_dir, tmp_path / "run", batch_size=1, reference=ref_model)
    flag, on_event = _stop_at_first_progress()
    events = []
    for event in train(cfg, pairs, stop=flag):
        events.append(event)
        on_event(event)
    summary = events[-1]
    assert isinstance(summary, TrainSummary) and summary.status == "stopped" and summary.step == 0
    assert [e.done for e in of(ReferenceProgress, events)] == [2]  # nothing scored after the stop
    assert not of(StepEvent, events) and summary.checkpoint is None and find_checkpoint(tmp_path / "run") is None
    assert "reference pass" in summary.reason

    again = run(cfg, pairs)  # the same run started again: only the 8 batches left are scored
    assert [e.done for e in of(ReferenceProgress, again)] == list(range(4, 21, 2))
    assert any("Continuing the reference pass" in e.message for e in of(LogLine, again))
    assert again[-1].status == "finished"
    whole = drain(reference.compute_reference(*_reference_inputs(ref_model or tiny_model_dir, pairs)))
    [path] = cache_files()
    cached = load_file(str(path))
    assert cached["done"].all()
    torch.testing.assert_close(cached["chosen"], whole.chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached["rejected"], whole.rejected, rtol=0, atol=1e-5)


def test_a_resumed_run_stopped_in_its_reference_pass_still_names_its_checkpoint(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """The run record is finished with the summary's checkpoint: a stop before any new step must not unlink it."""
    from dpo_engine.train.loop import load_run_config

    out = tmp_path / "run"
    flag = threading.Event()
    for event in train(config(tiny_model_dir, out, max_steps=4, batch_size=1), make_pairs(8), stop=flag):
        if isinstance(event, StepEvent) and event.step == 2:
            flag.set()
    assert read_manifest(out)["step"] == 2
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "fresh-cache"))  # the reference is scored again
    flag, on_event = _stop_at_first_progress()
    events = []
    for event in train(load_run_config(out), make_pairs(8), stop=flag, resume_from=out):
        events.append(event)
        on_event(event)
    summary = events[-1]
    assert summary.status == "stopped" and summary.step == 2 and summary.checkpoint == str(out.absolute())
    assert "reference pass" in summary.reason and [e.done for e in of(ReferenceProgress, events)] == [2]
    assert not of(StepEvent, events) and read_manifest(out)["step"] == 2


def test_a_reference_pass_killed_midway_is_continued(tiny_model_dir, tmp_path, monkeypatch):
    """The pass keeps its part in the cache as it goes (every KEEP_EVERY_S; here every batch)."""
    monkeypatch.setattr(reference, "KEEP_EVERY_S", 0.0, raising=False)  # False: it also ran on the code before
    pairs = make_pairs(20)
    cfg = config(tiny_model_dir, tmp_path / "run", batch_size=1)
    events = train(cfg, pairs)
    for event in events:
        if isinstance(event, ReferenceProgress) and event.done == 6:
            break
    events.close()  # nothing of the trainer runs after this, as after kill -9: no stop, nothing saved
    again = run(cfg, pairs)
    assert [e.done for e in of(ReferenceProgress, again)] == list(range(8, 21, 2))
    assert of(StepEvent, again)[0].loss == pytest.approx(math.log(2), abs=1e-6)


def _reference_inputs(model_dir, pairs):
    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model

    loaded = load_model(str(model_dir), pick_device("cpu", "float32"))
    enc = [encode_pair(loaded.tokenizer, p) for p in pairs]
    ctx = StepContext("sigmoid", LossParams(), loaded.tokenizer.pad_token_id, torch.device("cpu"), True,
                      loaded.device.autocast)
    return loaded.model, enc, ctx, 2


# --------------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_as_failed_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    """The audit's `--lr 1e3`: step 1 warms up at lr 0 (its checkpoint is the base's weights), step 2
    at lr 1e3 multiplies the weights' norm ~10^4-fold without a NaN; it was recorded `finished`."""
    from click.testing import CliRunner

    from dpo_engine.cli.main import main
    from dpo_engine.store.opening import open_project

    db, out = tmp_path / "p.dpo", tmp_path / "out"
    with open_project(db) as project:
        project.import_pairs(make_pairs(16))
    args = ["train", "--device", "cpu", "--project", db, "--model", tiny_model_dir, "--output", out, "--lr", "1e3",
            "--warmup-ratio", "0.25", "--max-steps", "4", "--save-every", "1", "--batch-size", "2", "--grad-accum", "1"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == 1 and "Step 2: training diverged" in result.output, result.output
    assert "Lower the learning rate (it was 1000" in result.output
    assert read_manifest(out)["step"] == 1  # the wrecked step 2 was never saved
    base, kept = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(base[name], kept[name]) for name in base)
    with open_project(db, read_only=True) as project:
        (row,) = project.queries.runs()
    assert row.status == "failed" and "diverged" in row.error and row.checkpoint == str(out.absolute())


def test_the_cli_says_a_run_stopped_in_its_reference_pass_has_nothing_to_resume(capsys):
    """`dpo-engine train` stopped during a new run's reference pass: no "Model: None" and no
    "--resume None", but what happened and how to continue (the same command: the scored part is cached)."""
    from dpo_engine.cli.train import _report
    from dpo_engine.train.events import TrainSummary

    _report(TrainSummary("stopped", 0, 0, 3.0, None, "stopped on request during the reference pass"))
    err = capsys.readouterr().err
    assert "None" not in err and "Stopped before the first step" in err and "same command" in err
