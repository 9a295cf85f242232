"""`dpo-engine eval` in-process on the tiny model: the JSON contract, skipped lines, the
reference default, agreement with the engine functions, clean errors."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.encoding import collate, encode_pair
from dpo_engine.logps import batch_logps
from dpo_engine.losses import LossParams, ipo
from dpo_engine.models import load_model
from dpo_engine.pairs import parse_preference_record
from tests.perturb import perturbed_copy

pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


RECORDS = [
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello there!"}],
     "rejected": [{"role": "assistant", "content": "Go away."}]},
    "{broken",
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " a very long and rambling green thing."},
    {"input": {"messages": [{"role": "user", "content": "2+2? " * 30}]},  # a prompt too long for --max-length 100
     "preferred_output": [{"role": "assistant", "content": "4"}],
     "non_preferred_output": [{"role": "assistant", "content": "5"}]},
    {"input": {"messages": [{"role": "user", "content": "Name a colour."}]},
     "preferred_output": [{"role": "assistant", "content": "Red."}],
     "non_preferred_output": [{"role": "assistant", "content": "No."}]},
]
PAIR_KEYS = {"policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
             "chosen_tokens", "rejected_tokens", "chosen_reward", "rejected_reward", "loss"}
METRIC_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "pairs.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in RECORDS]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")  # a blank line 3 is ignored
    return path


@pytest.fixture(scope="module")
def policy_dir(tiny_model_dir, tmp_path_factory):
    return perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("policy"), base=str(tiny_model_dir))


def run(*args):
    result = CliRunner().invoke(main, ["eval", *map(str, args)])
    return result


def run_json(*args):
    result = run(*args, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_contract_order_and_skipped_lines(data, tiny_model_dir):
    report = run_json("--data", data, "--policy", tiny_model_dir, "--max-length", 100)
    assert set(report) == {"pairs", "metrics", "skipped", "precision"}
    assert report["precision"]["device"] == "cpu" and report["precision"]["dtype"] == "float32"
    assert len(report["pairs"]) == 3 and all(set(p) == PAIR_KEYS for p in report["pairs"])
    assert set(report["metrics"]) == METRIC_KEYS
    assert [s["line"] for s in report["skipped"]] == [2, 5]
    assert "JSON" in report["skipped"][0]["reason"] and "max_length 100" in report["skipped"][1]["reason"]
    # file order: lines 1, 4, 6 -> the plain pair (line 4) has 'blue.' + eos = 6 byte tokens
    assert [p["chosen_tokens"] for p in report["pairs"]] == [len("Hello there!") + 2, len(" blue.") + 1,
                                                               len("Red.") + 2]
    for p in report["pairs"]:  # no --reference and no run manifest: the policy is its own reference
        assert p["chosen_reward"] == 0 and p["rejected_reward"] == 0
        assert p["loss"] == pytest.approx(math.log(2))


def test_reference_defaults_to_the_base_named_in_the_run_manifest(data, tiny_model_dir, policy_dir):
    implicit = run_json("--data", data, "--policy", policy_dir, "--loss", "ipo", "--beta", 0.5)
    explicit = run_json("--data", data, "--policy", policy_dir, "--reference", tiny_model_dir,
                        "--loss", "ipo", "--beta", 0.5)
    assert implicit == explicit
    assert all(p["chosen_reward"] != 0 for p in implicit["pairs"])


def test_reference_is_the_one_the_run_trained_against(tmp_path, tiny_model_dir):
    """Round 2 starts from the round-1 checkpoint (its base) but keeps the original reference."""
    from dpo_engine.cli.eval import default_reference

    folder = tmp_path / "round2"
    folder.mkdir()
    (folder / "dpo_studio_run.json").write_text(json.dumps({"base_model": str(tmp_path / "round1"),
                                                            "reference": str(tiny_model_dir)}))
    assert default_reference(str(folder)) == str(tiny_model_dir)
    (folder / "dpo_studio_run.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    assert default_reference(str(folder)) == str(tiny_model_dir)
    assert default_reference(str(tmp_path)) == str(tmp_path)  # no manifest: the policy itself


def test_per_pair_values_equal_the_engine_functions_pair_by_pair(data, tiny_model_dir, policy_dir):
    report = run_json("--data", data, "--policy", policy_dir, "--reference", tiny_model_dir, "--loss", "ipo",
                      "--beta", 0.5, "--batch-size", 2)
    lines = [ln for ln in data.read_text().splitlines() if ln.strip() and not ln.startswith("{broken")]
    pairs = [parse_preference_record(json.loads(ln)) for ln in lines]
    pol, ref = load_model(str(policy_dir)), load_model(str(tiny_model_dir))
    expected = []
    for pair in pairs:  # max_length 1024: all four kept
        batch = collate([encode_pair(pol.tokenizer, pair, 1024)], pad_id=0)
        with torch.no_grad():
            p, r = batch_logps(pol.model, batch), batch_logps(ref.model, batch)
        out = ipo(p.chosen_logps, p.rejected_logps, r.chosen_logps, r.rejected_logps,
                  chosen_tokens=p.chosen_tokens, rejected_tokens=p.rejected_tokens, params=LossParams(beta=0.5))
        expected.append((p.chosen_logps.item(), r.rejected_logps.item(), out.chosen_rewards.item(), out.losses.item()))
    got = [(x["policy_chosen_logps"], x["reference_rejected_logps"], x["chosen_reward"], x["loss"])
           for x in report["pairs"]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    # the metric is the mean of the report's own per-pair losses (exactly, up to the sum's rounding);
    # those match the pair-by-pair engine only to the batching's rounding, checked above
    assert report["metrics"]["loss"] == pytest.approx(sum(x["loss"] for x in report["pairs"]) / 4, rel=1e-6)
    assert report["metrics"]["loss"] == pytest.approx(sum(e[3] for e in expected) / 4, rel=1e-5, abs=1e-5)


def test_readable_summary(data, tiny_model_dir, policy_dir):
    result = run("--data", data, "--policy", policy_dir, "--reference", tiny_model_dir, "--max-length", 100,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "3 pairs scored, 2 skipped" in result.stdout
    assert "rewards/accuracies" in result.stdout and "skipped line 5:" in result.stdout


def test_errors_are_clean(data, tiny_model_dir, tmp_path):
    bad_beta = run("--data", data, "--policy", tiny_model_dir, "--beta", 0)
    assert bad_beta.exit_code == 1 and "beta must be > 0" in bad_beta.output and "Traceback" not in bad_beta.output
    missing = run("--data", tmp_path / "nope.jsonl", "--policy", tiny_model_dir)
    assert missing.exit_code == 1 and "No data file" in missing.output
    unknown = run("--data", data, "--policy", tiny_model_dir, "--loss", "dpo")
    assert unknown.exit_code == 2 and "sigmoid" in unknown.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no preference pair" in run("--data", empty, "--policy", tiny_model_dir).output


def test_eval_is_a_generator_of_progress_with_the_report_its_helper_returns(data, tiny_model_dir, policy_dir):
    """Loading and scoring yield progress that only moves forward, ending at 1; the generator returns the
    report the blocking helper returns."""
    from dpo_engine.cli.eval import EvalSettings, eval_events, eval_report
    from dpo_engine.devices import pick_device
    from dpo_engine.iters import drain

    settings, cpu = EvalSettings(max_length=100, batch_size=2), pick_device("cpu", "float32")
    events = []
    report = drain(eval_events(data, str(policy_dir), str(tiny_model_dir), settings, cpu), events.append)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [e.stage for e in events].count("load") >= 2  # the policy, then the reference
    assert [e.message for e in events if e.stage == "score"][-1] == "Scored 3/3 pairs under the reference"
    assert report["pairs"] == eval_report(data, str(policy_dir), str(tiny_model_dir), settings, cpu)["pairs"]
