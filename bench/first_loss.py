"""How far a run's first loss sits from ln 2, per precision: the reference pass and the first
step batch the same pairs differently, and rounding differs with the batch.

    .venv/bin/python -m bench.first_loss --seeds 8

At step 1 the policy is its reference, so every implicit reward is 0 and the DPO loss ln 2 in
exact arithmetic. The trainer scores the reference once (`train.reference.compute_reference`,
batches of 2 x batch_size sorted by length, eval mode) and then the first step's micro-batches
(`train.data.epoch_batches`, shuffled by the seed, train mode): same weights, other batch
shapes. This runs both exactly as a run does, on the throughput bench's 64 pairs and the
default model, for several seeds, and reports the first step's loss minus ln 2 and the
per-pair implicit-reward margins (beta = 0.1), in fp32 and in bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


import torch

from bench.common import RESULTS, encoded_pairs, load_default, machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per micro-batch (the trainer's default)")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=32, help="the first N of the throughput bench's 64 pairs")
    parser.add_argument("--out", type=Path, default=RESULTS / "first_loss.jsonl")
    args = parser.parse_args()

    from dpo_engine.devices import pick_device
    from dpo_engine.iters import drain
    from dpo_engine.losses import LossParams, sigmoid
    from dpo_engine.train.data import epoch_batches
    from dpo_engine.train.reference import compute_reference
    from dpo_engine.train.step import StepContext, pair_logps

    loaded = load_default()
    model = loaded.model
    pairs = encoded_pairs(loaded.tokenizer, args.pairs)
    lengths = [p.length for p in pairs]
    params = LossParams(beta=0.1)
    rows = []
    print("| precision | seeds | first loss − ln 2: max abs | median abs | per-pair reward margin: max abs |")
    print("|---|---:|---:|---:|---:|")
    for dtype in ("float32", "bfloat16"):
        choice = pick_device("cpu", dtype)
        ctx = StepContext("sigmoid", params, loaded.tokenizer.pad_token_id, torch.device("cpu"), True,
                          choice.autocast)
        ref_c, ref_r, _ = drain(compute_reference(model, pairs, ctx, max(2, 2 * args.batch_size)))
        offsets, margins = [], []
        model.train()
        for seed in range(args.seeds):
            micro = epoch_batches(lengths, args.batch_size, seed, 0)[: args.grad_accum]
            losses = []
            for idx in micro:
                with torch.no_grad():
                    lp = pair_logps(model, [pairs[i] for i in idx], ctx)
                out = sigmoid(lp.chosen_logps, lp.rejected_logps, ref_c[idx], ref_r[idx], params=params)
                losses.append(out.losses)
                margins += (out.chosen_rewards - out.rejected_rewards).abs().tolist()
            offsets.append(torch.cat(losses).mean().item() - math.log(2))
        row = {"dtype": dtype, "seeds": args.seeds, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
               "loss_offset_max": max(map(abs, offsets)),
               "loss_offset_median": sorted(map(abs, offsets))[len(offsets) // 2],
               "offsets": offsets, "reward_margin_abs_max": max(margins),
               "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}
        rows.append(row)
        print(f"| {dtype} | {args.seeds} | {row['loss_offset_max']:.2e} | {row['loss_offset_median']:.2e} | "
              f"{row['reward_margin_abs_max']:.2e} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
