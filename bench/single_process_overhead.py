"""Single-process training speed of two versions of the engine, in one invocation.

    .venv/bin/python -m bench.single_process_overhead --old-rev a0299fc^ --steps 60 --rounds 3

Checks out `dpo_engine/` at --old-rev into a temp dir (git archive), then runs the same
training (tiny random Llama, same pairs, same seed, no eval, one final save) with the old
and the current engine alternately, each run in a fresh process on one torch thread, and
reports the median CPU time of the training steps (CPU time, not wall: on a shared, loaded
machine wall time is mostly the other jobs) and the final loss (which must be identical: the single-process
path computes the same numbers). A tiny model is the sensitive case for added per-step
Python work: its steps take milliseconds, so any overhead shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from bench.common import ROOT
from tests.tiny_model import build_tiny_model

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)  # one thread: CPU time then barely depends on the machine's other load
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.events import StepEvent, TrainSummary
from dpo_engine.train.loop import train
from tests.train_helpers import make_pairs
model, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = TrainConfig(output_dir=out, model=model, lr=1e-3, batch_size=4, grad_accum=2, warmup_ratio=0.0,
                  eval_fraction=0.0, device="cpu", seed=3, max_steps=steps, save_every=0)
first = last = None
for e in train(cfg, make_pairs(64)):
    if isinstance(e, StepEvent):
        first, last = first or time.process_time(), e
        cpu = time.process_time()
print(json.dumps({"train_s": (cpu - first) * steps / (steps - 1), "loss": last.loss}))
"""


def old_engine(rev: str, into: Path) -> Path:
    """dpo_engine/ and tests/ at `rev`, extracted under `into`."""
    blob = subprocess.run(["git", "archive", rev, "dpo_engine", "tests"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    tarfile.open(fileobj=BytesIO(blob)).extractall(into, filter="data")
    return into


def run_once(root: Path, model: Path, steps: int, work: Path) -> dict:
    out = tempfile.mkdtemp(dir=work)
    env = {**os.environ, "PYTHONPATH": str(root), "DPO_STUDIO_CACHE": str(work / f"cache-{root.name}")}
    done = subprocess.run([sys.executable, "-c", CHILD, str(model), out, str(steps)], cwd=root, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-rev", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        old = old_engine(args.old_rev, work / "old")
        model = build_tiny_model(work / "model", hidden=64, layers=2)
        times = {"old": [], "new": []}
        losses = {}
        for _ in range(args.rounds):  # alternate, so a change in machine load hits both alike
            for name, root in (("old", old), ("new", ROOT)):
                r = run_once(root, model, args.steps, work)
                times[name].append(r["train_s"])
                losses[name] = r["loss"]
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for name in ("old", "new"):
        ms = [1000 * t / args.steps for t in times[name]]
        print(f"{name}: median {statistics.median(ms):.2f} CPU ms/step  (runs: {', '.join(f'{m:.2f}' for m in ms)})"
              f"  final loss {losses[name]!r}")
    ratio = statistics.median(times["new"]) / statistics.median(times["old"])
    print(f"new/old time: {ratio:.3f}; identical loss: {losses['old'] == losses['new']}")


if __name__ == "__main__":
    main()
