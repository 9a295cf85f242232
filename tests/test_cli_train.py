"""`dpo-engine train` in-process: a file run writes a loadable model and JSONL metrics, a
project run is recorded in the project, flags are checked, Ctrl-C stops then quits."""

import json
import signal
import threading

import pytest
from click.testing import CliRunner

from dpo_engine.atomic import read_manifest
from dpo_engine.train.checkpoints import read_run_file
from dpo_engine.cli.main import main
from dpo_engine.cli.train import make_interrupt_handler
from tests.train_helpers import make_pairs


pytestmark = pytest.mark.usefixtures("private_cache")  # training caches reference log-probs there


def write_jsonl(path, pairs):
    path.write_text("".join(json.dumps(p.to_trl()) + "\n" for p in pairs) + "not json\n")
    return path


def run(args):
    return CliRunner().invoke(main, ["train", "--device", "cpu", *args], catch_exceptions=False)


def test_trains_from_a_file_and_writes_metrics(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(10))
    out, metrics = tmp_path / "run", tmp_path / "m.jsonl"
    result = run(["--data", str(data), "--model", str(tiny_model_dir), "--output", str(out), "--max-steps", "3",
                  "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-3", "--eval-every", "2",
                  "--metrics-out", str(metrics)])
    assert result.exit_code == 0, result.output
    assert "line 11" in result.output and "Finished at step 3/3" in result.output
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["type"] for r in lines] == ["precision", "step", "step", "eval", "step", "eval", "summary"]
    assert lines[0]["dtype"] == "float32" and lines[0]["autocast"] is False  # conftest pins fp32
    assert {"loss", "rewards/chosen", "rewards/margins", "logps/rejected", "grad_norm"} <= set(lines[1])
    assert "eval/rewards/accuracies" in lines[3] and lines[-1]["status"] == "finished"
    assert read_manifest(out)["step"] == 3 and read_run_file(out)["config"]["lr"] == 1e-3


def test_trains_from_a_project_and_records_the_run(tiny_model_dir, tmp_path):
    from dpo_engine.store.opening import open_project

    db = tmp_path / "p.dpo"
    with open_project(db) as project:
        project.import_pairs(make_pairs(12))
    out = tmp_path / "run"
    result = run(["--project", str(db), "--model", str(tiny_model_dir), "--output", str(out), "--max-steps", "2",
                  "--batch-size", "2", "--grad-accum", "1"])
    assert result.exit_code == 0, result.output
    with open_project(db, read_only=True) as project:
        (r,) = project.queries.runs()
        assert r.status == "finished" and r.checkpoint == str(out.absolute())
        assert [s for s, _ in project.queries.metrics(r.id)["loss"]] == [1, 2]
        assert any(m.ref == str(out.absolute()) and m.kind == "checkpoint" for m in project.queries.models())


def test_weight_rankings_flag_is_used_and_recorded(tiny_model_dir, tmp_path, monkeypatch):
    """--weight-rankings loads a ranking's pairs at 1/(its pairs) each and records the choice
    with the run, so that a resume loads them alike."""
    import dpo_engine.cli.train as ct
    from dpo_engine.store.opening import open_project

    db = tmp_path / "p.dpo"
    with open_project(db) as project:
        project.import_pairs(make_pairs(12))
        pid = project.add_prompt("rank these", "label")
        ids = [project.add_response(pid, t, "m") for t in ("a", "bb", "ccc")]
        project.record_ranking(pid, ids)  # 3 pairs of weight 1/3
    seen = []
    real = ct._load_pairs
    monkeypatch.setattr(ct, "_load_pairs", lambda *a: seen.append(real(*a)) or seen[-1])
    for flag, weights in (("--no-weight-rankings", [1.0]), ("--weight-rankings", [1 / 3, 1.0])):
        out = tmp_path / flag
        result = run(["--project", str(db), "--model", str(tiny_model_dir), "--output", str(out), "--max-steps", "1",
                      "--batch-size", "2", "--grad-accum", "1", flag])
        assert result.exit_code == 0, result.output
        train, held = seen[-1]
        assert sorted({round(p.weight, 6) for p in train + (held or [])}) == pytest.approx(weights)
        assert json.loads((out / "dpo_studio_run.json").read_text())["config"]["weight_rankings"] is (
            flag == "--weight-rankings")


def test_a_setup_error_is_a_clean_message_and_a_failed_run(tiny_model_dir, tmp_path):
    from dpo_engine.store.opening import open_project

    db = tmp_path / "p.dpo"
    with open_project(db) as project:
        project.import_pairs(make_pairs(1))
    result = run(["--project", str(db), "--model", str(tiny_model_dir), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Error: Only" in result.output and "Traceback" not in result.output
    with open_project(db, read_only=True) as project:
        assert [r.status for r in project.queries.runs()] == ["failed"]


def test_flags_are_checked(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
    assert "exactly one of --data" in run(["--output", str(tmp_path / "o")]).output
    result = run(["--data", str(data), "--output", str(tmp_path / "o"), "--beta", "0"])
    assert result.exit_code == 1 and "beta must be > 0" in result.output
    assert "--output DIR is required" in run(["--data", str(data)]).output


def test_first_ctrl_c_stops_gracefully_second_quits():
    flag = threading.Event()
    handler = make_interrupt_handler(flag)
    handler(signal.SIGINT, None)
    assert flag.is_set()
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
