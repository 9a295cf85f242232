"""Per-pair log-probs in bf16 autocast vs fp32 on the default model (results: bench/README.md).

    .venv/bin/python -m bench.logps_precision            # table to stdout, rows to --out

The trainer's own scoring (`train.step.pair_logps`: prompt once with its keys/values
reused, LM head on response positions only, log-softmax and sums in fp32) over the
throughput bench's 64 pairs (`bench/train_throughput.py`), once under fp32 and once under
bf16 autocast, same fp32 weights. Reported: the largest and the median relative difference
of the summed response log-probs (|bf16 - fp32| / |fp32|), the same for the DPO margin at the
reference (log-prob chosen - rejected, what the implicit reward compares), and how many
pairs' margins change sign. On a CPU without native bf16 the bf16 pass is emulated (slow,
but the numbers are the same ones a bf16 CPU computes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path


from bench.common import RESULTS, encoded_pairs, load_default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=64, help="the first N of the 64 (bf16 is slow where emulated)")
    parser.add_argument("--out", type=Path, default=RESULTS / "logps_precision.jsonl")
    args = parser.parse_args()

    import torch

    from dpo_engine.devices import pick_device
    from dpo_engine.iters import drain
    from dpo_engine.losses import LossParams
    from dpo_engine.train.step import StepContext, policy_scores

    loaded = load_default()
    pairs = encoded_pairs(loaded.tokenizer, args.pairs)
    result, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        choice = pick_device("cpu", dtype)
        ctx = StepContext("sigmoid", LossParams(beta=0.1), loaded.tokenizer.pad_token_id, torch.device("cpu"), True,
                          choice.autocast)
        start = time.perf_counter()
        with torch.no_grad():
            result[dtype] = drain(policy_scores(loaded.model, pairs, ctx, args.batch_size))
        seconds[dtype] = time.perf_counter() - start
    (c32, r32), (c16, r16) = result["float32"], result["bfloat16"]
    rel = torch.cat([(c16 - c32).abs() / c32.abs(), (r16 - r32).abs() / r32.abs()])
    m32, m16 = c32 - r32, c16 - r16
    margin_abs = (m16 - m32).abs()
    row = {
        "pairs": len(pairs), "sequences": 2 * len(pairs),
        "logp_rel_max": rel.max().item(), "logp_rel_median": rel.median().item(),
        "logp_abs_max": torch.cat([(c16 - c32).abs(), (r16 - r32).abs()]).max().item(),
        "logp_mean_fp32": torch.cat([c32, r32]).mean().item(),
        "margin_abs_max": margin_abs.max().item(), "margin_abs_median": margin_abs.median().item(),
        "margin_abs_mean_fp32": m32.abs().mean().item(),
        "margin_sign_flips": int(((m16 > 0) != (m32 > 0)).sum()),
        "seconds": seconds, "cpu_bf16": pick_device("cpu", "auto").precision_reason,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print("| sequences | log-prob rel. diff max / median | abs. diff max (nats) | mean log-prob (fp32) "
          "| margin abs. diff max / median (nats) | mean abs. margin (fp32) | margin sign flips | fp32 / bf16 s |")
    print("|---:|---|---:|---:|---|---:|---:|---|")
    print(f"| {row['sequences']} | {row['logp_rel_max']:.2e} / {row['logp_rel_median']:.2e} | {row['logp_abs_max']:.3f} "
          f"| {row['logp_mean_fp32']:.1f} | {row['margin_abs_max']:.3f} / {row['margin_abs_median']:.3f} "
          f"| {row['margin_abs_mean_fp32']:.2f} | {row['margin_sign_flips']} of {row['pairs']} "
          f"| {seconds['float32']:.0f} / {seconds['bfloat16']:.0f} |")


if __name__ == "__main__":
    main()
