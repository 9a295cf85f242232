"""Simulated user: does one person's few minutes of ranking visibly change the model?

A scripted labeler who likes "shorter, direct answers" ranks k answers of the default model
to each of N starter prompts (shortest first; an empty answer last; answers cut off at
the token cap tie, since their length is unknown), the rankings go into a project file
through `Project.record_ranking` (as the Label page stores them), the model is trained
with `dpo_engine.defaults.small_data_defaults` exactly as the Train page would, and on
held-out starter prompts we measure

  * mean answer length (tokens) before vs after, with its standard error over prompts;
  * the share of held-out prompts whose answers got shorter (mean of k samples each);
  * the implicit reward's preference accuracy on the labeler's rankings of the base's
    held-out answers (pairs never trained on).

    .venv/bin/python -m bench.simulated_user --seed 0
    .venv/bin/python -m bench.simulated_user --seed 0 --reuse --lr 5e-6 --tag old-lr   # same samples

Samples are cached in --workdir (per seed), so training variants reuse them. Results are
appended as JSON lines to <workdir>/results.jsonl; `--table` prints the README table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path


import torch

from dpo_engine.defaults import small_data_defaults
from dpo_engine.encoding import collate, encode_pair
from dpo_engine.logps import sequence_logps
from dpo_engine._compat import forward_with_cache
from dpo_engine.generate import GenerationSettings, _sample, _stop_ids, encode_prompt
from dpo_engine.heldout import heldout_events
from dpo_engine.models import load_model
from dpo_engine.pairs import PreferencePair
from dpo_engine.ranking import ranking_pairs
from dpo_engine.starter import starter_prompts
from dpo_engine.store.project import open_project
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.events import StepEvent, TrainSummary
from dpo_engine.train.loop import train

HELDOUT_SPLIT_SEED = 1234  # the held-out prompts are the same for every seed: comparable "before"
HELDOUT_SAMPLE_SEED = 7  # before and after answers come from the same random stream: a paired comparison
THREADS = 1  # on this shared 2-core machine one thread sampled 4.5x faster than two (0.26 vs 1.2 s a step)


# ----------------------------------------------------------------------------- sampling
@torch.inference_mode()
def sample_batch(loaded, prompts: list[str], k: int, max_new_tokens: int, seed: int,
                 temperature: float = 0.9, top_p: float = 0.95) -> list[list[dict]]:
    """k answers to each prompt, all prompts in one left-padded batch with a KV cache (a CPU
    does 32 rows per step for little more than 4; `model.generate` was ~10x slower here).
    Sampling is the engine's (`generate._sample`) with the Label page's settings. Each
    answer: {"text", "tokens", "finished"}."""
    tok, model = loaded.tokenizer, loaded.model
    rows = [r for p in prompts for r in [encode_prompt(tok, p)] * k]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    settings = GenerationSettings(max_new_tokens, temperature, top_p)
    gen = torch.Generator().manual_seed(seed)
    stop = _stop_ids(tok, model)
    out = [[] for _ in rows]
    done = [False] * len(rows)
    past, inputs = None, ids
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -inputs.shape[1]:]
        result, past = forward_with_cache(model, past, input_ids=inputs, attention_mask=mask,
                                          position_ids=positions, logits_to_keep=1)
        nxt = _sample(result.logits[:, -1, :], settings, gen)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                if t in stop:
                    done[i] = True
                else:
                    out[i].append(t)
        if all(done):
            break
        inputs = nxt.unsqueeze(-1)
        mask = torch.cat([mask, torch.ones_like(inputs)], dim=-1)
    answers = [{"text": tok.decode(o, skip_special_tokens=True).strip(), "tokens": len(o), "finished": d}
               for o, d in zip(out, done)]
    return [answers[i * k:(i + 1) * k] for i in range(len(prompts))]


def sample_all(loaded, prompts, k, max_new_tokens, seed, batch_prompts, label) -> list[list[dict]]:
    out, t0 = [], time.perf_counter()
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        out += sample_batch(loaded, chunk, k, max_new_tokens, seed * 100_003 + start)
        print(f"  {label}: {len(out)}/{len(prompts)} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
    return out


# ----------------------------------------------------------------------------- the labeler
def simulated_ranking(answers: list[dict]) -> tuple[list[int], list[bool]]:
    """Shortest first; answers cut off at the cap tie below every finished one (their true
    length is unknown); empty answers last. Returns (indices best first, tie flags)."""
    def place(i):
        a = answers[i]
        if not a["text"].strip():
            return (2, 0)
        return (1, 0) if not a["finished"] else (0, len(a["text"]))

    order = sorted(range(len(answers)), key=place)
    ties = [i > 0 and place(order[i]) == place(order[i - 1]) for i in range(len(order))]
    return order, ties


@torch.inference_mode()
def base_nll(base, prompts, samples, batch: int = 16) -> float:
    """Mean per-token negative log-likelihood of the (non-empty) answers under the base model:
    how natural they read to the model they came from. Shorter but sensible answers stay
    near the base's own; a model that collapses into gibberish ("WHOOOO…") scores far higher.
    An answer that ended by itself is scored with its end-of-turn token, a cut-off one without."""
    encoded = [encode_pair(base.tokenizer, PreferencePair((("user", p),), a["text"], a["text"], a["finished"],
                                                          a["finished"]))
               for p, answers in zip(prompts, samples) for a in answers if a["text"].strip()]
    total, tokens = 0.0, 0
    for start in range(0, len(encoded), batch):
        rows = collate(encoded[start:start + batch], base.tokenizer.pad_token_id)
        n = rows.num_pairs  # the chosen rows: each answer once (the rejected rows are copies)
        logps, counts = sequence_logps(base.model, rows.input_ids[:n], rows.attention_mask[:n], rows.response_mask[:n])
        total -= logps.sum().item()
        tokens += counts.sum().item()
    return total / tokens


def heldout_pairs(prompts, samples) -> list[PreferencePair]:
    pairs = []
    for prompt, answers in zip(prompts, samples):
        order, ties = simulated_ranking(answers)
        for p in ranking_pairs(order, ties):
            a, b = answers[p.better]["text"], answers[p.worse]["text"]
            if not p.tied and a and b and a != b:
                pairs.append(PreferencePair((("user", prompt),), a, b))
    return pairs


# ----------------------------------------------------------------------------- stats
def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, sd / math.sqrt(n)


def length_stats(before, after) -> dict:
    per_b = [sum(a["tokens"] for a in s) / len(s) for s in before]
    per_a = [sum(a["tokens"] for a in s) / len(s) for s in after]
    mb, seb = mean_se(per_b)
    ma, sea = mean_se(per_a)
    diff_m, diff_se = mean_se([a - b for a, b in zip(per_a, per_b)])
    return {"before": mb, "before_se": seb, "after": ma, "after_se": sea, "change": ma / mb - 1,
            "diff": diff_m, "diff_se": diff_se,
            "shorter_share": sum(a < b for a, b in zip(per_a, per_b)) / len(per_b),
            "empty_after": sum(not x["text"] for s in after for x in s) / sum(len(s) for s in after),
            "finished_before": sum(x["finished"] for s in before for x in s) / sum(len(s) for s in before),
            "finished_after": sum(x["finished"] for s in after for x in s) / sum(len(s) for s in after)}


# ----------------------------------------------------------------------------- phases
def split_prompts(seed: int, n_label: int, n_heldout: int) -> tuple[list[str], list[str]]:
    prompts = starter_prompts()
    random.Random(HELDOUT_SPLIT_SEED).shuffle(prompts)
    heldout, pool = prompts[:n_heldout], prompts[n_heldout:]
    random.Random(seed).shuffle(pool)
    return pool[:n_label], heldout


def load_or_sample(args, base) -> dict:
    cache = Path(args.workdir) / f"samples-seed{args.seed}.json"
    if args.reuse and cache.exists():
        return json.loads(cache.read_text())
    label_prompts, held = split_prompts(args.seed, args.prompts, args.heldout)
    t0 = time.perf_counter()
    data = {"label_prompts": label_prompts, "heldout_prompts": held,
            "label": sample_all(base, label_prompts, args.k, args.max_new_tokens, args.seed, args.batch_prompts,
                                "label")}
    data["sampling_s"] = time.perf_counter() - t0
    before = Path(args.workdir) / f"before-{args.heldout}x{args.k}-{args.max_new_tokens}.json"
    if before.exists():  # the base's held-out answers do not depend on the seed: shared
        data["before"] = json.loads(before.read_text())
    else:
        data["before"] = sample_all(base, held, args.k, args.max_new_tokens, HELDOUT_SAMPLE_SEED,
                                    args.batch_prompts, "held-out, base")
        before.write_text(json.dumps(data["before"]))
    cache.write_text(json.dumps(data))
    return data


def label_project(path: Path, data: dict, weight_rankings: bool = False) -> dict:
    """Store the simulated rankings the way the Label page does; return counts."""
    path.unlink(missing_ok=True)
    with open_project(path) as project:
        for prompt, answers in zip(data["label_prompts"], data["label"]):
            pid = project.add_prompt(prompt, "starter")
            ids = [project.add_response(pid, a["text"], "default", finished=a["finished"]) for a in answers]
            order, ties = simulated_ranking(answers)
            project.record_ranking(pid, [ids[i] for i in order], ties)
        train, held = project.run_pairs(weight_rankings)
        comparisons = project.counts()["comparisons"]
    return {"train": train, "held": held, "comparisons": comparisons}


def train_config(args, n_pairs: int, out: Path) -> TrainConfig:
    d = small_data_defaults(n_pairs)
    config = TrainConfig(output_dir=str(out), beta=d.beta, lr=d.lr, epochs=d.epochs, warmup_ratio=d.warmup_ratio,
                         batch_size=d.batch_size, grad_accum=d.grad_accum, max_length=256, eval_every=0,
                         save_every=0, seed=args.seed, device="cpu")
    overrides = {k: getattr(args, k) for k in ("lr", "beta", "epochs") if getattr(args, k) is not None}
    return replace(config, **overrides)


def run_training(config: TrainConfig, pairs, held) -> tuple[TrainSummary, list]:
    shutil.rmtree(config.output_dir, ignore_errors=True)
    summary, losses = None, []
    for ev in train(config, pairs, held or None):
        if isinstance(ev, StepEvent):
            losses.append((ev.step, ev.loss, ev.rewards_accuracies))
            if ev.step % 5 == 0 or ev.step == ev.total_steps:
                print(f"  step {ev.step}/{ev.total_steps} loss {ev.loss:.3f} acc {ev.rewards_accuracies:.2f} "
                      f"{ev.tokens_per_s:.0f} tok/s", flush=True)
        elif isinstance(ev, TrainSummary):
            summary = ev
    return summary, losses


def score_heldout(trained, base, pairs, beta):
    """Implicit-reward accuracy etc. on the labeler's held-out pairs (None when there are none)."""
    if not pairs:
        return None
    gen = heldout_events(trained.model, base.model, base.tokenizer, pairs, beta=beta)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def table(path: Path) -> str:
    """The README table from results.jsonl: one row per run."""
    lines = ["| seed | run | cut-off answers | lr | β | epochs | ranking weights | pairs (comparisons) | steps "
             "| mean tokens before ± SE | after ± SE | change "
             "| held-out prompts shorter | implicit-reward acc. (held-out pairs) | ended by itself before → after "
             "| base NLL/token before → after | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        L = r["length"]
        acc = f"{r['reward_accuracy']:.2f} ({r['heldout_pairs']})" if r["reward_accuracy"] is not None else "n/a"
        cut = "no end token" if r.get("cut_off_open", True) else "end token (old)"
        weights = "1/pairs" if r.get("weight_rankings") else "1 each"
        n = r.get("naturalness")
        nll = f"{n['before']:.2f} → {n['after']:.2f}" if n else "n/a"
        lines.append(f"| {r['seed']} | {r['tag']} | {cut} | {r['lr']:g} | {r['beta']:g} | {r['epochs']} | {weights} "
                     f"| {r['pairs']} ({r['comparisons']}) | {r['steps']} "
                     f"| {L['before']:.1f} ± {L['before_se']:.1f} | {L['after']:.1f} ± {L['after_se']:.1f} "
                     f"| {100 * L['change']:+.0f}% | {100 * L['shorter_share']:.0f}% | {acc} "
                     f"| {100 * L['finished_before']:.0f}% → {100 * L['finished_after']:.0f}% "
                     f"| {nll} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-prompts", type=int, default=8, help="prompts sampled together (x k rows)")
    ap.add_argument("--workdir", default="/tmp/dpo-sim-user")
    ap.add_argument("--reuse", action="store_true", help="reuse this seed's cached samples")
    ap.add_argument("--lr", type=float, default=None, help="override the default (a variant)")
    ap.add_argument("--beta", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--weight-rankings", action="store_true",
                    help="each ranking counts as one verdict (its pairs weigh 1/pairs)")
    ap.add_argument("--tag", default="defaults")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--table", action="store_true", help="print the README table of <workdir>/results.jsonl")
    ap.add_argument("--rescore", action="store_true",
                    help="no training: add the naturalness measure to the --seed/--tag row from its saved model")
    args = ap.parse_args(argv)
    if args.table:
        print(table(Path(args.workdir) / "results.jsonl"))
        return 0
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = load_model("default")
    data = load_or_sample(args, base)
    if args.rescore:
        return rescore(args, work, base, data)
    labeled = label_project(work / f"project-seed{args.seed}.sqlite", data, args.weight_rankings)
    n_pairs = len(labeled["train"]) + len(labeled["held"])
    config = train_config(args, n_pairs, work / f"run-seed{args.seed}-{args.tag}")
    print(f"seed {args.seed}: {labeled['comparisons']} comparisons, {n_pairs} pairs; lr {config.lr} "
          f"beta {config.beta} epochs {config.epochs}", flush=True)
    t_train = time.perf_counter()
    summary, losses = run_training(config, labeled["train"], labeled["held"])
    train_s = time.perf_counter() - t_train
    trained = load_model(summary.checkpoint)
    label_prompts, held_prompts = data["label_prompts"], data["heldout_prompts"]
    t_after = time.perf_counter()
    after = sample_all(trained, held_prompts, args.k, args.max_new_tokens, HELDOUT_SAMPLE_SEED, args.batch_prompts,
                       "held-out, trained")
    after_s = time.perf_counter() - t_after
    held_summary = score_heldout(trained, base, heldout_pairs(held_prompts, data["before"]), config.beta)
    (work / f"after-seed{args.seed}-{args.tag}.json").write_text(json.dumps(after))
    result = {
        "seed": args.seed, "tag": args.tag, "k": args.k, "prompts": len(label_prompts),
        "heldout_prompts": len(held_prompts), "max_new_tokens": args.max_new_tokens,
        "pairs": n_pairs, "comparisons": labeled["comparisons"], "steps": summary.step, "status": summary.status,
        "lr": config.lr, "beta": config.beta, "epochs": config.epochs, "batch": config.batch_size * config.grad_accum,
        "weight_rankings": args.weight_rankings,
        "cut_off_open": True,  # answers cut off at the cap are trained without an end-of-turn token
        "length": length_stats(data["before"], after),
        "naturalness": {"before": base_nll(base, held_prompts, data["before"]),
                        "after": base_nll(base, held_prompts, after)},
        "reward_accuracy": held_summary and held_summary.reward_accuracy,
        "heldout_pairs": held_summary.pairs if held_summary else 0,
        "base_accuracy": held_summary and held_summary.base_accuracy,
        "trained_accuracy": held_summary and held_summary.trained_accuracy,
        "final_train_loss": summary.final_loss, "sampling_s": data.get("sampling_s"), "train_s": train_s,
        "after_sampling_s": after_s, "total_s": time.perf_counter() - t0,
        "examples": [{"prompt": p, "before": b[0]["text"], "after": a[0]["text"]}
                     for p, b, a in list(zip(held_prompts, data["before"], after))[:3]],
    }
    with open(work / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=1))
    return 0


def rescore(args, work: Path, base, data) -> int:
    """Add `naturalness` to an earlier row (same seed and tag) from the model it saved: the
    held-out answers are sampled again with the same seed (the row's lengths are checked
    against them, so it is the same model and the same answers)."""
    path = work / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    row = next(r for r in rows if r["seed"] == args.seed and r["tag"] == args.tag)
    held_prompts = data["heldout_prompts"]
    saved = work / f"after-seed{args.seed}-{args.tag}.json"
    if saved.exists():
        after = json.loads(saved.read_text())
    else:
        trained = load_model(str(work / f"run-seed{args.seed}-{args.tag}"))
        after = sample_all(trained, held_prompts, args.k, args.max_new_tokens, HELDOUT_SAMPLE_SEED,
                           args.batch_prompts, "held-out, trained (again)")
        saved.write_text(json.dumps(after))
    again = length_stats(data["before"], after)["after"]
    if abs(again - row["length"]["after"]) > 1e-6:
        print(f"warning: resampled mean length {again:.2f} differs from the row's {row['length']['after']:.2f}")
    row["naturalness"] = {"before": base_nll(base, held_prompts, data["before"]),
                          "after": base_nll(base, held_prompts, after), "resampled_after_tokens": again}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps(row["naturalness"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
