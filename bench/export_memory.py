"""Peak memory of a GGUF export of a 1B-shaped model: the model loaded whole in fp32 and its state
dict written (how `export_model` worked before) against its tensors streamed one at a time from
safetensors (`dpo_engine.export.tensors.FolderTensors`, how it works now).

The model has Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192,
vocabulary 128,256, tied embeddings, llama3 rope scaling) with random bf16 weights, saved once as
one safetensors file (2.5 GB) with a small byte-level BPE tokenizer (the GGUF pads the vocabulary).
Each export runs in its own process; a thread samples the process's anonymous memory (RssAnon:
what the process allocated) every 20 ms, and the kernel's peak RSS (VmHWM) is read at the end,
which also counts the pages of the safetensors file mapped in while reading (file-backed, dropped
by the kernel under pressure, shared with the page cache).

    python -m bench.export_memory                 # both ways, f16, then q8_0 streamed
    python -m bench.export_memory --readme        # also print the README table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import markdown_table, module_command, module_env, proc_status_bytes

LLAMA_3_2_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def build(folder: Path) -> None:
    """The 1B-shaped model with random bf16 weights, tensor by tensor (never a model object)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from tests.tiny_model import build_bpe_tokenizer

    config = LlamaConfig(**LLAMA_3_2_1B, torch_dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]
    h, f, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) * 0.02 if len(s) == 2 else torch.ones(s)).to(torch.bfloat16)
             for k, s in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    build_bpe_tokenizer().save_pretrained(folder)


def child(mode: str, model: Path, out: Path, quant: str) -> dict:
    peak = {"anon": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], proc_status_bytes("RssAnon"))
            time.sleep(0.02)

    from dpo_engine.export.gguf_file import write_gguf
    from dpo_engine.export.source import find_source, load_merged_model, load_tokenizer_for_export, open_tensors
    from dpo_engine.export.tensors import ModelTensors

    after_imports = proc_status_bytes("RssAnon")
    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    source = find_source(str(model))
    if mode == "loaded":  # the model whole, in fp32, as before
        loaded = load_merged_model(source)
        tensors, config = ModelTensors(loaded), loaded.config
    else:
        tensors, config = open_tensors(source)
    size = write_gguf(tensors, config, load_tokenizer_for_export(source), out, quant)
    seconds = time.perf_counter() - start
    stop.set()
    return {"mode": mode, "quant": quant, "seconds": round(seconds, 1), "gguf_bytes": size,
            "peak_anon_bytes": max(peak["anon"], proc_status_bytes("RssAnon")), "after_imports_anon_bytes": after_imports,
            "peak_rss_bytes": proc_status_bytes("VmHWM")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dpo-studio-export-1b")
    ap.add_argument("--child", choices=["loaded", "streamed"])
    ap.add_argument("--quant", default="f16")
    ap.add_argument("--runs", default="loaded:f16,streamed:f16,streamed:q8_0")
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    model = args.work / "model"
    if args.child:
        print(json.dumps(child(args.child, model, args.work / f"{args.child}-{args.quant}.gguf", args.quant)))
        return
    if not (model / "model.safetensors").is_file():
        print(f"building the 1B-shaped model in {model} ...", file=sys.stderr)
        build(model)
    rows = []
    for run in args.runs.split(","):
        mode, quant = run.split(":")
        done = subprocess.run(module_command(__spec__.name, "--work", str(args.work), "--child", mode, "--quant", quant),
                              capture_output=True, text=True, env=module_env())
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        (args.work / f"{mode}-{quant}.gguf").unlink(missing_ok=True)
    if args.readme:
        gb = 1e9
        print(markdown_table(
            ["export", "peak RSS (GB)", "peak anonymous (GB)", "of which imports", "seconds", "GGUF (GB)"], "lrrrrr",
            [[f"{r['mode']} {r['quant']}", f"{r['peak_rss_bytes'] / gb:.2f}", f"{r['peak_anon_bytes'] / gb:.2f}",
              f"{r['after_imports_anon_bytes'] / gb:.2f}", r["seconds"], f"{r['gguf_bytes'] / gb:.2f}"] for r in rows]))


if __name__ == "__main__":
    main()
