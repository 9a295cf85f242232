"""Does bf16's gain over fp32 grow with the micro-batch? The trainer's step and the bare
forward+backward at 1, 2, 4 and 8 pairs per micro-batch, fp32 and bf16, side by side.

    .venv/bin/python -m bench.bf16_batch_shape --pairs 1,2,4,8 --rounds 3

On an AMX Xeon the bare forward+backward of 8 rows x 160 tokens gained 2.4x from bf16, while the
trainer's micro-batches of 2 pairs gained 1.45x, bare model and trainer alike (bench/README.md,
"On an AMX Xeon"): the question is whether the micro-batch's size, not the trainer, sets the
ratio. Per round and micro-batch size, each of the four kinds (step-fp32, step-bf16, bare-fp32,
bare-bf16) runs once on the same pairs (the throughput bench's, length-sorted, a different slice
each round), the order rotating; tokens/s = the pairs' tokens (prompt once + both answers) over
the seconds of all rounds. One optimizer step per trainer call (the weights move; both
precisions alike).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict


from bench.common import bare_forward_backward, machine_row, train_setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="1,2,4,8", help="pairs per micro-batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dpo_engine._compat import quiet_transformers
    from dpo_engine.devices import pick_device
    from dpo_engine.losses import LossParams
    from dpo_engine.attention import use_fp32_attention
    from dpo_engine.train.step import StepContext, pair_logps, pair_tokens, run_step

    quiet_transformers()
    torch.manual_seed(0)
    model, tok, encoded = train_setup()
    choices = {"fp32": pick_device("cpu", "float32"), "bf16": pick_device("cpu", "bfloat16")}
    contexts = {p: StepContext("sigmoid", LossParams(beta=0.1), tok.pad_token_id, torch.device("cpu"), True,
                               c.autocast) for p, c in choices.items()}
    use_fp32_attention(model)  # the trainer's attention on a CPU in bf16; in fp32 it is plain SDPA
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, fused=True)

    def step(precision, pairs):
        with torch.no_grad():
            lp = pair_logps(model, pairs, contexts[precision])
        ref = (lp.chosen_logps, lp.rejected_logps)
        start = time.perf_counter()
        run_step(model, optimizer, [list(range(len(pairs)))], pairs, ref, contexts[precision], 1.0, 1,
                 list(range(len(pairs))))
        return time.perf_counter() - start

    def bare(precision, pairs):
        start = time.perf_counter()
        bare_forward_backward(model, pairs, tok.pad_token_id, contexts[precision].autocast)
        return time.perf_counter() - start

    kinds = {"step-fp32": lambda p: step("fp32", p), "step-bf16": lambda p: step("bf16", p),
             "bare-fp32": lambda p: bare("fp32", p), "bare-bf16": lambda p: bare("bf16", p)}
    print(machine_row(), file=sys.stderr)
    rows = []
    for size in [int(x) for x in args.pairs.split(",")]:
        seconds, tokens = defaultdict(float), 0
        slices = [encoded[i:i + size] for i in range(0, len(encoded) - size + 1, size)]
        for fn in kinds.values():  # warm-up at this shape (oneDNN primitives, the allocator)
            fn(slices[0])
        order = list(kinds)
        for k in range(args.rounds):
            pairs = slices[(1 + k * len(slices) // max(1, args.rounds)) % len(slices)]
            tokens += pair_tokens(pairs)
            for name in order[k % 4:] + order[:k % 4]:
                seconds[name] += kinds[name](pairs)
        rate = {n: tokens / s for n, s in seconds.items()}
        rows.append((size, tokens // args.rounds, rate))
        print(f"{size} pairs: " + ", ".join(f"{n} {r:.0f} tok/s" for n, r in rate.items()), file=sys.stderr)
    print(f"`bench/bf16_batch_shape.py --pairs {args.pairs} --rounds {args.rounds}`\n\nMachine: {machine_row()}\n")
    print("| pairs per micro-batch | tokens per micro-batch | step fp32 | step bf16 | step bf16 ÷ fp32 "
          "| bare fp32 | bare bf16 | bare bf16 ÷ fp32 | step ÷ bare (bf16) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, tokens, r in rows:
        print(f"| {size} | {tokens} | {r['step-fp32']:.0f} | {r['step-bf16']:.0f} | "
              f"{r['step-bf16'] / r['step-fp32']:.2f} | {r['bare-fp32']:.0f} | {r['bare-bf16']:.0f} | "
              f"{r['bare-bf16'] / r['bare-fp32']:.2f} | {r['step-bf16'] / r['bare-bf16']:.2f} |")


if __name__ == "__main__":
    main()
