"""fp32 vs precision "auto" (bf16 autocast where this CPU runs it natively and faster): the
trainer's own step on the default model, both precisions side by side in one process.

    .venv/bin/python -m bench.precision_steps --rounds 8

One model (SmolLM2-135M-Instruct, fp32 weights) and one AdamW; each round trains the same
micro-batch once in fp32 and once in the "auto" precision, the order alternating round by
round, so that a machine shared with other jobs slows both alike (separate runs, minutes
apart, measured the load as much as the precision). The batches are the throughput bench's
pairs (`bench/common.py`: prompt ~40 tokens, answers 40-120), 2 pairs per step,
length-sorted, prompt run once with its keys/values reused (the trainer's default path).

Reported per precision: the median and the fastest step (the fastest is the least disturbed
by other processes), and tokens/s over all its steps. Losses are not compared here: both
precisions step the same weights in turn (the step-1 loss of each is ln 2 by construction).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench.common import BATCH, train_setup, uptime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    import torch

    from dpo_engine.devices import pick_device
    from dpo_engine.losses import LossParams
    from dpo_engine.train.step import StepContext, pair_logps, pair_tokens, run_step

    torch.manual_seed(0)
    before = uptime()
    auto = pick_device("cpu", "auto")
    model, tokenizer, encoded = train_setup()
    batches = [list(range(i, i + BATCH)) for i in range(0, len(encoded), BATCH)][: args.rounds]
    contexts = {name: StepContext("sigmoid", LossParams(beta=0.1), tokenizer.pad_token_id, torch.device("cpu"), True,
                                  choice.autocast)
                for name, choice in (("fp32", pick_device("cpu", "float32")), ("auto", auto))}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6)
    seconds: dict[str, list[float]] = {"fp32": [], "auto": []}
    tokens = 0
    for k, mb in enumerate(batches):
        pairs = [encoded[i] for i in mb]
        tokens += pair_tokens(pairs)
        for name in (("fp32", "auto") if k % 2 == 0 else ("auto", "fp32")):
            with torch.no_grad():
                ref = pair_logps(model, pairs, contexts[name])  # policy == reference: loss ln 2, as at step 1
            start = time.perf_counter()
            metrics, _ = run_step(model, optimizer, [list(range(len(pairs)))], pairs,
                                  (ref.chosen_logps, ref.rejected_logps), contexts[name], 1.0, k + 1, mb)
            seconds[name].append(time.perf_counter() - start)
            print(f"round {k + 1} {name}: {seconds[name][-1]:.2f} s, loss {metrics['loss']:.4f}", file=sys.stderr)
    print(_table(seconds, tokens, auto, before, args.rounds))


def _table(seconds: dict, tokens: int, auto, before: str, rounds: int) -> str:
    import torch

    rows = ["| precision | median step (s) | fastest step (s) | tok/s (all steps) |", "|---|---:|---:|---:|"]
    for name, label in (("fp32", "fp32"), ("auto", f"auto = {auto.dtype}")):
        s = seconds[name]
        rows.append(f"| {label} | {statistics.median(s):.2f} | {min(s):.2f} | {tokens / sum(s):.0f} |")
    ratio_median = statistics.median(seconds["fp32"]) / statistics.median(seconds["auto"])
    ratio_best = min(seconds["fp32"]) / min(seconds["auto"])
    ratio_all = sum(seconds["fp32"]) / sum(seconds["auto"])
    return "\n".join([
        f"`python -m bench.precision_steps --rounds {rounds}`: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{tokens} trained tokens per precision.", "",
        f"auto chose: {auto.dtype} ({auto.precision_reason})", "",
        f"Machine before: {before}", "", f"Machine after: {uptime()}", "", *rows, "",
        f"auto / fp32 speed: {ratio_median:.2f}x (median step), {ratio_best:.2f}x (fastest step), "
        f"{ratio_all:.2f}x (all steps)",
    ])


if __name__ == "__main__":
    main()
