"""The run driver (`dpo_engine.train.driver.drive`) that the window and `dpo-engine train`
share: the run's row, its metrics, its end and its checkpoint are recorded in the project,
and the trainer's events pass through unchanged."""

from __future__ import annotations

import threading

import pytest

from dpo_engine.errors import ModelNotFoundError
from dpo_engine.store.opening import open_project
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.events import StepEvent, TrainSummary
from dpo_engine.train.driver import RunStarted, drive
from tests.train_helpers import make_pairs


pytestmark = pytest.mark.usefixtures("private_cache")  # training caches reference log-probs there


@pytest.fixture
def project_path(tmp_path):
    path = tmp_path / "p.dpo"
    with open_project(path) as project:
        project.import_pairs(make_pairs(16))
    return path


def settings(tiny_model_dir, **kw) -> TrainConfig:
    base = dict(output_dir="-", model=str(tiny_model_dir), batch_size=2, grad_accum=1, max_steps=3, lr=1e-3,
                eval_every=0, save_every=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_a_run_is_recorded_and_its_events_pass_through(project_path, tiny_model_dir, tmp_path):
    events = list(drive(settings(tiny_model_dir), project=project_path,
                        output_for_run=lambda run_id: tmp_path / "runs" / f"run-{run_id}"))
    started, summary = events[0], events[-1]
    assert isinstance(started, RunStarted) and isinstance(summary, TrainSummary) and summary.status == "finished"
    out = str(tmp_path / "runs" / f"run-{started.run_id}")
    assert started.config.output_dir == out == str(summary.checkpoint)
    steps = [e for e in events if isinstance(e, StepEvent)]
    with open_project(project_path, read_only=True) as project:
        (run,) = project.queries.runs()
        assert run.id == started.run_id and run.status == "finished" and run.checkpoint == out
        assert run.config["output_dir"] == out  # the stored config names the real folder
        assert [(s, round(v, 6)) for s, v in project.queries.metrics(run.id)["loss"]] == \
            [(e.step, round(e.loss, 6)) for e in steps]
        assert any(m.ref == out and m.kind == "checkpoint" for m in project.queries.models())


def test_a_resume_continues_the_same_run(project_path, tiny_model_dir, tmp_path):
    stop = threading.Event()
    first = []
    for event in drive(settings(tiny_model_dir, max_steps=6), project=project_path, stop=stop,
                       output_for_run=lambda run_id: tmp_path / f"run-{run_id}"):
        first.append(event)
        if isinstance(event, StepEvent) and event.step == 2:
            stop.set()
    assert first[-1].status == "stopped"
    resumed = list(drive(first[0].config, project=project_path, resume_from=first[-1].checkpoint))
    assert resumed[0].run_id == first[0].run_id and resumed[-1].status == "finished"
    with open_project(project_path, read_only=True) as project:
        (run,) = project.queries.runs()
        assert run.status == "finished"
        assert [s for s, _ in project.queries.metrics(run.id)["loss"]] == list(range(1, 7))


def test_a_run_that_cannot_start_is_recorded_failed_with_the_reason(project_path, tmp_path):
    with pytest.raises(ModelNotFoundError):
        list(drive(settings(tmp_path / "no-such-model"), project=project_path,
                   output_for_run=lambda run_id: tmp_path / f"run-{run_id}"))
    with open_project(project_path, read_only=True) as project:
        (run,) = project.queries.runs()
        assert run.status == "failed" and "no-such-model" in run.error
