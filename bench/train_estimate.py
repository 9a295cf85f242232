"""The Train page's time estimate against the real run: is it within x1.5?

    .venv/bin/python -m bench.train_estimate                       # default model, precision "auto"
    .venv/bin/python -m bench.train_estimate --lora --checkpointing
    .venv/bin/python -m bench.train_estimate --model llama-3.2-1b --lora --checkpointing --pairs 14

Two runs of the app's own driver (`train.driver.drive`, as the window runs it) on the default
model, each in a fresh cache (the reference is scored in both): run A on `--pairs` pairs
measures this machine's speed (`train.duration`, kept as the window keeps it); then the
estimate for run B — twice the pairs and one more epoch, so it is an extrapolation, not a
replay — is made before B starts, and B's wall time (driver start to its summary) is compared
with it. Prints one JSON line; `--record` appends it to bench/results/train_estimate.jsonl.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, machine_row, make_pairs, uptime


def _run(config, pairs) -> float:
    from dpo_engine.train.driver import drive
    from dpo_engine.train.events import TrainSummary

    start = time.perf_counter()
    for event in drive(config, pairs=pairs):
        if isinstance(event, TrainSummary):
            assert event.status == "finished", event.reason
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16, help="run A's pairs (run B has twice as many)")
    ap.add_argument("--model", default="default", help="default, or a bench.real_size shape (e.g. llama-3.2-1b)")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="train-estimate-"))

    from bench.real_size import model_dir
    from dpo_engine.models import load_tokenizer, resolve_model_ref
    import dpo_engine.train.reference as reference
    from dpo_engine.train import duration
    from dpo_engine.train.config import LoraSettings, TrainConfig

    duration.speed_file = lambda: work_dir / "train-speed.json"  # this bench's own memory
    all_pairs = make_pairs(load_tokenizer(resolve_model_ref("default")))
    a_pairs, b_pairs = all_pairs[:args.pairs], all_pairs[:2 * args.pairs]
    model = "default" if args.model == "default" else str(model_dir(args.model))
    common = dict(model=model, batch_size=4, grad_accum=1, eval_fraction=0.1, eval_every=0, save_every=0,
                  lora=LoraSettings() if args.lora else None, gradient_checkpointing=args.checkpointing)
    a = TrainConfig(output_dir=str(work_dir / "a"), epochs=1, **common)
    b = TrainConfig(output_dir=str(work_dir / "b"), epochs=2, **common)
    reference.cache_path = lambda fp: work_dir / "ref-a" / f"{fp}.safetensors"  # a cold reference cache each
    a_seconds = _run(a, a_pairs)
    speed = duration.read_speed(duration.speed_key(b))
    if speed is None:
        raise SystemExit(f"run A measured no speed: it needs {duration.MIN_STEPS} steps or more (batch 4, a tenth "
                         f"held out): give --pairs {4 * duration.MIN_STEPS + 2} or more")
    estimate = duration.estimate_seconds(duration.run_work(b, b_pairs), speed)
    reference.cache_path = lambda fp: work_dir / "ref-b" / f"{fp}.safetensors"
    b_seconds = _run(b, b_pairs)
    row = {"bench": "train_estimate", "model": args.model, "lora": args.lora, "checkpointing": args.checkpointing,
           "a_pairs": len(a_pairs), "a_seconds": round(a_seconds, 1), "b_pairs": len(b_pairs), "b_epochs": 2,
           "estimate_s": round(estimate, 1), "b_seconds": round(b_seconds, 1),
           "real_over_estimate": round(b_seconds / estimate, 3), "speed": speed.__dict__,
           "machine": machine_row(), "load": uptime(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(row))
    if args.record:
        with (RESULTS / "train_estimate.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
