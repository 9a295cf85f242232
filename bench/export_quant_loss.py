"""What each GGUF weight type costs in log-probs: the default model (SmolLM2-135M-Instruct) exported as
f16, q8_0, q4_1 and q4_0, each read back by transformers' GGUF loader, scored on the source model's own
greedy answers (48 tokens) to the first 12 starter prompts. Per answer token: |log p_gguf - log p_source|;
the table gives its mean and 99th percentile, the file's size, and how many of the source's greedy
tokens the GGUF model reproduces when it decodes on its own (teacher-forced agreement of the argmax).

    python -m bench.export_quant_loss                    # the default model as shipped
    python -m bench.export_quant_loss --perturb 0.002     # its weights + N(0, 0.002^2), as after training

The default model ships as a Q4_1 GGUF: its dequantised weights sit on Q4_1's grid, so a q4_1 export
gives them back exactly. A trained model's weights have left that grid; `--perturb` moves them off
it the way the eval benchmark's policy does (bench/eval_throughput.py), for a fair 4-bit figure.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from bench.common import markdown_table


@torch.no_grad()
def token_logps(model, ids: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the answer tokens (positions prompt_len..end) and the model's argmax there."""
    logits = model(ids).logits[0, prompt_len - 1:-1].float()
    logp = torch.log_softmax(logits, -1)
    answer = ids[0, prompt_len:]
    return logp.gather(1, answer[:, None])[:, 0], logits.argmax(-1)


def main() -> None:
    import argparse

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_engine.export import export_model
    from dpo_engine.models import default_model_dir
    from dpo_engine.starter import starter_prompts

    ap = argparse.ArgumentParser()
    ap.add_argument("--perturb", type=float, default=0.0, help="std of Gaussian noise added to every weight")
    args = ap.parse_args()
    folder = default_model_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.set_num_threads(2)
    scratch = tempfile.TemporaryDirectory()
    if args.perturb:
        torch.manual_seed(0)
        with torch.no_grad():
            for param in source.parameters():
                param.add_(torch.randn_like(param) * args.perturb)
        folder = Path(scratch.name) / "perturbed"
        source.save_pretrained(folder)
        tok.save_pretrained(folder)
    samples = []
    for prompt in starter_prompts()[:12]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        out = source.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, min_new_tokens=48,
                              do_sample=False, pad_token_id=tok.pad_token_id or 0)
        samples.append((out, ids.shape[1]))
    reference = [token_logps(source, ids, n) for ids, n in samples]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for quant in ("f16", "q8_0", "q4_1", "q4_0"):
            path = Path(work) / f"{quant}.gguf"
            size = export_model(str(folder), "gguf", path, quant=quant).size_bytes
            model = AutoModelForCausalLM.from_pretrained(work, gguf_file=path.name, dtype=torch.float32).eval()
            deltas, agree, total = [], 0, 0
            for (ids, n), (ref_logp, ref_top) in zip(samples, reference):
                logp, top = token_logps(model, ids, n)
                deltas.append((logp - ref_logp).abs())
                agree += int((top == ref_top).sum())
                total += len(top)
            d = torch.cat(deltas)
            rows.append({"quant": quant, "perturb": args.perturb, "bytes": size, "mean_abs_dlogp": round(float(d.mean()), 4),
                         "p99_abs_dlogp": round(float(d.quantile(0.99)), 4), "argmax_agree": round(agree / total, 4),
                         "tokens": total})
            print(json.dumps(rows[-1]), flush=True)
            del model
            path.unlink()
    print(markdown_table(
        ["GGUF type", "file (MB)", "mean abs Δ log p per token", "99th percentile", "same argmax"], "lrrrr",
        [[r["quant"], f"{r['bytes'] / 1e6:.0f}", f"{r['mean_abs_dlogp']:.4f}", f"{r['p99_abs_dlogp']:.4f}",
          f"{r['argmax_agree']:.1%}"] for r in rows]))


if __name__ == "__main__":
    main()
