"""Does llama.cpp itself read DPO Studio's GGUF export as transformers computes the model?

Exports MODEL (default: the default model) as f16 and q8_0 GGUF files, loads each with
llama.cpp (`llama-cpp-python`, which builds from source: not part of `make test`), and
compares with the source model in transformers, on the same chat-templated prompts:

  tokens   llama.cpp's tokenisation of the templated prompt (special tokens parsed) against
           the source tokenizer's ids
  greedy   32 greedy tokens from llama.cpp's own logits against transformers' greedy tokens
           (tokens that agree before the first difference)
  logits   the largest |difference| of the next-token logits after the prompt

    pip install llama-cpp-python==0.3.36        # into any venv; about 5 minutes of compiling
    .venv/bin/python -m bench.export_llama_cpp [--model default] [--tokens 32] [--json out.json]
    .venv/bin/python -m bench.export_llama_cpp --family gemma3   # a tiny random model of a family
                                                                 # (tests/test_export_families.py CASES)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


PROMPTS = ["Give me a tip for staying focused while studying.", "Write a short poem about the sea.",
           "What is 12 + 30? Answer with the number.", "Explain what a hash table is in two sentences."]


def hf_side(folder, prompts: list[str], n: int) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = []
    for prompt in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].numpy()
            gen = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):].tolist()
        out.append({"text": text, "ids": ids, "logits": logits, "greedy": gen, "eos": tok.eos_token_id})
    return out


def llama_side(gguf: Path, ref: list[dict], n: int) -> list[dict]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=2, logits_all=True, verbose=False)
    rows = []
    for r in ref:
        ids = llm.tokenize(r["text"].encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(r["ids"])  # the source's ids, so logits compare even if tokenisation differed
        logits = np.array(llm.scores[llm.n_tokens - 1])
        gen = []
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            gen.append(token)
            if token == r["eos"]:
                break
            llm.eval([token])
        agree = next((i for i, (a, b) in enumerate(zip(gen, r["greedy"])) if a != b), min(len(gen), len(r["greedy"])))
        rows.append({"tokens_equal": ids == r["ids"], "greedy_agree": agree, "greedy_len": len(r["greedy"]),
                     "logit_max_diff": float(np.abs(logits - r["logits"]).max()),
                     "logit_scale": float(np.abs(r["logits"]).max())})
    return rows


def build_family(name: str, folder: Path) -> str:
    """The tiny random model of family `name` the unit tests export, saved with its tokenizer."""
    from tests.export_cases import case_model

    model, tok = case_model(name)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--family", default=None, help="build and check the tiny random model of this family "
                        "(llama2, llama3.2, mistral, qwen2.5-yarn, gemma2, gemma3, phi3, phi3.5) instead of --model")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from dpo_engine.export import export_model
    from dpo_engine.export.source import find_source

    if args.family:
        args.model = build_family(args.family, Path(tempfile.mkdtemp(prefix="dpo-studio-family-")))
    source = find_source(args.model)
    ref = hf_side(str(source.folder), PROMPTS, args.tokens)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for quant in ("f16", "q8_0"):
            path = Path(work) / f"model-{quant}.gguf"
            start = time.perf_counter()
            export_model(args.model, "gguf", path, quant=quant)
            seconds = time.perf_counter() - start
            rows = llama_side(path, ref, args.tokens)
            results[quant] = {"export_s": round(seconds, 1), "size_mb": round(path.stat().st_size / 1e6, 1), "rows": rows}
    print("| quant | size | export | prompt | tokens equal | greedy tokens agreeing | max logit diff (scale) |")
    print("|---|---|---|---|---|---|---|")
    for quant, res in results.items():
        for prompt, row in zip(PROMPTS, res["rows"]):
            print(f"| {quant} | {res['size_mb']} MB | {res['export_s']} s | {prompt[:32]}… | {row['tokens_equal']} | "
                  f"{row['greedy_agree']}/{row['greedy_len']} | {row['logit_max_diff']:.3f} ({row['logit_scale']:.1f}) |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
