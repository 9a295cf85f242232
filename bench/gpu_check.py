"""One short check on a CUDA machine (run by hand through the device tool; CI has no GPU).

Builds random Llama models offline (the byte tokenizer of tests/tiny_model.py), then:
device/precision choice; DPO training with bf16 autocast (loss falls, checkpoint loads);
LoRA; streaming generation; CPU-vs-CUDA fp32 log-prob agreement; and the trained tokens/s
of a SmolLM2-shaped random model (49,152 vocabulary, 30 layers, 576 wide). Writes
gpu_check.json into $OUT (or the current folder).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from dpo_engine.devices import pick_device
from dpo_engine.pairs import conversation
from dpo_engine.train.config import LoraSettings, TrainConfig
from dpo_engine.train.loop import run_training
from tests.tiny_model import build_tiny_model

OUT = Path(os.environ.get("OUT", "."))
results: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}


def pairs(n: int) -> list:
    """A learnable preference: 'yes' answers beat 'no' answers."""
    return [conversation(f"Question {i}: answer briefly.", "yes " * (2 + i % 5), "no " * (2 + i % 7))
            for i in range(n)]


def train(folder: Path, out: Path, **kw) -> dict:
    events = []
    cfg = TrainConfig(output_dir=str(out), model=str(folder), max_length=256, eval_fraction=0.1, eval_every=0,
                      seed=0, **kw)
    t = time.perf_counter()
    summary = run_training(cfg, pairs(64), on_event=events.append)
    steps = [e for e in events if type(e).__name__ == "StepEvent"]
    return {"status": summary.status, "reason": summary.reason, "seconds": round(time.perf_counter() - t, 2),
            "first_loss": steps[0].loss if steps else None, "last_loss": steps[-1].loss if steps else None,
            "last_acc": steps[-1].rewards_accuracies if steps else None,
            "tokens_per_s": summary.tokens_per_s, "checkpoint": summary.checkpoint}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, nothing else
    choice = pick_device()
    results["device"] = {"device": choice.device, "dtype": choice.dtype, "describe": choice.describe()}
    tmp = Path(tempfile.mkdtemp())
    tiny = build_tiny_model(tmp / "tiny", seed=0, hidden=128, layers=4)

    results["train_bf16"] = train(tiny, tmp / "run", lr=1e-3, max_steps=30, batch_size=4, grad_accum=1)
    from dpo_engine.models import load_model
    loaded = load_model(results["train_bf16"]["checkpoint"])
    results["checkpoint_loads_on"] = str(next(loaded.model.parameters()).device)

    results["train_lora"] = train(tiny, tmp / "lora", lr=5e-3, max_steps=10, batch_size=4, grad_accum=1,
                                  lora=LoraSettings(rank=8, alpha=16), merge_lora=True)

    from dpo_engine.generate import GenerationSettings, generate
    g = generate(loaded.model, loaded.tokenizer, "hello", n=2, settings=GenerationSettings(24, 1.0, 0.95, 0))
    results["generate"] = {"token_counts": g.token_counts, "nonempty": [bool(t) for t in g.texts]}

    # fp32 log-probs on the CPU and on CUDA agree
    from dpo_engine.encoding import collate, encode_pair
    from dpo_engine.logps import batch_logps
    enc = [encode_pair(loaded.tokenizer, p, 256) for p in pairs(6)]
    batch = collate(enc, loaded.tokenizer.pad_token_id)
    cpu = load_model(str(tiny), pick_device("cpu"))
    gpu = load_model(str(tiny), pick_device("cuda", "float32"))
    with torch.no_grad():
        a = batch_logps(cpu.model, batch).chosen_logps
        b = batch_logps(gpu.model, batch.to(gpu.device.torch_device)).chosen_logps.cpu()
    results["logps_cpu_vs_cuda_max_rel"] = float(((a - b).abs() / a.abs()).max())

    # a SmolLM2-shaped random model: throughput of the real trainer with bf16 autocast
    from transformers import LlamaConfig, LlamaForCausalLM
    from tests.tiny_model import build_tokenizer
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    big = tmp / "smol-shaped"
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(big, safe_serialization=True)
    tok.save_pretrained(big)
    for bs in (2, 8):
        results[f"smol_shaped_bs{bs}"] = train(big, tmp / f"smol{bs}", lr=5e-6, max_steps=12, batch_size=bs,
                                               grad_accum=1)
    results["peak_cuda_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    for k, v in results.items():
        print(k, v)
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
