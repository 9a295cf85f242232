"""A released model, from its GGUF and back: what a person who brought a model from Ollama or LM Studio
gets when DPO Studio exports it again.

The GGUF is converted as the app does (transformers dequantises it into a safetensors folder in the
cache), exported with `dpo-engine export-model --format gguf` (f16), and the two GGUF files compared:

  tokenizer   every token, its type, its score, the special ids and the chat template, against the
              original file's (what llama.cpp tokenises with)
  metadata    each key the original sets under the architecture's prefix, where ours differs
  model       transformers reads our file back: logits against the converted model's, 16 greedy tokens

    python -m bench.export_roundtrip_gguf PATH.gguf [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch


def fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except Exception:  # a key whose type the reader cannot render: skip it
            continue
    return out


def compare_tokenizers(a: dict, b: dict) -> dict:
    keys = sorted(k for k in set(a) | set(b) if k.startswith("tokenizer."))
    same = {k: a.get(k) == b.get(k) for k in keys}
    tokens_a, tokens_b = a.get("tokenizer.ggml.tokens", []), b.get("tokenizer.ggml.tokens", [])
    first = next((i for i, (x, y) in enumerate(zip(tokens_a, tokens_b)) if x != y), None)
    return {"equal": {k: v for k, v in same.items() if v}, "differ": {k: (str(a.get(k))[:80], str(b.get(k))[:80])
            for k, v in same.items() if not v and k not in ("tokenizer.ggml.tokens",)},
            "tokens": {"original": len(tokens_a), "ours": len(tokens_b), "first_difference": first}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dpo-studio-roundtrip-cache")
    args = ap.parse_args()
    os.environ["DPO_STUDIO_CACHE"] = str(args.cache)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_engine.export import export_model
    from dpo_engine.models import resolve_model_ref

    folder = Path(resolve_model_ref(str(args.gguf)).path)
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "ours.gguf"
        result = export_model(str(folder), "gguf", out)
        original, ours = fields(args.gguf), fields(out)
        arch = original["general.architecture"]
        meta = {k: (original[k], ours.get(k)) for k in original
                if k.startswith(arch + ".") and original[k] != ours.get(k)}
        report = {"model": args.gguf.name, "arch": arch, "bytes": result.size_bytes,
                  "tokenizer": compare_tokenizers(original, ours), "metadata_differences": meta}
        print(json.dumps(report, indent=1, default=str), flush=True)
        source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        loaded = AutoModelForCausalLM.from_pretrained(work, gguf_file=out.name, config=source.config,
                                                      dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        prompt = "Write a short poem about the sea."
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        else:  # a base model: plain text, with what the tokenizer adds (BOS)
            ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            diff = (source(ids).logits - loaded(ids).logits).abs().max().item()
            greedy = [m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
                      [0, ids.shape[1]:].tolist() for m in (source, loaded)]
        report["model_check"] = {"max_logit_diff": round(diff, 4), "greedy_equal": greedy[0] == greedy[1],
                                 "greedy_tokens": len(greedy[0])}
    print(json.dumps(report["model_check"]))


if __name__ == "__main__":
    main()
