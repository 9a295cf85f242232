"""Issue 35, item 2: a run that is quit at once (a second Ctrl-C or SIGTERM, the window closing
the driver) keeps what the record knows: `stopped`, its last complete checkpoint linked and
resumable; and the repair on open links the rows that name no checkpoint while one they wrote
is complete in their output folder. Each test marked so failed on the code before the fix
(the run ended `failed` with its checkpoint NULL). docs/reliability.md lists them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dpo_engine.atomic import find_checkpoint, read_manifest, write_checkpoint
from dpo_engine.store.project import open_project
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.driver import RunStarted, drive
from dpo_engine.train.events import StepEvent, TrainSummary
from tests.deny_access import deny_access
from tests.train_helpers import make_pairs

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("private_cache")  # training caches reference log-probs there


@pytest.fixture
def project_path(tmp_path):
    path = tmp_path / "p.dpo"
    with open_project(path) as project:
        project.import_pairs(make_pairs(16))
    return path


def _only_run(project_path) -> dict:
    with open_project(project_path, read_only=True) as project:
        (run,) = project.runs.all()
        return {**run, "models": {m["ref"] for m in project.runs.models() if m["kind"] == "checkpoint"}}


# ----------------------------------------------------------------------------- the CLI, for real
def test_a_second_interrupt_of_train_project_keeps_the_checkpoint_linked(tiny_model_dir, tmp_path, project_path):
    """The audit's case: `train --project p --save-every 1`, after "Checkpoint at step 1", two
    interrupts. SIGINT and SIGTERM (one handler for both) are sent back to back: two SIGINTs
    that close could reach Python as one, and one apart lets the first stop end the run."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "dpo_engine", "train", "--device", "cpu", "--project", str(project_path),
         "--model", str(tiny_model_dir), "--output", str(out), "--max-steps", "400", "--batch-size", "2",
         "--grad-accum", "1", "--eval-fraction", "0", "--save-every", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    deadline = time.monotonic() + 120
    seen = []
    while not (seen and "Checkpoint at step 1" in seen[-1]):
        seen.append(child.stderr.readline())
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail("no checkpoint at step 1: " + "".join(seen) + child.stderr.read())
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGTERM)
    rest = child.communicate(timeout=120)[1]
    assert child.returncode == 130, rest
    assert "Quit. The last checkpoint" in rest and "Traceback" not in rest
    run = _only_run(project_path)
    assert run["status"] == "stopped" and run["checkpoint"] == str(out.absolute()), run
    assert "a second Ctrl-C" in run["error"] and "resume continues" in run["error"]
    assert read_manifest(out)["step"] >= 1 and run["checkpoint"] in run["models"]


# ----------------------------------------------------------------------------- the driver, in-process
def _settings(tiny_model_dir, out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(tiny_model_dir), batch_size=2, grad_accum=1, max_steps=6, lr=1e-3,
                eval_every=0, save_every=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def _stopped_run(project_path, config: TrainConfig) -> str:
    """A run stopped after step 2 (its checkpoint there, the row `stopped`): its checkpoint."""
    stop = threading.Event()
    for event in drive(config, project=project_path, stop=stop):
        if isinstance(event, StepEvent) and event.step == 2:
            stop.set()
    assert event.status == "stopped"
    return event.checkpoint


def _quit(events, how: str) -> None:
    if how == "second Ctrl-C":  # what `dpo-engine train` does with it (cli/train.py `_quit`)
        with pytest.raises(KeyboardInterrupt):
            events.throw(KeyboardInterrupt())
    else:  # the consumer drops the driver: the window's worker cancelled, the generator closed
        events.close()


@pytest.mark.parametrize("how", ["second Ctrl-C", "generator closed"])
def test_quitting_a_resumed_run_keeps_the_checkpoint_its_row_had(project_path, tiny_model_dir, tmp_path, how):
    """The audit: "on a resumed run this erased a checkpoint the row already had"."""
    config = _settings(tiny_model_dir, tmp_path / "run")
    checkpoint = _stopped_run(project_path, config)
    events = drive(config, project=project_path, resume_from=checkpoint)
    assert next(e for e in events if isinstance(e, StepEvent)).step == 3  # running again, from step 2
    assert _only_run(project_path)["status"] == "running"
    _quit(events, how)
    run = _only_run(project_path)
    assert run["status"] == "stopped" and run["checkpoint"] == checkpoint, run
    assert find_checkpoint(checkpoint) is not None and read_manifest(checkpoint)["step"] == 2


def test_quitting_links_the_checkpoint_the_run_wrote_since_its_row_named_one(project_path, tiny_model_dir,
                                                                              tmp_path):
    config = _settings(tiny_model_dir, tmp_path / "run", save_every=2)
    events = drive(config, project=project_path)
    next(e for e in events if isinstance(e, StepEvent) and e.step == 3)  # the step-2 checkpoint is on disk
    _quit(events, "second Ctrl-C")
    run = _only_run(project_path)
    assert run["status"] == "stopped" and run["checkpoint"] == str((tmp_path / "run").absolute()), run
    assert read_manifest(run["checkpoint"])["step"] == 2 and "(step 2)" in run["error"]


def test_quitting_before_a_checkpoint_does_not_take_an_older_runs(project_path, tiny_model_dir, tmp_path):
    """A guard on the fix: the folder holds an earlier run's checkpoint; this run wrote none."""
    config = _settings(tiny_model_dir, tmp_path / "run", max_steps=1)
    earlier = list(drive(config, project=project_path))[-1]
    assert earlier.status == "finished"
    events = drive(config, project=project_path)
    assert isinstance(next(events), RunStarted)
    _quit(events, "second Ctrl-C")
    with open_project(project_path, read_only=True) as project:
        first, second = project.runs.all()
    assert first["status"] == "finished" and first["checkpoint"] == earlier.checkpoint
    assert second["status"] == "failed" and second["checkpoint"] is None
    assert "no checkpoint was written" in second["error"]


# ----------------------------------------------------------------------------- the repair on open
def _checkpoint(out: Path, step: int) -> Path:
    def write(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        (folder / "weights.safetensors").write_bytes(b"x" * 100)
    return write_checkpoint(out, write, {"step": step, "status": "running"})


def test_the_repair_on_open_links_a_run_that_names_no_checkpoint_to_the_one_it_wrote(tmp_path):
    """Rows a second Ctrl-C left `failed` with NULL before this fix: linked on the next open
    (status and reason kept), but never to a checkpoint written after the row ended (a later
    run's in the same folder) or to an incomplete one."""
    db = tmp_path / "p.dpo"
    with open_project(db) as project:
        runs = project.runs
        lost = runs.create({"output_dir": str(tmp_path / "a"), "model": "m"})
        _checkpoint(tmp_path / "a", 4)
        runs.finish(lost, "failed", "quit at once (a second Ctrl-C)")
        before = runs.create({"output_dir": str(tmp_path / "b"), "model": "m"})
        runs.finish(before, "failed", "quit at once (a second Ctrl-C)")
        time.sleep(0.01)  # the next checkpoint is written strictly after the row ended
        _checkpoint(tmp_path / "b", 1)  # a later run's checkpoint in the same folder
        broken = runs.create({"output_dir": str(tmp_path / "c"), "model": "m"})
        _checkpoint(tmp_path / "c", 2)
        (tmp_path / "c" / "weights.safetensors").write_bytes(b"x")  # no longer matches its manifest
        runs.finish(broken, "stopped")
        with open_project(db) as second:  # the same process again: nothing is repaired
            assert all(r["checkpoint"] is None for r in second.runs.all())
    with open_project(db) as project:  # a new process
        rows = {r["id"]: r for r in project.runs.all()}
        models = {m["ref"] for m in project.runs.models()}
    assert rows[lost]["checkpoint"] == str(tmp_path / "a") and rows[lost]["status"] == "failed"
    assert rows[lost]["error"] == "quit at once (a second Ctrl-C)" and str(tmp_path / "a") in models
    assert rows[before]["checkpoint"] is None and rows[broken]["checkpoint"] is None


def test_a_damaged_or_unreadable_output_folder_never_stops_the_project_opening(monkeypatch, tmp_path):
    """The repair reads run folders on every open: a checkpoint.json nested 10^5 levels deep
    (json's RecursionError escaped `read_manifest`, so a project with such a crashed run could
    not be opened at all) or a folder it may not read is no checkpoint, and the project opens."""
    db = tmp_path / "p.dpo"
    with open_project(db) as project:
        crashed = project.runs.create({"output_dir": str(tmp_path / "deep"), "model": "m"})
        quit_ = project.runs.create({"output_dir": str(tmp_path / "shut"), "model": "m"})
        project.runs.finish(quit_, "failed", "quit at once (a second Ctrl-C)")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "checkpoint.json").write_text("[" * 10**5 + "]" * 10**5)
    _checkpoint(tmp_path / "shut", 3)
    deny_access(monkeypatch, tmp_path / "shut")
    with open_project(db) as project:
        rows = {r["id"]: r for r in project.runs.all()}
    assert rows[crashed]["status"] == "failed" and rows[crashed]["checkpoint"] is None
    assert rows[quit_]["status"] == "failed" and rows[quit_]["checkpoint"] is None


def test_an_interrupt_after_the_run_ended_keeps_it_finished(project_path, tiny_model_dir, tmp_path):
    """A guard on the fix: the second Ctrl-C lands while the summary is shown."""
    events = drive(_settings(tiny_model_dir, tmp_path / "run", max_steps=1), project=project_path)
    summary = next(e for e in events if isinstance(e, TrainSummary))
    _quit(events, "second Ctrl-C")
    run = _only_run(project_path)
    assert run["status"] == "finished" and run["checkpoint"] == summary.checkpoint and run["error"] is None
