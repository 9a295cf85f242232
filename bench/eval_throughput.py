"""Eval throughput (pairs/s): DPO Studio's eval path vs TRL's DPOTrainer.evaluate, one run.

Both score the same fixed synthetic pairs with the default model (SmolLM2-135M-Instruct)
as the reference and a weight-perturbed copy as the policy, on the same device, in fp32,
with the same batch size:

  ours  encode_pairs + model_logps(policy) + model_logps(reference) + the loss
        (what `dpo-engine eval` does after loading the models)
  trl   DPOTrainer(..., bf16=False).evaluate(): policy and reference forward per batch
        (its tokenization runs in __init__ and is not timed: in TRL's favour)

Timings alternate ours/TRL, after one warm-up each; the best of --repeats is reported, in
wall seconds and in CPU seconds of this process (steadier when the machine is shared).
Also reported: the largest gap between the two mean eval losses, as a sanity check.

    .venv/bin/python -m bench.eval_throughput [--pairs 16] [--batch-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

import torch


WORDS = ("the model answers short questions about science history cooking travel music and code "
         "with care clear steps simple words an example or two and a friendly tone").split()


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """n conversational pairs; prompts 5-40 words, answers 5-80 words (a realistic spread)."""
    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."  # noqa
    return [{"prompt": [{"role": "user", "content": text(5, 40)}],
             "chosen": [{"role": "assistant", "content": text(5, 80)}],
             "rejected": [{"role": "assistant", "content": text(5, 80)}]} for _ in range(n)]


def load_pair_of_models():
    """(policy, reference, tokenizer): the default model, and a copy with N(0, 0.002²) noise."""
    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model

    device = pick_device()
    ref = load_model("default", device)
    policy = load_model("default", device)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_((torch.randn(p.shape, generator=g) * 0.002).to(p.device, p.dtype))
    return policy, ref, device


def run_ours(policy, ref, records, batch_size: int) -> float:
    from dpo_engine.cli.eval import model_logps
    from dpo_engine.encoding import encode_pairs
    from dpo_engine.losses import LossParams, sigmoid
    from dpo_engine.pairs import parse_preference_record

    pairs = [parse_preference_record(r) for r in records]
    kept, _ = encode_pairs(policy.tokenizer, pairs, 1024)
    encoded = [e for _, e in kept]
    pad = policy.tokenizer.pad_token_id
    p = model_logps(policy.model, encoded, pad, batch_size)
    r = model_logps(ref.model, encoded, pad, batch_size)
    out = sigmoid(p.chosen_logps, p.rejected_logps, r.chosen_logps, r.rejected_logps, params=LossParams(beta=0.1))
    return out.losses.mean().item()


def make_trl(policy, ref, records, batch_size: int, workdir: str):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=workdir, report_to=[], bf16=False, beta=0.1, max_length=1024,
                     per_device_eval_batch_size=batch_size, use_cpu=policy.device.device == "cpu",
                     disable_tqdm=True)
    from transformers import PrinterCallback

    trainer = DPOTrainer(model=policy.model, ref_model=ref.model, args=args,
                         train_dataset=Dataset.from_list(records[:1]), eval_dataset=Dataset.from_list(records),
                         processing_class=policy.tokenizer)
    trainer.remove_callback(PrinterCallback)  # it prints each metrics dict on stdout, where our JSON goes
    return trainer


def timed(fn):
    """(wall seconds, CPU seconds of this process, fn's value). On a shared machine the CPU
    seconds are the steadier figure: another job's load stretches wall time far more."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return (time.perf_counter() - start, time.process_time() - cpu), value


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["uptime_before"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=16)  # ~1 min per pass per side on 2 idle cores
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    os.environ.setdefault("TQDM_DISABLE", "1")
    info = machine()
    records = synthetic_records(args.pairs)
    policy, ref, device = load_pair_of_models()
    import trl
    from datasets import Dataset

    with tempfile.TemporaryDirectory() as work:
        trainer = make_trl(policy, ref, records, args.batch_size, work)
        run_ours(policy, ref, records[: args.batch_size], args.batch_size)  # warm-up
        trainer.evaluate(Dataset.from_list(records[: args.batch_size]))  # warm-up
        ours_s, trl_s = [], []
        for _ in range(args.repeats):
            t, ours_loss = timed(lambda: run_ours(policy, ref, records, args.batch_size))
            ours_s.append(t)
            t, metrics = timed(lambda: trainer.evaluate())
            trl_s.append(t)
    info["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": "eval_throughput", "device": device.describe(), "pairs": args.pairs,
        "batch_size": args.batch_size, "trl": trl.__version__,
        "ours_pairs_per_s": args.pairs / min(w for w, _ in ours_s),
        "trl_pairs_per_s": args.pairs / min(w for w, _ in trl_s),
        "ours_pairs_per_cpu_s": args.pairs / min(c for _, c in ours_s),
        "trl_pairs_per_cpu_s": args.pairs / min(c for _, c in trl_s),
        "ours_wall_cpu_seconds": ours_s, "trl_wall_cpu_seconds": trl_s,
        "ours_mean_loss": ours_loss, "trl_eval_loss": metrics["eval_loss"], "machine": info,
    }
    result["speedup_wall"] = result["ours_pairs_per_s"] / result["trl_pairs_per_s"]
    result["speedup_cpu"] = result["ours_pairs_per_cpu_s"] / result["trl_pairs_per_cpu_s"]
    print(json.dumps(result, indent=1))
    print(f"\nours {result['ours_pairs_per_s']:.2f} pairs/s, TRL {result['trl_pairs_per_s']:.2f} pairs/s "
          f"(x{result['speedup_wall']:.2f} wall, x{result['speedup_cpu']:.2f} CPU time); "
          f"mean loss ours {ours_loss:.6f} vs TRL {metrics['eval_loss']:.6f}", file=sys.stderr)


if __name__ == "__main__":
    main()
