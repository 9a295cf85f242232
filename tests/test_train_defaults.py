"""Small-data defaults: one engine place, used by the Train page and the CLI; the data
estimate; iterative rounds (label with the new model, round 2 from it, base as reference)."""

import pytest

from dpo_engine.defaults import (ENOUGH_PAIRS, FEW_PAIRS, SMALL_DATA_PAIRS, data_estimate,
                                 small_data_defaults)
from dpo_engine.train.config import TrainConfig


def test_small_data_gets_a_larger_rate_than_large_data():
    small, large = small_data_defaults(300), small_data_defaults(SMALL_DATA_PAIRS)
    assert small.lr > large.lr == TrainConfig(output_dir="-").lr
    assert small.epochs == 1  # fresh samples beat extra epochs
    settings = small.to_settings()
    assert set(settings) == {"beta", "lr", "epochs", "warmup_ratio", "batch_size", "grad_accum"}
    TrainConfig(output_dir="-", **settings)  # valid as a run config


@pytest.mark.parametrize("n, level", [(0, "too_few"), (FEW_PAIRS - 1, "too_few"), (FEW_PAIRS, "few"),
                                      (ENOUGH_PAIRS - 1, "few"), (ENOUGH_PAIRS, "enough"), (5000, "enough")])
def test_data_estimate_levels(n, level):
    estimate = data_estimate(n)
    assert estimate.level == level and str(n) in estimate.message


def test_train_page_uses_the_engine_defaults(qtbot, train_window):
    ctx, win, page = train_window
    n = sum(page.controller.pair_counts())
    expected = small_data_defaults(n).to_settings()
    shown = page.read_settings()
    assert {k: shown.form[k] for k in expected} == pytest.approx(expected)
    config = page.controller.build_config(ctx.project_path.parent / "out")
    assert (config.lr, config.beta, config.epochs, config.warmup_ratio, config.batch_size, config.grad_accum) == \
        pytest.approx((expected["lr"], expected["beta"], expected["epochs"], expected["warmup_ratio"],
                       expected["batch_size"], expected["grad_accum"]))
    assert page.estimate_label.text() == data_estimate(n).message
    assert shown.form["weight_rankings"] == small_data_defaults(n).weight_rankings == config.weight_rankings
    page.fields["weight_rankings"].setChecked(not shown.form["weight_rankings"])
    page.controller.settings = page.read_settings()
    config = page.controller.build_config(ctx.project_path.parent / "out")
    assert config.weight_rankings is not shown.form["weight_rankings"]  # recorded: a resume loads pairs alike


def test_after_a_run_labeling_follows_the_new_model_and_round_2_keeps_the_base_reference(qtbot, train_window):
    ctx, win, page = train_window
    base = ctx.base_model_ref
    page.fields["max_steps"].setValue(2)
    page.fields["eval_every"].setValue(0)
    assert page.train_button.text() == "Train"
    with qtbot.waitSignal(page.controller.finished, timeout=180_000) as blocker:
        page.train_button.click()
    checkpoint = blocker.args[0].checkpoint
    assert blocker.args[0].status == "finished" and checkpoint
    qtbot.waitUntil(lambda: ctx.model_ref == checkpoint, timeout=5_000)  # the Label page samples from it now
    assert ctx.base_model_ref == base
    qtbot.waitUntil(lambda: not page.controller.running, timeout=30_000)
    assert page.train_button.text() == "Train round 2"
    page.controller.settings = page.read_settings()
    config = page.controller.build_config(ctx.project_path.parent / "round2")
    assert (config.model, config.reference) == (checkpoint, base)
    page.fields["start_from"].setCurrentIndex(page.fields["start_from"].findData("base"))
    page.controller.settings = page.read_settings()
    config = page.controller.build_config(ctx.project_path.parent / "fresh")
    assert (config.model, config.reference) == (base, None)
    assert page.train_button.text() == "Train"


def test_cli_train_uses_the_same_defaults(tmp_path):
    from dpo_engine.cli.train import _config, train_cmd

    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    opts = train_cmd.make_context("train", ["--data", str(data), "--output", "out"]).params  # no flags given
    for n in (40, SMALL_DATA_PAIRS):
        expected = small_data_defaults(n).to_settings()
        config = _config(opts, n)
        assert {k: getattr(config, k) for k in expected} == expected
    assert _config({**opts, "lr": 1e-3}, 40).lr == 1e-3  # a flag given wins


def test_every_form_setting_is_in_the_window_and_the_cli_from_the_dataclass(qtbot, train_window):
    """A setting with a label in TrainConfig appears on the Advanced form (with its help as the
    tooltip) and as a `dpo-engine train` option, and flows back into the run's config."""
    from dpo_engine.cli.train import train_cmd
    from dpo_engine.train.config import form_fields

    ctx, win, page = train_window
    options = {p.name for p in train_cmd.params}
    for f in form_fields():
        assert page.fields[f.name].toolTip() == f.metadata["help"]
        assert f.name in options, f.name
    page.fields["save_every"].setValue(7)  # a setting the form once lacked
    page.fields["schedule"].setCurrentText("cosine")
    page.controller.settings = page.read_settings()
    config = page.controller.build_config(ctx.project_path.parent / "out")
    assert (config.save_every, config.schedule) == (7, "cosine")
