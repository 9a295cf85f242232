"""Sampling in bf16 vs fp32: speed and whether the answers stay the same.

Precision auto samples in bf16 on a CPU that runs it natively, so the Label and Compare
pages write their answers with bf16 weights. This measures, side by side in one process on
the default model: tokens/s of `generate` (a pair: 2 answers, greedy, fixed token budget),
whether the greedy answers equal fp32's token for token (and where they first differ), and
the mean per-token NLL of each precision's answers scored under the fp32 model (a quality
proxy: bf16 answers should not be less likely under fp32 than fp32's own).

    .venv/bin/python -m bench.sampling_precision --tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.common import RESULTS

PROMPTS = [
    "Give me a tip for staying focused while studying.",
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "What should I cook tonight with rice and eggs?",
]


def nll_under(model, tokenizer, prompt: str, answer_ids: list[int]) -> float:
    """Mean negative log-likelihood per answer token under `model` (no grad)."""
    import torch

    from dpo_engine.generate import encode_prompt

    prompt_ids = encode_prompt(tokenizer, prompt)
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer_ids)[:, None])
    return float(-logp.mean())


def main() -> None:
    import torch

    from dpo_engine.devices import pick_device
    from dpo_engine.generate import GenerationSettings, generate
    from dpo_engine.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS / "sampling_precision.jsonl"))
    args = parser.parse_args()
    models = {dtype: load_model("default", pick_device("cpu", dtype)) for dtype in ("float32", "bfloat16")}
    settings = GenerationSettings(max_new_tokens=args.tokens, temperature=0)
    rows = []
    for prompt in PROMPTS:
        row = {"prompt": prompt[:40]}
        answers = {}
        for dtype, loaded in models.items():
            start = time.perf_counter()
            result = generate(loaded.model, loaded.tokenizer, prompt, n=2, settings=settings)
            seconds = time.perf_counter() - start
            ids = loaded.tokenizer(result.texts[0], add_special_tokens=False)["input_ids"]
            answers[dtype] = ids
            row[f"{dtype}_tok_s"] = round(sum(result.token_counts) / seconds, 1)
        a, b = answers["float32"], answers["bfloat16"]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        row["greedy_tokens_equal"] = f"{same}/{max(len(a), len(b))}"
        fp32 = models["float32"]
        row["nll_fp32_answer"] = round(nll_under(fp32.model, fp32.tokenizer, prompt, a), 3)
        row["nll_bf16_answer"] = round(nll_under(fp32.model, fp32.tokenizer, prompt, b), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    speed = {d: sum(r[f"{d}_tok_s"] for r in rows) / len(rows) for d in models}
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "tokens": args.tokens, "threads": torch.get_num_threads(),
               "load": round(os.getloadavg()[0], 2), "fp32_tok_s": round(speed["float32"], 1),
               "bf16_tok_s": round(speed["bfloat16"], 1), "ratio": round(speed["bfloat16"] / speed["float32"], 2),
               "rows": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
