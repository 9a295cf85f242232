"""Where a training step's time goes: the trainer's step and the bare forward+backward, fp32 and
bf16, on the default model, with torch.profiler.

    .venv/bin/python -m bench.profile_step --rounds 6 --profile 3 --accum 2
    .venv/bin/python -m bench.profile_step --rounds 4 --accum 2 --kinds step-bf16,step-bf16-attn16,bare-bf16 --profiled ""

One model (SmolLM2-135M-Instruct, fp32 weights, train mode, dropout off) and one fused AdamW.
The batches are the throughput bench's pairs (`bench/train_throughput.py`), `--accum`
micro-batches of 2 pairs per step, length-sorted. Each round runs the same step once per kind
(`--kinds`), the order rotating round by round so that a machine shared with other jobs slows
all alike:

    step-fp32 / step-bf16   `train.step.run_step` (the trainer's step: forward with the prompt
                            once, loss, backward, clip, fused AdamW) in fp32 / the trainer's bf16
                            (bf16 autocast, attention in fp32 on a CPU:
                            `dpo_engine.attention`); step-bf16-attn16: attention in bf16 as well;
                            -recast: autocast's weight casts made per micro-batch (before
                            `step.casts_kept`); -noshare: the prompt run twice, one forward
    bare-fp32 / bare-bf16   `bench.common.bare_forward_backward`: the same tokens as one row
                            per pair, the model, the LM head on the scored positions, a plain
                            cross-entropy, backward; nothing else; in the trainer's precision
                            (bare-bf16-attn16: attention in bf16 too; -compiled: torch.compile)

Then `--profile` more steps of each step kind under torch.profiler; every op's own (self) time
is put in one bucket by the op and the autograd node or scope it runs under (`bucket`), and
the step's wall time not inside any op is "Python / other".
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import defaultdict


from bench.common import BATCH, bare_forward_backward, machine_row, train_setup

BUCKETS = ("matmul", "casts / copies", "attention", "loss / log-softmax", "optimizer", "grad clip / zero",
           "other ops (norms, activations, embedding, ...)")
# Substrings of the op's own name or of a scope above it (innermost first), checked in this order.
RULES = (
    ("optimizer", ("optimizer.step", "adamw")),
    ("grad clip / zero", ("clip_grad", "_foreach_norm", "zero_grad")),
    ("loss / log-softmax", ("logsumexp", "log_softmax", "logsoftmax", "gather", "index_add", "logsigmoid",
                            "cross_entropy", "nll_loss")),
    ("attention", ("scaled_dot_product", "scaleddotproduct", "flash_attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn_matmul")),
    ("casts / copies", ("aten::_to_copy", "aten::copy_", "aten::to", "aten::clone", "aten::contiguous",
                        "tocopybackward")),
)
KINDS = ("step-fp32", "step-bf16", "bare-fp32", "bare-bf16", "step-bf16-recast", "step-bf16-noshare",
         "step-fp32-noshare", "bare-bf16-compiled", "step-bf16-attn16", "step-bf16-attn16-recast", "bare-bf16-attn16")
OWN_SCOPE = ("optimizer", "grad clip / zero", "loss / log-softmax", "attention")  # these match on any ancestor


def bucket(chain: list[str]) -> str:
    """The bucket of an op, given its name and the names above it (innermost first)."""
    names = [n.lower() for n in chain]
    for name, keys in RULES:
        scope = names if name in OWN_SCOPE else names[:1]
        if any(any(k in n for k in keys) for n in scope):
            return name
    return BUCKETS[-1]


def profile_table(prof, wall: float, steps: int) -> dict[str, float]:
    """Seconds per step in each bucket, and "Python / other" (wall time outside every op)."""
    totals: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.self_cpu_time_total <= 0 or ev.device_type.name != "CPU":
            continue
        chain, node = [], ev
        while node is not None:
            chain.append(node.name)
            node = node.cpu_parent
        if any(n.startswith("ProfilerStep") for n in chain[:1]):
            continue
        totals[bucket(chain)] += ev.self_cpu_time_total / 1e6
    per_step = {k: v / steps for k, v in totals.items()}
    per_step["Python / other"] = max(0.0, wall / steps - sum(per_step.values()))
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (each: every kind once)")
    parser.add_argument("--profile", type=int, default=3, help="profiled steps per profiled kind")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches (of 2 pairs) per step")
    parser.add_argument("--kinds", default="step-fp32,step-bf16,bare-fp32,bare-bf16",
                        help=f"timed kinds, of: {', '.join(KINDS)}")
    parser.add_argument("--profiled", default="step-fp32,step-bf16", help="kinds run under the profiler")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 where other jobs share the cores)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile

    from dpo_engine._compat import quiet_transformers
    from dpo_engine.devices import pick_device
    from dpo_engine.losses import LossParams
    from dpo_engine.train import step as step_module
    from dpo_engine.attention import use_fp32_attention
    from dpo_engine.train.step import StepContext, pair_logps, pair_tokens, run_step

    quiet_transformers()
    torch.manual_seed(0)
    before = machine_row()
    model, tokenizer, encoded = train_setup()
    size = BATCH * args.accum
    steps = [encoded[i:i + size] for i in range(0, len(encoded) - size + 1, size)]
    choices = {"fp32": pick_device("cpu", "float32"), "bf16": pick_device("cpu", "bfloat16")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, fused=True)

    def context(precision: str, share: bool = True, attention_bf16: bool = False):
        """The trainer's StepContext; `attention_bf16`: plain autocast, attention in bf16 too
        (the trainer before `dpo_engine.attention`). Sets the model's attention accordingly."""
        use_fp32_attention(model, on=not attention_bf16)
        return StepContext("sigmoid", LossParams(beta=0.1), tokenizer.pad_token_id, torch.device("cpu"), share,
                           choices[precision].autocast)

    def refs(pairs, precision):
        with torch.no_grad():  # policy == reference: the loss is ln 2, as at step 1
            lp = pair_logps(model, pairs, context(precision))
        return lp.chosen_logps, lp.rejected_logps

    def micro(pairs):
        return [list(range(i, min(i + BATCH, len(pairs)))) for i in range(0, len(pairs), BATCH)]

    def trainer(precision, share=True, recast=False, attention_bf16=False):
        def run(pairs, ref):
            kept = step_module.casts_kept
            if recast:  # the step before: autocast's casts made again for every micro-batch
                step_module.casts_kept = lambda _ctx: contextlib.nullcontext()
            try:
                run_step(model, optimizer, micro(pairs), pairs, ref, context(precision, share, attention_bf16), 1.0, 1,
                         list(range(len(pairs))))
            finally:
                step_module.casts_kept = kept
        return run

    def bare(precision, attention_bf16=False):
        autocast = choices[precision].autocast

        def run(pairs, ref):
            use_fp32_attention(model, on=not attention_bf16)
            for mb in micro(pairs):
                bare_forward_backward(model, [pairs[i] for i in mb], tokenizer.pad_token_id, autocast)
        return run

    def compiled_bare(precision):
        """The bare forward+backward through torch.compile (inductor, dynamic shapes): the
        first call's compile time is reported apart (`compile_s`)."""
        import types

        backbone = torch.compile(model.model, dynamic=True)
        shim = types.SimpleNamespace(model=backbone, lm_head=model.lm_head, zero_grad=model.zero_grad)

        def run(pairs, ref):
            use_fp32_attention(model)
            for mb in micro(pairs):
                bare_forward_backward(shim, [pairs[i] for i in mb], tokenizer.pad_token_id,
                                      choices[precision].autocast)
        return run

    all_kinds = {"step-fp32": trainer("fp32"), "step-bf16": trainer("bf16"), "bare-fp32": bare("fp32"),
                 "bare-bf16": bare("bf16"), "step-bf16-recast": trainer("bf16", recast=True),
                 "step-bf16-noshare": trainer("bf16", share=False), "step-fp32-noshare": trainer("fp32", share=False),
                 "bare-bf16-compiled": compiled_bare("bf16"),
                 "step-bf16-attn16": trainer("bf16", attention_bf16=True),
                 "step-bf16-attn16-recast": trainer("bf16", recast=True, attention_bf16=True),
                 "bare-bf16-attn16": bare("bf16", attention_bf16=True)}
    assert set(all_kinds) == set(KINDS)
    kinds = {name: all_kinds[name] for name in args.kinds.split(",")}
    precision_of = lambda name: "bf16" if "bf16" in name else "fp32"  # noqa: E731
    warmup: dict[str, float] = {}
    for name, run in kinds.items():  # warm up every kind (oneDNN primitives, the allocator; compiling)
        ref = refs(steps[0], precision_of(name))
        start = time.perf_counter()
        run(steps[0], ref)
        warmup[name] = time.perf_counter() - start
    print("first step (warm-up, compile): " + ", ".join(f"{n} {s:.1f} s" for n, s in warmup.items()),
          file=sys.stderr)
    seconds: dict[str, list[float]] = defaultdict(list)
    tokens = 0
    order = list(kinds)
    for k, pairs in enumerate(steps[1:args.rounds + 1]):
        tokens += pair_tokens(pairs)
        for name in order[k % len(order):] + order[:k % len(order)]:
            ref = refs(pairs, precision_of(name))  # not timed: the trainer scores the reference before training
            start = time.perf_counter()
            kinds[name](pairs, ref)
            seconds[name].append(time.perf_counter() - start)
        print(f"round {k + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in order), file=sys.stderr)

    profiles = {}
    for name in args.profiled.split(",") if args.profiled else []:
        chosen = steps[args.rounds + 1: args.rounds + 1 + args.profile] or steps[1:1 + args.profile]
        ref_list = [refs(pairs, precision_of(name)) for pairs in chosen]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for pairs, ref in zip(chosen, ref_list):
                all_kinds[name](pairs, ref)
            wall = time.perf_counter() - start
        profiles[name] = profile_table(prof, wall, len(chosen))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), file=sys.stderr)
    print(_report(seconds, tokens, profiles, before, args, warmup))


def _report(seconds, tokens, profiles, before, args, warmup) -> str:
    rows = ["| kind | first step (s) | median (s) | fastest (s) | tok/s (all rounds) |", "|---|---:|---:|---:|---:|"]
    for name, s in seconds.items():
        rows.append(f"| {name} | {warmup[name]:.1f} | {statistics.median(s):.2f} | {min(s):.2f} "
                    f"| {tokens / sum(s):.0f} |")
    rate = {name: tokens / sum(s) for name, s in seconds.items()}
    pairs = [("step-bf16", "bare-bf16"), ("step-fp32", "bare-fp32"), ("step-bf16", "step-fp32"),
             ("bare-bf16", "bare-fp32"), ("step-bf16", "step-bf16-recast"), ("step-bf16", "step-bf16-noshare"),
             ("step-fp32", "step-fp32-noshare"), ("bare-bf16-compiled", "bare-bf16"),
             ("step-bf16", "step-bf16-attn16"), ("step-bf16-attn16", "step-bf16-attn16-recast"),
             ("bare-bf16", "bare-bf16-attn16"), ("step-bf16-attn16", "bare-bf16-attn16")]
    ratios = ", ".join(f"{a} / {b} {rate[a] / rate[b]:.2f}" for a, b in pairs if a in rate and b in rate)
    prof = ["| where (s per step) | " + " | ".join(profiles) + " |", "|---|" + "---:|" * len(profiles)]
    for b in (*BUCKETS, "Python / other"):
        prof.append(f"| {b} | " + " | ".join(f"{p.get(b, 0.0):.3f}" for p in profiles.values()) + " |")
    prof.append("| **total** | " + " | ".join(f"**{sum(p.values()):.3f}**" for p in profiles.values()) + " |")
    return "\n".join([f"`bench/profile_step.py --rounds {args.rounds} --profile {args.profile} --accum {args.accum} "
                      f"--kinds {args.kinds} --profiled {args.profiled}`", "",
                      f"Machine before: {before}", "", f"Machine after: {machine_row()}", "", *rows, "",
                      f"Ratios of tokens/s: {ratios}", "", *prof])


if __name__ == "__main__":
    main()
