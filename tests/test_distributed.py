"""`dpo-engine train` under `accelerate launch` with 2 CPU processes (gloo) trains exactly as one
process whose micro-batch holds both ranks' pairs: the same loss curve, eval, grad norms and
final weights; only the main process writes the metrics and the checkpoint.

13 training pairs in global micro-batches of 4 make each epoch end on a micro-batch of 1,
so one rank has no pair of its own there (it runs a zero-weight stand-in)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dpo_engine.atomic import read_manifest
from dpo_engine.cli.main import main
from dpo_engine.train.distributed import LOCAL, current
from tests.train_helpers import make_pairs

pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


STEPS = 6  # 2 steps per epoch: three epochs, each ending on the short micro-batch
FLAGS = ["--max-steps", str(STEPS), "--grad-accum", "2", "--lr", "1e-3", "--eval-fraction", "0.2",
         "--eval-every", "2", "--warmup-ratio", "0", "--seed", "5"]
EXACT = {"type", "step", "learning_rate", "epoch"}
NOISY = {"tokens_per_s"}  # timing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p.to_trl()) + "\n" for p in make_pairs(16, seed=7)))
    return path


def test_single_process_is_local():
    assert os.environ.get("WORLD_SIZE", "1") == "1" and current() is LOCAL


def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, pairs_file, tmp_path):
    env = {**os.environ, "DPO_STUDIO_CACHE": str(tmp_path / "cache2"), "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "dpo_engine", "train"]
    common = ["--data", str(pairs_file), "--model", str(tiny_model_dir), *FLAGS]
    done = subprocess.run([*launch, *common, "--batch-size", "2", "--output", str(two),
                           "--metrics-out", str(tmp_path / "two.jsonl")],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Finished at step") == 1  # the other rank is silent

    os.environ["DPO_STUDIO_CACHE"] = str(tmp_path / "cache1")
    try:
        result = CliRunner().invoke(main, ["train", "--device", "cpu", *common, "--batch-size", "4",
                                           "--output", str(one), "--metrics-out", str(tmp_path / "one.jsonl")])
    finally:
        del os.environ["DPO_STUDIO_CACHE"]
    assert result.exit_code == 0, result.output

    got, want = _records(tmp_path / "two.jsonl"), _records(tmp_path / "one.jsonl")
    assert got[0] == want[0] and got[0]["type"] == "precision"  # every rank computes in the same precision
    got, want = got[1:], want[1:]
    assert [r["type"] for r in got] == [r["type"] for r in want] == ["step"] * 2 + ["eval"] + ["step"] * 2 + \
        ["eval"] + ["step"] * 2 + ["eval", "summary"]
    assert got[0]["logps/chosen"] != got[3]["logps/chosen"]  # steps see different pairs: a real comparison
    for g, w in zip(got[:-1], want[:-1]):
        assert g.keys() == w.keys()
        for name in g.keys() - NOISY:
            if name.endswith("rewards/accuracies") and abs(w[name.replace("accuracies", "margins")]) < 1e-4:
                continue  # policy == reference (step 1): rewards are +-1e-8 and their sign is rounding
            if name in EXACT:
                assert g[name] == w[name], (g["step"], name)
            else:
                assert g[name] == pytest.approx(w[name], rel=1e-4, abs=1e-5), (g["step"], name)
    assert read_manifest(two)["step"] == STEPS and not list(tmp_path.glob(".two.tmp-*"))
    a, b = load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    moved = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.allclose(a["model.norm.weight"], moved["model.norm.weight"])  # it did train
