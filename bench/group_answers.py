"""Rankings cost their answers, not their pairs: grouped vs pairwise, side by side in one process.

    .venv/bin/python -m bench.group_answers --steps 6 --threads 1

Ranking data as the app makes it: rankings of k = 4 (8 rankings, 48 pairs) and k = 8 (2
rankings, 56 pairs) on the default model (SmolLM2-135M-Instruct, fp32 weights, precision
"auto" as the trainer runs it), prompt ~40 tokens, answers 20-60 tokens, all k(k-1)/2
pairs of a ranking. For each k:

- reference pass (no grad, every pair, batch 16 pairs = 32 rows): pairwise (length batches,
  each pair's two answers) vs grouped (`train.groups.scoring_batches`: whole rankings, each
  distinct answer once); the order alternates between k;
- training steps (batch 8 pairs, grad_accum 1, the trainer's `run_step` with AdamW at lr 0:
  the whole step's cost, the weights unchanged so that every variant sees the same model), three
  variants interleaved step by step, the order rotating, so a machine shared with other
  jobs slows all alike (after one untimed warm-up step of each):
    pairwise   today's path: pairwise batches (length-bucketed pairs), each pair's answers run
    grouped-batches  the grouped batch order, computed pair by pair (isolates the batching)
    grouped    the grouped batch order, each distinct prompt and answer once (the new default)

Reported: seconds (median step, all steps), rows (sequences) the model ran, and the speed-up
over the pairwise path. The grouped step's loss equals the pairwise one on the same pairs
(tests/test_grouped.py); here the losses of grouped-batches and grouped agree too.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time


from bench.common import BAD, GOOD, TOPIC, grow, uptime

SEED = 11
BATCH = 8
REF_BATCH = 16


def make_rankings(tokenizer, k: int, n: int):
    """n rankings of k answers each, all their pairs (best first); PreferencePairs."""
    from dpo_engine.pairs import conversation

    rng = random.Random(f"{SEED}/{k}")

    def n_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    pairs = []
    for g in range(n):
        prompt = grow(n_tokens, rng, TOPIC, 16, f"Question {k}-{g}:")
        answers = [grow(n_tokens, rng, (GOOD if a < k // 2 else BAD) + TOPIC, rng.randint(20, 60)) for a in range(k)]
        pairs += [conversation(prompt, answers[i], answers[j]) for i in range(k) for j in range(i + 1, k)]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and k (at most an epoch)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()

    import torch

    from dpo_engine._compat import quiet_transformers
    from dpo_engine.devices import pick_device
    from dpo_engine.encoding import encode_pair
    from dpo_engine.iters import drain
    from dpo_engine.losses import LossParams
    from dpo_engine.models import load_model
    from dpo_engine.train.data import epoch_batches
    from dpo_engine.train.groups import answer_groups, prompt_groups
    from dpo_engine.train.model import disable_dropout
    from dpo_engine.train.step import StepContext, run_step, policy_scores

    quiet_transformers()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    before = uptime()
    auto = pick_device("cpu", "auto")
    loaded = load_model(args.model, pick_device("cpu", "float32"))
    model, tokenizer = loaded.model, loaded.tokenizer
    disable_dropout(model)
    model.config.use_cache = False

    def ctx(grouped: bool) -> StepContext:
        return StepContext("sigmoid", LossParams(beta=0.1), tokenizer.pad_token_id, torch.device("cpu"), True,
                           auto.autocast, group_answers=grouped)

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # the full step's cost; the weights stay, so
    # every variant of a step sees the same model and grouped and grouped-batches losses must agree
    sections = []
    for case, (k, n) in enumerate(((4, 8), (8, 2))):
        enc = [encode_pair(tokenizer, p, 512) for p in make_rankings(tokenizer, k, n)]
        rows_pairwise = 2 * len(enc)
        rows_grouped = len(answer_groups(enc).answers)
        # reference pass
        model.eval()
        ref_s, ref = {}, {}
        for name in (("pairwise", "grouped") if case % 2 == 0 else ("grouped", "pairwise")):
            start = time.perf_counter()
            ref[name] = drain(policy_scores(model, enc, ctx(name == "grouped"), REF_BATCH))
            ref_s[name] = time.perf_counter() - start
            print(f"k={k} reference {name}: {ref_s[name]:.1f} s", file=sys.stderr)
        diff = max((a - b).abs().max().item() for a, b in zip(ref["pairwise"], ref["grouped"]))
        model.train()
        # training steps
        lengths = [p.length for p in enc]
        plans = {"pairwise": (epoch_batches(lengths, BATCH, SEED, 0), False),
                 "grouped-batches": (epoch_batches(lengths, BATCH, SEED, 0, prompt_groups(enc)), False),
                 "grouped": (epoch_batches(lengths, BATCH, SEED, 0, prompt_groups(enc)), True)}
        names = list(plans)
        seconds = {name: [] for name in names}
        rows = {name: 0 for name in names}
        losses = {name: [] for name in names}
        steps = min(args.steps, len(plans["pairwise"][0]))
        for name in names:  # warm-up, not timed: first-call costs (allocator, kernels) out of the figures
            batches, grouped = plans[name]
            run_step(model, optimizer, [batches[-1]], enc, ref["pairwise"], ctx(grouped), 1.0, 0, list(range(len(enc))))
        for s in range(steps):
            for name in names[s % 3:] + names[: s % 3]:
                batches, grouped = plans[name]
                mb = batches[s]
                rows[name] += len(answer_groups([enc[i] for i in mb]).answers) if grouped else 2 * len(mb)
                start = time.perf_counter()
                metrics, _ = run_step(model, optimizer, [mb], enc, ref["pairwise"], ctx(grouped), 1.0, s + 1,
                                      list(range(len(enc))))
                seconds[name].append(time.perf_counter() - start)
                losses[name].append(metrics["loss"])
                print(f"k={k} step {s + 1} {name}: {seconds[name][-1]:.2f} s, loss {metrics['loss']:.5f}",
                      file=sys.stderr)
        sections.append(_section(k, n, len(enc), rows_pairwise, rows_grouped, ref_s, diff, seconds, rows, losses))
    import torch as _t

    print("\n".join([
        f"`python -m bench.group_answers --steps {args.steps} --threads {args.threads}`: torch {_t.__version__}, {_t.get_num_threads()} threads, "
        f"model {args.model}, precision auto = {auto.dtype}, batch {BATCH} pairs per step (grad_accum 1), "
        f"reference batch {REF_BATCH} pairs.", "", f"Machine before: {before}", "", f"Machine after: {uptime()}", "",
        *sections]))


def _section(k, n, n_pairs, rows_pairwise, rows_grouped, ref_s, diff, seconds, rows, losses) -> str:
    out = [f"**k = {k}** ({n} rankings, {n_pairs} pairs, {rows_grouped} distinct answers)", "",
           "| | pairwise | grouped | speed-up |", "|---|---:|---:|---:|",
           f"| reference pass: rows run | {rows_pairwise} | {rows_grouped} | {rows_pairwise / rows_grouped:.2f}x |",
           f"| reference pass: seconds | {ref_s['pairwise']:.1f} | {ref_s['grouped']:.1f} | "
           f"{ref_s['pairwise'] / ref_s['grouped']:.2f}x |", "",
           f"Largest reference log-prob difference, grouped vs pairwise: {diff:.2e} (nats, sums over an answer)", "",
           "| training step (8 pairs) | rows run | median step (s) | all steps (s) | speed-up (all steps) |",
           "|---|---:|---:|---:|---:|"]
    base = sum(seconds["pairwise"])
    for name, s in seconds.items():
        out.append(f"| {name} | {rows[name]} | {statistics.median(s):.2f} | {sum(s):.1f} | {base / sum(s):.2f}x |")
    same = max(abs(a - b) for a, b in zip(losses["grouped"], losses["grouped-batches"]))
    out += ["", f"Largest step-loss difference, grouped vs grouped-batches (the same pairs, the same weights): "
                f"{same:.1e}", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
