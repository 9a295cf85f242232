"""Precision "auto": bf16 on a CPU only when it runs bf16 natively *and* measurably faster
(capability and measurement mocked); the measurement's per-machine cache survives damage;
an explicit dtype wins; bf16 training autocasts over fp32 master weights, starts at loss ln 2
and the run record names the precision that ran."""

import json
import math

import pytest
import torch

from dpo_engine.devices import pick_device, precision_cache_file
from dpo_engine.precision import MIN_SPEEDUP, measure
from tests.fake_cpu import FakeCpu
from tests.train_helpers import bf16_step_setup, make_pairs


pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


# --------------------------------------------------------------------------- the decision


def test_native_and_faster_gives_bf16_with_its_reason(tmp_path):
    choice = FakeCpu(speedup=2.7).decide(tmp_path / "p.json")
    assert choice.dtype == "bfloat16"
    assert choice.reason == "bf16: CPU has avx512_bf16, matmul 2.7x fp32 (measured 2026-12-02)"


def test_no_native_bf16_gives_fp32_without_measuring(tmp_path):
    fake = FakeCpu(flags=(), speedup=3.0)
    choice = fake.decide(tmp_path / "p.json")
    assert choice.dtype == "float32" and "no native bf16" in choice.reason
    assert fake.measured == 0 and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("speedup", [0.8, MIN_SPEEDUP - 0.01])
def test_native_but_not_clearly_faster_gives_fp32(tmp_path, speedup):
    choice = FakeCpu(speedup=speedup).decide(tmp_path / "p.json")
    assert choice.dtype == "float32"
    assert "avx512_bf16" in choice.reason and f"{speedup:.2f}x" in choice.reason


def test_the_measurement_is_cached_per_machine(tmp_path):
    path = tmp_path / "sub" / "precision.json"
    fake = FakeCpu(speedup=2.0)
    assert fake.decide(path).dtype == "bfloat16" and fake.measured == 1
    record = json.loads(path.read_text())
    assert record["speedup"] == 2.0 and record["fp32_ms"] == 10.0 and record["bf16_ms"] == 5.0
    assert record["key"]["torch"] == torch.__version__ and record["key"]["flags"] == ["avx512_bf16"]
    again = FakeCpu(speedup=0.5)  # a second process: reads the record, does not measure
    assert again.decide(path).dtype == "bfloat16" and again.measured == 0
    record["key"]["host"] = "another-machine"  # a cache dir shared with another machine is not trusted
    path.write_text(json.dumps(record))
    assert again.decide(path).dtype == "float32" and again.measured == 1


@pytest.mark.parametrize("damage", ["{not json", "", "[]", '{"version": 1}', "\x00\xff"])
def test_a_damaged_cache_is_measured_again_not_a_crash(tmp_path, damage):
    path = tmp_path / "precision.json"
    path.write_text(damage)
    fake = FakeCpu(speedup=2.0)
    assert fake.decide(path).dtype == "bfloat16" and fake.measured == 1
    assert json.loads(path.read_text())["speedup"] == 2.0  # repaired


def test_an_unwritable_cache_costs_a_measurement_not_an_error(tmp_path):
    path = tmp_path / "precision.json"
    path.mkdir()  # a folder where the file should be: neither readable nor replaceable
    fake = FakeCpu(speedup=2.0)
    assert fake.decide(path).dtype == "bfloat16"
    assert fake.decide(path).dtype == "bfloat16" and fake.measured == 2


def test_the_real_measurement_is_short_and_leaves_the_thread_count():
    threads = torch.get_num_threads()
    record = measure(shape=(64, 96, 128), repeats=2)
    assert torch.get_num_threads() == threads
    assert record["fp32_ms"] > 0 and record["bf16_ms"] > 0 and record["threads"] == 1
    assert record["speedup"] == pytest.approx(record["fp32_ms"] / record["bf16_ms"], rel=1e-2)


# --------------------------------------------------------------------------- pick_device


def test_auto_on_the_cpu_follows_the_measurement(cpu):
    choice = pick_device("cpu")
    assert (choice.dtype, choice.warning) == ("bfloat16", "")
    assert choice.precision_reason.startswith("bf16: CPU has avx512_bf16, matmul 2.5x fp32")
    assert json.loads(precision_cache_file().read_text())["speedup"] == 2.5
    cpu.flags = []
    assert pick_device("cpu", "auto").dtype == "float32"


def test_explicit_float32_always_wins(cpu, monkeypatch):
    choice = pick_device("cpu", "float32")
    assert (choice.dtype, choice.precision_reason) == ("float32", "fp32: requested")
    monkeypatch.setenv("DPO_STUDIO_DTYPE", "float32")  # sets what "auto" means on this machine
    assert pick_device("cpu", "auto").precision_reason == "fp32: set by DPO_STUDIO_DTYPE"
    assert cpu.measured == 0


def test_explicit_bf16_on_a_cpu_without_it_warns_and_runs(cpu):
    cpu.flags = []
    choice = pick_device("cpu", "bfloat16")
    assert choice.dtype == "bfloat16" and "emulated" in choice.warning
    cpu.flags = ["amx_bf16"]
    assert pick_device("cpu", "bfloat16").warning == ""


# --------------------------------------------------------------------------- training in bf16


def test_a_bf16_step_autocasts_over_fp32_master_weights(tiny_model_dir):
    from dpo_engine.train.step import run_step

    model, ctx, pairs, ref = bf16_step_setup(tiny_model_dir)
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    seen = []
    hook = linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    metrics, grad_norm = run_step(model, optimizer, [[0, 1, 2, 3]], pairs, (ref.chosen_logps, ref.rejected_logps),
                                  ctx, 1.0, 1, range(4))
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the forward ran in bf16
    assert ref.chosen_logps.dtype == torch.float32  # log-softmax and sums in fp32
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6) and grad_norm > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32 ...
    moments = [s["exp_avg"] for s in optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)  # ... and so does AdamW's state
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())  # and they moved


def test_bf16_run_starts_at_ln2_and_records_its_precision(tiny_model_dir, tmp_path, cpu):
    from dpo_engine.train.checkpoints import read_run_file
    from dpo_engine.train.config import TrainConfig
    from dpo_engine.train.events import PrecisionChosen, StepEvent
    from dpo_engine.train.loop import train

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), lr=1e-3, batch_size=4,
                      grad_accum=1, warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3, max_steps=2)
    events = list(train(cfg, make_pairs(16)))  # dtype "auto" on a (fake) CPU with fast native bf16
    (chosen,) = [e for e in events if isinstance(e, PrecisionChosen)]
    assert (chosen.dtype, chosen.autocast) == ("bfloat16", True) and "avx512_bf16" in chosen.reason
    first = next(e for e in events if isinstance(e, StepEvent))
    assert first.loss == pytest.approx(math.log(2), abs=1e-6)  # the reference ran in the policy's precision
    assert abs(first.rewards_chosen) < 1e-5 and abs(first.rewards_margins) < 1e-5
    info = read_run_file(tmp_path / "run")
    assert info["precision"] == chosen.record and info["config"]["dtype"] == "auto"


def test_a_resumed_auto_run_keeps_the_precision_it_ran_in(tiny_model_dir, tmp_path, cpu):
    import threading

    from dpo_engine.train.events import PrecisionChosen, StepEvent
    from dpo_engine.train.config import TrainConfig
    from dpo_engine.train.loop import load_run_config, train

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), lr=1e-3, batch_size=4,
                      grad_accum=1, warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3, max_steps=3)
    stop = threading.Event()
    for event in train(cfg, make_pairs(16), stop=stop):
        if isinstance(event, StepEvent):
            stop.set()  # stopped after step 1, with a checkpoint to resume
    cpu.flags = []  # the machine's verdict changes meanwhile: "auto" would now be fp32
    assert pick_device("cpu").dtype == "float32"
    events = list(train(load_run_config(tmp_path / "run"), make_pairs(16), resume_from=tmp_path / "run"))
    (chosen,) = [e for e in events if isinstance(e, PrecisionChosen)]
    assert chosen.dtype == "bfloat16" and chosen.reason == "bf16: the precision of the run this resumes"
    assert [e.step for e in events if isinstance(e, StepEvent)] == [2, 3]


def test_float16_training_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    from dpo_engine.errors import ConfigError
    from dpo_engine.train.config import TrainConfig

    with pytest.raises(ConfigError, match="loss scaling"):
        TrainConfig(output_dir=str(tmp_path), dtype="float16")


# --------------------------------------------------------------------------- the command line


def cli(*args):
    from click.testing import CliRunner

    from dpo_engine.cli.main import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_command_with_device_takes_dtype():
    from dpo_engine.cli.main import main
    from dpo_engine.devices import DTYPE_CHOICES

    with_device = [name for name, cmd in main.commands.items() if any(p.name == "device" for p in cmd.params)
                   and name != "models"]  # `models` loads no model: --device only says which memory to fit in
    assert {"device", "generate", "eval", "train"} <= set(with_device)
    for name in with_device:
        (dtype,) = [p for p in main.commands[name].params if p.name == "dtype"]
        assert tuple(dtype.type.choices) == DTYPE_CHOICES, name


def test_device_command_names_the_precision_and_why(cpu):
    result = cli("device", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "precision: bfloat16 (bf16: CPU has avx512_bf16, matmul 2.5x fp32 (measured " in result.stdout
    assert "precision: float32 (fp32: requested)" in cli("device", "--device", "cpu", "--dtype", "FLOAT32").stdout
    cpu.flags = []
    result = cli("device", "--device", "cpu", "--dtype", "bfloat16")
    assert result.exit_code == 0 and "Warning: bfloat16 on this CPU is emulated" in result.stderr


def test_a_bad_dtype_is_a_usage_message():
    result = cli("generate", "--prompt", "hi", "--dtype", "int8")
    assert result.exit_code == 2 and "'int8' is not one of 'auto', 'float32', 'bfloat16', 'float16'" in result.output


def test_generate_loads_in_the_requested_precision(tiny_model_dir):
    result = cli("generate", "--model", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "4",
                 "--seed", "1", "--device", "cpu", "--dtype", "bfloat16", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["device"] == "cpu, bfloat16"


def test_train_records_the_precision_that_ran(tiny_model_dir, tmp_path, cpu):
    from dpo_engine.store.opening import open_project

    db, out, metrics = tmp_path / "p.dpo", tmp_path / "run", tmp_path / "m.jsonl"
    with open_project(db) as project:
        project.import_pairs(make_pairs(12))
    result = cli("train", "--project", str(db), "--model", str(tiny_model_dir), "--output", str(out),
                 "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1", "--device", "cpu",
                 "--metrics-out", str(metrics))
    assert result.exit_code == 0, result.output
    assert "Training on cpu in bf16 autocast over fp32 weights (bf16: CPU has avx512_bf16" in result.output
    with open_project(db, read_only=True) as project:
        (run,) = project.queries.runs()
    assert run.config["dtype"] == "auto"  # what was asked ...
    assert run.config["precision"]["dtype"] == "bfloat16" and run.config["precision"]["autocast"]  # ... what ran
    (line,) = [json.loads(x) for x in metrics.read_text().splitlines() if '"precision"' in x]
    assert line == {"type": "precision", **run.config["precision"]}
    result = cli("train", "--project", str(db), "--model", str(tiny_model_dir), "--output", str(tmp_path / "r2"),
                 "--max-steps", "1", "--device", "cpu", "--dtype", "float16")
    assert result.exit_code == 1 and "loss scaling" in result.output


# --------------------------------------------------------------------------- scores a person reads


def test_scores_are_fp32_where_auto_trains_in_bf16(cpu):
    from dpo_engine.run_plan import PlanRequest, plan_run

    auto = plan_run(PlanRequest("cpu"))
    assert auto.compute == "bfloat16"  # what sampling and training run in on this (faked) CPU
    scoring = auto.scoring_choice()
    assert (scoring.device, scoring.dtype) == ("cpu", "float32") and "1e-3" in scoring.precision_reason
    named = plan_run(PlanRequest("cpu", "bfloat16"))
    assert named.scoring_choice().dtype == "bfloat16"  # a precision asked for by name is kept
    # 3e9 weights: 11.2 GiB in fp32, 13.4 GiB with a fifth to spare (SCORING_SPARE): 9.5 GiB is short, 13.5 is not
    tight = plan_run(PlanRequest("cpu"), 3 * 10**9, int(9.5 * 2**30)).scoring_choice()
    assert tight.dtype == "bfloat16" and "fp32 weights do not fit (13.4 GiB needed, 9.5 GiB free" in \
        tight.precision_reason
    roomy = plan_run(PlanRequest("cpu"), 3 * 10**9, int(13.5 * 2**30)).scoring_choice()
    assert roomy.dtype == "float32"


def test_eval_scores_in_fp32_and_says_so(cpu, tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "chosen": " hello", "rejected": " go"}) + "\n")
    result = cli("eval", "--data", str(data), "--policy", str(tiny_model_dir), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"]["dtype"] == "float32"
    result = cli("eval", "--data", str(data), "--policy", str(tiny_model_dir), "--device", "cpu", "--dtype",
                 "bfloat16", "--json")
    precision = json.loads(result.stdout)["precision"]
    assert precision["dtype"] == "bfloat16" and precision["reason"] == "bf16: requested"
    text = cli("eval", "--data", str(data), "--policy", str(tiny_model_dir), "--device", "cpu").stdout
    assert "scored on cpu in float32 (fp32: scores stay within 1e-3 of fp32 only in fp32" in text
