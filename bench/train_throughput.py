"""Training throughput: DPO Studio's trainer vs TRL's DPOTrainer vs a textbook loop.

    .venv/bin/python -m bench.train_throughput --steps 12          # all variants, table to stdout
    .venv/bin/python -m bench.train_throughput --steps 12 --readme # and record it in bench/README.md

    .venv/bin/python -m bench.train_throughput --steps 6 --variants ours-fp32,ours   # precision side by side
    .venv/bin/python -m bench.train_throughput --steps 6 --accum 2 --variants ceiling,ours,ceiling-fp32,ours-fp32

Every variant trains the default model (SmolLM2-135M-Instruct, fp32 weights, CPU) on the same 64
synthetic conversational pairs (prompt ~40 tokens, responses 40-120), 2 pairs per step,
max length 256, lr 5e-6, beta 0.1, linear schedule without warmup, for N steps, each in
its own subprocess (so peak RSS is its own):

    ceiling         the bare forward+backward over ours' micro-batches, same tokens, same precision
                    (`bare_forward_backward`: the model, the LM head on the scored positions, a plain
                    cross-entropy; no DPO, no optimizer): ours' "share of its ceiling" is measured
                    against it; ceiling-fp32 the same in fp32, for ours-fp32
    ours            dpo_engine.train.loop.train: reference once, prompt once + KV reused,
                    LM head only on response positions, length-bucketed batches; precision
                    "auto" (bf16 autocast where this CPU runs bf16 natively and faster)
    ours-fp32       the same with --dtype float32
    trl             TRL DPOTrainer with its defaults (reference forward every step,
                    gradient checkpointing on)
    trl-precompute  TRL with precompute_ref_log_probs=True
    trl-fast        TRL's fastest configuration found on this CPU (TRL_CONFIGS: precompute, gradient
                    checkpointing off, fp32 where the CPU has no native bf16); trl-nockpt and
                    trl-fast-padfree are the other configurations tried
    textbook        the project's first DPO loop, bugs fixed: policy + reference copies, separate chosen
                    and rejected forwards, full logits, masked shifted gather

Trained tokens = non-padding prompt + chosen + rejected tokens of the pairs stepped on. Every
result row names its machine (`bench/common.py`: CPU, the flags that decide bf16's speed,
threads): figures from different machines are not comparable.
"step tok/s" counts optimizer-step time only; "end-to-end tok/s" adds the one-off
reference pass of the precomputing variants (over all 64 pairs).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (BATCH, BETA, LR, MAX_LENGTH, N_PAIRS, RESULTS, ROOT, SEED, bare_forward_backward,
                          machine_info, machine_row, make_pairs, module_command, module_env, train_model, uptime)

ACCUM = 1  # micro-batches per optimizer step (--accum; ours, the ceiling and TRL; the textbook loop has none)
VARIANTS = ("ceiling", "ours", "ceiling-fp32", "ours-fp32", "trl", "trl-precompute", "trl-fast", "textbook")
# TRL configurations beyond its defaults (DPOConfig fields). "trl" is TRL as it ships: bf16 autocast
# (DPOConfig.bf16 defaults to True, on the CPU too), gradient checkpointing on, a reference forward per
# step. The others were tried here to find TRL's fastest configuration on this CPU (bench/README.md).
TRL_CONFIGS = {
    "trl": {},
    "trl-precompute": {"precompute_ref_log_probs": True},
    "trl-fp32": {"bf16": False},  # as shipped but fp32: on a CPU without native bf16, TRL's bf16 is emulated
    "trl-precompute-fp32": {"precompute_ref_log_probs": True, "bf16": False},
    "trl-nockpt": {"precompute_ref_log_probs": True, "gradient_checkpointing": False},
    "trl-fast": {"precompute_ref_log_probs": True, "gradient_checkpointing": False, "bf16": False},
    "trl-fast-padfree": {"precompute_ref_log_probs": True, "gradient_checkpointing": False, "bf16": False,
                         "padding_free": True},
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --------------------------------------------------------------------------- variants


def _config(steps: int, workdir: Path, dtype: str):
    """The TrainConfig of ours (and of the ceiling, which steps on the same batches)."""
    from dpo_engine.models import default_model_dir
    from dpo_engine.train.config import TrainConfig

    return TrainConfig(output_dir=str(workdir / "out"), model=str(default_model_dir()), lr=LR, beta=BETA,
                       max_steps=steps, batch_size=BATCH, grad_accum=ACCUM, max_length=MAX_LENGTH, warmup_ratio=0.0,
                       eval_fraction=0.0, save_every=0, device="cpu", seed=SEED, dtype=dtype)


def run_ceiling(steps: int, workdir: Path, dtype: str = "auto") -> dict:
    """The bare forward+backward (`bare_forward_backward`) over the micro-batches ours steps on,
    in the precision ours runs: what the trainer's tokens/s would be with nothing but the model."""
    import torch

    from dpo_engine.train.data import prepare_data, step_batches, steps_per_epoch
    from dpo_engine.train.groups import prompt_groups
    from dpo_engine.attention import use_fp32_attention
    from dpo_engine.train.model import training_plan
    from dpo_engine.train.step import pair_tokens

    config = _config(steps, workdir, dtype)
    plan = training_plan(config)
    compute = plan.compute_choice()
    autocast = compute.autocast  # the trainer's forward precision
    model, tokenizer = train_model()  # fp32 weights, as the trainer's
    if plan.attention != plan.compute:
        use_fp32_attention(model)  # attention in fp32 on a CPU in bf16, as the trainer's
    data = prepare_data(tokenizer, make_pairs(tokenizer), None, config)
    lengths = [p.length for p in data.train]
    groups = prompt_groups(data.train) if config.group_answers else None
    per_epoch = steps_per_epoch(len(data.train), config.batch_size, config.grad_accum)
    tokens, seconds = 0, 0.0
    for step in range(steps):
        batches = step_batches(lengths, config, step // per_epoch, step % per_epoch, 1, groups)
        start = time.perf_counter()
        for mb in batches:
            bare_forward_backward(model, [data.train[i] for i in mb], tokenizer.pad_token_id, autocast)
        seconds += time.perf_counter() - start
        tokens += pair_tokens([data.train[i] for mb in batches for i in mb])
    torch.set_grad_enabled(True)
    return {"losses": [], "step_tok_s": tokens / seconds, "ref_seconds": 0.0,
            "precision": f"{compute.dtype}: {compute.precision_reason}"}


def run_ours(steps: int, workdir: Path, dtype: str = "auto") -> dict:
    import dpo_engine.train.reference as reference
    from dpo_engine.models import load_tokenizer, resolve_model_ref
    from dpo_engine.train.events import PrecisionChosen, ReferenceProgress, StepEvent, TrainSummary
    from dpo_engine.train.loop import train

    reference.cache_path = lambda fp: workdir / "ref" / f"{fp}.safetensors"  # a cold cache: measure the pass
    pairs = make_pairs(load_tokenizer(resolve_model_ref("default")))
    config = _config(steps, workdir, dtype)
    losses, ref_start, ref_end, summary, precision = [], None, None, None, ""
    for event in train(config, pairs):
        if isinstance(event, PrecisionChosen):
            precision = f"{event.dtype}: {event.reason}"
        elif isinstance(event, ReferenceProgress):
            ref_start = ref_start or time.perf_counter()
            ref_end = time.perf_counter()
        elif isinstance(event, StepEvent):
            losses.append(event.loss)
        elif isinstance(event, TrainSummary):
            summary = event
    assert summary.status == "finished", summary
    return {"losses": losses, "step_tok_s": summary.tokens_per_s, "precision": precision,
            "ref_seconds": (ref_end - ref_start) if ref_start else 0.0}


def _trl_trainer(steps: int, workdir: Path, options: dict):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from dpo_engine.models import default_model_dir, load_tokenizer, resolve_model_ref

    tokenizer = load_tokenizer(resolve_model_ref("default"))
    data = Dataset.from_list([p.to_trl() for p in make_pairs(tokenizer)])
    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype="float32")
    args = DPOConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUM,
                     learning_rate=LR, beta=BETA, max_length=MAX_LENGTH, max_steps=steps, warmup_steps=0,
                     lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     seed=SEED, dataloader_num_workers=0, **options)
    precompute = args.precompute_ref_log_probs

    class Counting(DPOTrainer):
        tokens = 0

        def _compute_loss(self, model, inputs, return_outputs):
            b = inputs["input_ids"].shape[0] // 2  # rows [0, b) prompt+chosen, [b, 2b) prompt+rejected
            Counting.tokens += int(inputs["attention_mask"][:b].sum() + inputs["completion_mask"][b:].sum())
            return super()._compute_loss(model, inputs, return_outputs)

    class Timer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            Timer.seconds += time.perf_counter() - self.t
            print(f"step: {time.perf_counter() - self.t:.1f} s", file=sys.stderr, flush=True)

    started = time.perf_counter()
    trainer = Counting(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Timer()])
    setup_seconds = time.perf_counter() - started  # tokenization (+ the reference pass when precomputing)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"losses": losses, "step_tok_s": Counting.tokens / Timer.seconds,
            "ref_seconds": setup_seconds if precompute else 0.0, "setup_seconds": setup_seconds,
            "precision": f"bf16={args.bf16}, gradient_checkpointing={args.gradient_checkpointing}"
                         + (", padding_free" if args.padding_free else "")}


def run_textbook(steps: int, workdir: Path) -> dict:
    """A textbook DPO loop (the project's first one, with its bugs fixed): labels aligned with the shifted logits, prompt and
    padding masked, separate chosen/rejected forwards, reference model forward every step."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, get_scheduler

    from dpo_engine.encoding import encode_pair
    from dpo_engine.models import default_model_dir, load_tokenizer, resolve_model_ref

    torch.manual_seed(SEED)
    tokenizer = load_tokenizer(resolve_model_ref("default"))
    encoded = [encode_pair(tokenizer, p, MAX_LENGTH) for p in make_pairs(tokenizer)]
    policy = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype="float32").train()
    ref = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype="float32").eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=LR)
    sched = get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=steps)
    pad = tokenizer.pad_token_id

    def rows(batch, which):
        seqs = [list(e.prompt_ids) + list(getattr(e, which)) for e in batch]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        labels = torch.tensor([[0] * len(e.prompt_ids) + [1] * len(getattr(e, which)) + [0] * (width - len(s))
                               for e, s in zip(batch, seqs)])
        return ids, attn, labels

    def logps(model, ids, attn, mask):
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # position t predicts token t+1
        per_token = torch.gather(F.log_softmax(logits.float(), -1), 2, ids[:, 1:, None]).squeeze(2)
        return (per_token * mask[:, 1:]).sum(1)

    order = list(range(len(encoded)))
    random.Random(SEED).shuffle(order)
    losses, tokens, seconds = [], 0, 0.0
    for step in range(steps):
        batch = [encoded[order[(step * BATCH + j) % len(order)]] for j in range(BATCH)]
        t = time.perf_counter()
        c, r = rows(batch, "chosen_ids"), rows(batch, "rejected_ids")
        pc, pr = logps(policy, *c), logps(policy, *r)
        with torch.no_grad():
            rc, rr = logps(ref, *c), logps(ref, *r)
        loss = -F.logsigmoid(BETA * ((pc - rc) - (pr - rr))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        seconds += time.perf_counter() - t
        tokens += sum(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in batch)
        losses.append(loss.item())
    return {"losses": losses, "step_tok_s": tokens / seconds, "ref_seconds": 0.0}


def child(variant: str, steps: int, out: Path) -> None:
    import torch


    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as work:
        work = Path(work)
        if variant in ("ceiling", "ceiling-fp32"):
            result = run_ceiling(steps, work, "float32" if variant == "ceiling-fp32" else "auto")
        elif variant in ("ours", "ours-fp32"):
            result = run_ours(steps, work, "float32" if variant == "ours-fp32" else "auto")
        elif variant == "textbook":
            result = run_textbook(steps, work)
        else:
            result = _trl_trainer(steps, work, TRL_CONFIGS[variant])
    result.update(variant=variant, steps=steps, accum=ACCUM, peak_rss_mb=_peak_rss_mb(),
                  threads=torch.get_num_threads(), machine=machine_info())
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent


def table(results: list[dict], steps: int) -> str:
    base = next((r for r in results if r["variant"] == "trl"), None)
    pre = next((r for r in results if r["variant"] in ("trl-precompute", "trl-precompute-fp32")), None)
    fast = next((r for r in results if r["variant"] == "trl-fast"), None)
    ceilings = {"ours": "ceiling", "ours-fp32": "ceiling-fp32"}  # the bare forward+backward in the same precision
    lines = ["| variant | step tok/s | share of its ceiling | vs TRL as shipped | vs TRL precompute | vs fastest TRL "
             "| ref pass (s) | peak RSS (MB) | wall (s) | machine |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        vs = lambda other: f"{r['step_tok_s'] / other['step_tok_s']:.2f}x" if other else "-"  # noqa: E731
        ceiling = next((c for c in results if c["variant"] == ceilings.get(r["variant"])), None)
        share = f"{r['step_tok_s'] / ceiling['step_tok_s']:.0%}" if ceiling else "-"
        lines.append(f"| {r['variant']} | {r['step_tok_s']:.0f} | {share} | {vs(base)} | {vs(pre)} | {vs(fast)} "
                     f"| {r['ref_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} "
                     f"| {machine_row(r['machine']) if r.get('machine') else '-'} |")
    fp32 = next((r for r in results if r["variant"] == "ours-fp32"), None)
    lines += [f"\nPrecision / configuration of {r['variant']}: {r['precision']}" + (
        f"; {r['step_tok_s'] / fp32['step_tok_s']:.2f}x ours-fp32's tokens/s" if fp32 and r is not fp32 else "")
        for r in results if r.get("precision")]
    lines += ["", "Loss per step:", "", "| step | " + " | ".join(r["variant"] for r in results) + " |",
              "|---:|" + "---:|" * len(results)]
    for i in range(steps):
        cells = [f"{r['losses'][i]:.4f}" if i < len(r["losses"]) else "" for r in results]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    return f"{machine_row()}; uptime: {uptime()}"


def write_readme(text: str) -> None:
    """Replace (or append) the '## Training throughput' section, leaving other sections alone."""
    readme = ROOT / "bench" / "README.md"
    old = readme.read_text() if readme.exists() else "# Benchmarks\n"
    head = "## Training throughput"
    if head in old:
        before, rest = old.split(head, 1)
        after = rest[rest.find("\n## "):] if "\n## " in rest else ""
        new = before + text.rstrip() + "\n" + after
    else:
        new = old.rstrip() + "\n\n" + text.rstrip() + "\n"
    readme.write_text(new)


def main() -> None:
    global ACCUM
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--readme", action="store_true", help="record the results in bench/README.md")
    parser.add_argument("--accum", type=int, default=ACCUM, help="micro-batches per optimizer step")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ACCUM = args.accum
    if args.child:
        return child(args.child, args.steps, Path(args.out))
    before = machine()
    started = time.strftime("%Y-%m-%d %H:%M")
    results = []
    for variant in args.variants.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        t = time.perf_counter()
        subprocess.run(module_command(__spec__.name, "--child", variant, "--steps", str(args.steps),
                                      "--accum", str(args.accum), "--out", str(out)), check=True, env=module_env())
        result = json.loads(out.read_text())
        result["wall_s"] = time.perf_counter() - t
        out.unlink()
        results.append(result)
        with (RESULTS / "train_throughput.jsonl").open("a") as f:  # each as it lands
            f.write(json.dumps({**result, "run_started": started, "machine": before}) + "\n")
        print(f"{variant}: {result['step_tok_s']:.0f} tok/s, peak {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    text = (f"## Training throughput\n\n`python -m bench.train_throughput --steps {args.steps}`: {N_PAIRS} pairs, "
            f"batch {BATCH} pairs x {args.accum} micro-batches per step, max length {MAX_LENGTH}, lr {LR}, beta {BETA}, CPU, fp32 weights "
            "(the precision of each variant of ours is listed below the table).\n\n"
            f"Machine before: {before}\n\nMachine after: {machine()}\n\n{table(results, args.steps)}\n")
    print(text)
    if args.readme:
        write_readme(text)


if __name__ == "__main__":
    main()
