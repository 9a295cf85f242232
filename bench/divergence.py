"""What a healthy run's weights and loss do per step, against a diverging one (--lr 1e3): the
measurement behind `train.divergence`'s thresholds.

    .venv/bin/python -m bench.divergence --runs tiny,tiny-lora,default,default-lora

Runs the trainer (`train.loop.train`) on learnable pairs (tests/train_helpers.make_pairs) at
several learning rates, full fine-tune and LoRA, on the tiny test model and the default model, and after every optimizer step records the loss, the gradient norm before
clipping, and the global L2 norm of the trainable weights relative to the start (what
`train.divergence.WeightWatch` checks), with the time that norm takes.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS


def trainable_norm(model) -> float:
    from dpo_engine.train.divergence import weight_norm

    return weight_norm([p for p in model.parameters() if p.requires_grad])


def run(model: str, lr: float, lora: bool, steps: int, pairs: int, tmp: Path) -> list[dict]:
    from dpo_engine.train import loop
    from dpo_engine.train.config import LoraSettings, TrainConfig
    from dpo_engine.train.events import StepEvent, TrainSummary
    from tests.train_helpers import make_pairs

    rows: list[dict] = []
    start: dict = {}
    original = loop._one_step

    def measured(r):
        if not start:
            start["norm"] = trainable_norm(r.loaded.model)
        t0 = time.perf_counter()
        event = original(r)
        t = time.perf_counter()
        norm = trainable_norm(r.loaded.model)
        rows.append(dict(step=event.step, lr=event.learning_rate, loss=event.loss, grad_norm=event.grad_norm,
                         norm_ratio=norm / start["norm"], norm_s=time.perf_counter() - t, step_s=t - t0))
        return event

    loop._one_step = measured
    try:
        cfg = TrainConfig(output_dir=str(tmp / f"run-{len(list(tmp.iterdir()))}"), model=model, lr=lr,
                          lora=LoraSettings() if lora else None, max_steps=steps, batch_size=2, grad_accum=2,
                          warmup_ratio=0.1, eval_fraction=0.0, device="cpu", seed=0)
        for event in loop.train(cfg, make_pairs(pairs)):
            if isinstance(event, TrainSummary):
                status = event.status
    finally:
        loop._one_step = original
    for row in rows:
        row.update(model=Path(model).name, lr_setting=lr, lora=lora, status=status)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="tiny,tiny-lora", help="of tiny, tiny-lora, default, default-lora "
                        "(the default model is slow on a CPU), comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS / "divergence.jsonl")
    args = parser.parse_args()
    from dpo_engine._compat import quiet_transformers
    from dpo_engine.train import divergence
    from tests.tiny_model import build_tiny_model

    quiet_transformers()
    divergence.WEIGHT_GROWTH_LIMIT = math.inf  # measure what an unchecked run does
    tmp = Path(tempfile.mkdtemp())
    tiny = str(build_tiny_model(tmp / "tiny"))
    (tmp / "runs").mkdir()
    plans = {"tiny": [(tiny, lr, False, 12, 24) for lr in (5e-6, 1e-3, 1e-2, 1e-1, 1e3)],
             "tiny-lora": [(tiny, lr, True, 12, 24) for lr in (5e-5, 1e-2, 1e-1, 1e3)],
             "default": [("default", lr, False, 6, 12) for lr in (5e-6, 1e-4, 1e3)],
             "default-lora": [("default", lr, True, 6, 12) for lr in (5e-5, 1e3)]}
    plan = [entry for name in args.runs.split(",") for entry in plans[name]]
    print("| model | LoRA | lr | loss: steps 1..n | grad norm: max | weight norm / start: max | norm s / step s |")
    print("|---|---|---:|---|---:|---:|---:|")
    for model, lr, lora, steps, n in plan:
        got = run(model, lr, lora, steps, n, tmp / "runs")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in got)
        losses = " ".join(f"{r['loss']:.3g}" for r in got)
        print(f"| {Path(model).name} | {lora} | {lr:g} | {losses} | {max(r['grad_norm'] for r in got):.3g} "
              f"| {max(r['norm_ratio'] for r in got):.6g} "
              f"| {sum(r['norm_s'] for r in got) / sum(r['step_s'] for r in got):.4f} |", flush=True)


if __name__ == "__main__":
    main()
