"""The Train page's decisions, without a screen: readiness, the run history's rows and
actions, what a model that fits only with LoRA turns on, and the end-of-run line."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from app.controllers.train_controller import (MIN_PAIRS, RunActions, TrainController, TrainSettings,
                                              default_settings)
from app.pages.model_choice import ModelChoice
from app.plumbing.context import AppContext
from dpo_engine.devices import pick_device
from dpo_engine.pairs import PreferencePair
from dpo_engine.run_plan import PlanRequest, plan_run
from dpo_engine.store.opening import open_project
from dpo_engine.train.events import TrainSummary


@pytest.fixture
def controller(qapp, tmp_path):
    path = tmp_path / "p.sqlite"
    with open_project(path) as project:
        project.import_pairs([PreferencePair(f"question {i}", "good", "bad") for i in range(MIN_PAIRS - 1)])
    ctx = AppContext(path, "base/model", pick_device("cpu"))
    yield TrainController(ctx)
    ctx.shutdown()


def test_readiness_names_what_is_missing_then_the_pairs(controller):
    ready = controller.readiness()
    assert ready.reason.startswith(f"Label at least {MIN_PAIRS} usable pairs first (you have {MIN_PAIRS - 1})")
    assert (ready.button_text, ready.tooltip, ready.text) == ("Train", ready.reason, ready.reason)
    controller.ctx.project.import_pairs([PreferencePair("one more", "good", "bad")])
    train, held_out = controller.pair_counts()
    ready = controller.readiness()
    assert ready.reason == "" and ready.text == f"Ready: {train} training pairs and {held_out} held-out pairs."
    assert ready.tooltip == "Train on all usable pairs in the project" and train + held_out == MIN_PAIRS


def test_a_model_that_needs_lora_turns_on_only_what_is_off(controller):
    base = plan_run(PlanRequest("cpu", "float32"))
    both = ModelChoice("big/model", base.trained(True, "fp32", True, "LoRA fp32 with checkpointing fits"))
    change = controller.adaptation(both, lora_on=False, checkpointing_on=False)
    assert (change.lora, change.gradient_checkpointing, change.base_bits) == (True, True, None)
    assert change.note == ("LoRA is on: a full fine-tune of this model does not fit in memory here; "
                           "gradient checkpointing is on: it fits only with it.")
    change = controller.adaptation(both, lora_on=True, checkpointing_on=False)
    assert (change.lora, change.note) == (False, "Gradient checkpointing is on: it fits only with it.")
    assert controller.adaptation(ModelChoice("small", base), False, False).note == ""
    assert controller.adaptation(ModelChoice("unknown"), False, False).note == ""  # no fit: nothing to turn on
    four = ModelChoice("3b", base.trained(True, "nf4", True, "LoRA 4-bit fits"))
    change = controller.adaptation(four, lora_on=True, checkpointing_on=True, base_bits_on=None)
    assert (change.lora, change.base_bits, change.note) == (False, 4, "The frozen base is 4-bit (NF4): a bf16 "
                                                                      "base does not fit.")


def test_the_settings_plan_is_the_training_on_text(controller):
    """The page's "Training on …" line is the plan of its settings: base and checkpointing included."""
    s = replace(default_settings("cpu"), dtype="float32", lora=True)
    s = replace(s, form={**s.form, "gradient_checkpointing": True})
    assert controller.plan_text(s) == ("Training on cpu in float32 over an fp32 frozen base (fp32: requested); "
                                       "gradient checkpointing on")
    controller.settings = replace(s, base_bits=4)
    built = controller.build_config(controller.ctx.project_path.parent / "out")
    assert built.base_bits == 4 and built.lora is not None and built.gradient_checkpointing
    assert controller.plan().base == "nf4" and controller.plan().key == "fp32-nf4"
    controller.settings = replace(s, lora=False, base_bits=4)  # a 4-bit base only exists under LoRA
    assert controller.build_config(controller.ctx.project_path.parent / "out").base_bits is None


def test_run_rows_newest_first_with_last_values_and_the_actions_they_allow(controller):
    project = controller.ctx.project
    first = project.runs.create({"beta": 0.1})
    project.runs.log_metrics(first, 1, {"loss": 0.69, "rewards/accuracies": 0.5})
    project.runs.log_metrics(first, 2, {"loss": 0.6, "rewards/accuracies": 0.75, "eval/rewards/accuracies": 1.0})
    project.runs.finish(first, "stopped", checkpoint="/runs/run-1")
    second = project.runs.create({"beta": 0.2})
    project.runs.finish(second, "failed", error="No model at /nowhere")
    rows = controller.run_rows()
    assert [r.run_id for r in rows] == [second, first]
    started = dt.datetime.fromtimestamp(project.queries.runs()[0].started).strftime("%Y-%m-%d %H:%M")
    assert rows[1].cells == (str(first), "stopped", started, "2", "0.6000", "1.00", "/runs/run-1")  # eval accuracy
    assert rows[0].cells[1:] == ("failed", rows[0].cells[2], "0", "", "", "")
    assert rows[0].error == "No model at /nowhere"
    assert controller.run_actions([first]) == RunActions(resume=True, use=True, export=True)  # stopped, with a checkpoint
    assert controller.run_actions([second]) == RunActions(False, False, False)
    assert controller.run_actions([first, second]) == RunActions(False, False, False)  # one at a time
    (key, series), = controller.history_series([first], overlay=False)
    assert key == "live" and series.data["loss"] == ([1, 2], [0.69, 0.6])
    assert "logratio/chosen" not in series.data  # no rewards logged, so no log-ratio either
    overlaid = controller.history_series([first, second], overlay=True)
    assert [k for k, _ in overlaid] == ["live", f"run-{second}"]
    assert controller.export_controller(second) is None
    assert controller.export_controller(first).model_ref == "/runs/run-1"


def test_a_runs_checkpoint_becomes_the_active_model_and_one_without_none_does(controller, monkeypatch):
    monkeypatch.setattr(controller.ctx, "load_active_model", lambda: None)  # nothing to load at /runs/run-1
    project = controller.ctx.project
    saved = project.runs.create({"beta": 0.1})
    project.runs.finish(saved, "stopped", checkpoint="/runs/run-1")
    failed = project.runs.create({"beta": 0.1})
    project.runs.finish(failed, "failed", error="no checkpoint")
    assert controller.use_checkpoint(failed) is None and controller.ctx.model_ref == "base/model"
    assert controller.use_checkpoint(saved) == "/runs/run-1" == controller.ctx.model_ref
    assert controller.use_checkpoint(failed + 1) is None  # no such run


def _statements(project, action) -> list[str]:
    """The SQL statements `action()` runs on the project's connection."""
    seen: list[str] = []
    project.db.conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        project.db.conn.set_trace_callback(None)
    return seen


def test_the_run_history_costs_the_same_queries_for_one_run_or_many(controller):
    """Two statements read data (the runs, the last points of their metrics), never one per run: the
    list is rebuilt after every run and a project keeps every run it ever trained. (sqlite-utils also
    looks its tables up in the catalog, a fixed number of times.)"""
    project = controller.ctx.project

    def add_runs(n: int) -> None:
        for _ in range(n):
            run = project.runs.create({"beta": 0.1})
            project.runs.log_metrics(run, 1, {"loss": 0.7, "rewards/accuracies": 0.5})
            project.runs.finish(run, "finished", checkpoint=f"/runs/run-{run}")

    add_runs(1)
    one = _statements(project, controller.run_rows)
    add_runs(30)
    many = _statements(project, controller.run_rows)
    assert len(one) == len(many), many
    assert len([s for s in many if "sqlite_master" not in s]) == 2, many
    assert len(controller.run_rows()) == 31


def test_the_end_of_a_run_in_one_line(controller):
    assert controller.finished_text(TrainSummary("stopped", 7, 10, 12.0, "/runs/run-3")) == \
        "Stopped after 7 steps. Model saved to /runs/run-3"
    assert controller.finished_text(TrainSummary("failed", 0, 10, 1.0, None, reason="out of memory")) == \
        "Failed after 0 steps: out of memory"


def test_settings_are_a_frozen_record_the_config_is_built_from(controller):
    settings = default_settings("cpu", 40)
    assert isinstance(settings, TrainSettings) and settings.device == "cpu" and settings.form["max_steps"] == 0
    with pytest.raises(AttributeError):
        settings.lora = True  # frozen: the page hands over a new one
    controller.settings = TrainSettings({**settings.form, "max_steps": 3}, lora=True, lora_rank=8, device="cpu")
    controller.set_start_from("base")
    config = controller.build_config(controller.ctx.project_path.parent / "out")
    assert (config.max_steps, config.lora.rank, config.lora.alpha, config.model) == (3, 8, 16, "base/model")
    assert controller.settings.start_from == "base" and controller.settings.lora_rank == 8
