"""The LM head in chunks vs all logits at once: peak memory and time of one LoRA DPO step.

    .venv/bin/python -m bench.chunked_head                  # default model + 128k and 256k vocabularies
    .venv/bin/python -m bench.chunked_head --dtype float32  # without bf16 autocast
    .venv/bin/python -m bench.chunked_head --interleaved 3  # step time, plain and chunked alternating

One step = the shared-prompt log-probs of 4 pairs (prompt ~40 tokens, answers ~150) with
gradients, a DPO sigmoid loss against fixed reference log-probs, and the backward, on a
LoRA model (rank 16 on every linear of each block, frozen base in fp32 weights, the forward
under `--dtype` autocast). Shapes:

    default   SmolLM2-135M-Instruct itself (vocab 49,152, hidden 576, 30 layers)
    vocab128k the SmolLM2 block (hidden 576, ffn 1536) x 4 layers, vocab 128,256 (Llama 3's)
    vocab256k the same, vocab 262,144 (Gemma 3's)

"plain" runs the head on all scored tokens at once, "chunked" always in chunks of
`logps.HEAD_CHUNK_BYTES` (the shipped rule keeps up to `HEAD_WHOLE_BYTES` of logits whole). Each (shape, variant) runs in its own subprocess,
plain and chunked interleaved, `--repeats` times; memory is the step's peak RSS above the
RSS before it (Linux: /proc/self/clear_refs resets the peak), time the median of TIMED
steps after a warm-up step. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import time

from bench.common import module_command, module_env, proc_status_bytes


SHAPES = {"default": None, "vocab128k": 128_256, "vocab256k": 262_144}
PAIRS, PROMPT, ANSWER = 4, 40, 150
TIMED = 1  # timed steps after the warm-up: memory is the same every step (a loaded machine made more too slow)


def build(shape: str):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dpo_engine.models import default_model_dir

    if SHAPES[shape] is None:
        return AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32)
    base = LlamaConfig.from_pretrained(default_model_dir())
    config = LlamaConfig(vocab_size=SHAPES[shape], hidden_size=base.hidden_size, intermediate_size=base.intermediate_size,
                         num_hidden_layers=4, num_attention_heads=base.num_attention_heads,
                         num_key_value_heads=base.num_key_value_heads, tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def lora_model_and_pairs(shape: str):
    """The model of `shape` with a rank-16 LoRA on every projection (base frozen, train mode) and
    PAIRS random pairs over its vocabulary, the same every call: (model, pairs)."""
    from peft import LoraConfig, get_peft_model

    from dpo_engine.encoding import EncodedPair

    model = build(shape)
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])).train()
    vocab = model.config.vocab_size
    rng = random.Random(0)
    pairs = [EncodedPair(tuple(rng.randrange(vocab) for _ in range(PROMPT)),
                         tuple(rng.randrange(vocab) for _ in range(ANSWER + rng.randrange(-10, 10))),
                         tuple(rng.randrange(vocab) for _ in range(ANSWER + rng.randrange(-10, 10))))
             for _ in range(PAIRS)]
    return model, pairs


def child(shape: str, variant: str, dtype: str) -> dict:
    import torch

    from dpo_engine import logps
    from dpo_engine.losses import LossParams, sigmoid
    from dpo_engine.shared_prompt import shared_prompt_logps

    # plain: every logit at once, as before chunking; chunked: always in HEAD_CHUNK_BYTES chunks (the shipped
    # rule keeps up to HEAD_WHOLE_BYTES of logits whole, which would make the default model's step plain)
    logps.HEAD_WHOLE_BYTES = 1 << 60 if variant == "plain" else 0
    model, pairs = lora_model_and_pairs(shape)
    vocab = model.config.vocab_size
    ref = torch.full((PAIRS,), -1500.0)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16"
                else torch.autocast("cpu", enabled=False))

    def step():
        with autocast:
            lp = shared_prompt_logps(model, pairs, 0)
        out = sigmoid(lp.chosen_logps, lp.rejected_logps, ref, ref, params=LossParams(beta=0.1))
        out.losses.mean().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, allocator pools
    times, peaks = [], []
    for _ in range(TIMED):
        before = proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        peaks.append(proc_status_bytes("VmHWM") - before)
    tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return {"shape": shape, "variant": variant, "dtype": dtype, "vocab": vocab, "scored_tokens": tokens,
            "chunk_tokens": None if variant == "plain" else logps.head_chunk_tokens(vocab), "step_s": round(statistics.median(times), 3),
            "step_peak_mb": round(max(peaks) / 2**20), "torch_threads": torch.get_num_threads()}


def child_interleaved(shape: str, dtype: str, rounds: int) -> dict:
    """Step time only: plain and chunked steps alternate in one process, so both see the same
    machine (on a shared machine separate processes met different loads)."""
    import torch

    from dpo_engine import logps
    from dpo_engine.losses import LossParams, sigmoid
    from dpo_engine.shared_prompt import shared_prompt_logps

    model, pairs = lora_model_and_pairs(shape)
    ref = torch.full((PAIRS,), -1500.0)
    times = {"plain": [], "chunked": []}
    for i in range(2 * rounds + 2):
        variant = ("plain", "chunked")[i % 2]
        logps.HEAD_WHOLE_BYTES = 1 << 60 if variant == "plain" else 0
        start = time.perf_counter()
        with (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cpu", enabled=False)):
            lp = shared_prompt_logps(model, pairs, 0)
        sigmoid(lp.chosen_logps, lp.rejected_logps, ref, ref, params=LossParams(beta=0.1)).losses.mean().backward()
        model.zero_grad(set_to_none=True)
        if i >= 2:  # the first of each is a warm-up
            times[variant].append(time.perf_counter() - start)
    plain, chunked = statistics.median(times["plain"]), statistics.median(times["chunked"])
    return {"shape": shape, "dtype": dtype, "interleaved_rounds": rounds, "plain_step_s": round(plain, 2),
            "chunked_step_s": round(chunked, 2), "chunked_over_plain": round(chunked / plain, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="time only: plain and chunked steps alternating in one process, ROUNDS each")
    args = ap.parse_args()
    if args.interleaved:
        for shape in args.shapes.split(","):
            row = child_interleaved(shape, args.dtype, args.interleaved)
            row["cpu"] = platform.processor() or platform.machine()
            print(json.dumps(row), flush=True)
        return
    if args.child:
        print(json.dumps(child(*args.child, args.dtype)))
        return
    cpu = platform.processor() or platform.machine()
    for _ in range(args.repeats):
        for shape in args.shapes.split(","):
            for variant in ("plain", "chunked"):
                proc = subprocess.run(module_command(__spec__.name, "--child", shape, variant, "--dtype", args.dtype),
                                      capture_output=True, text=True, env=module_env())
                if proc.returncode != 0:
                    print(json.dumps({"shape": shape, "variant": variant, "error": proc.stderr.strip()[-600:]}))
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["cpu"] = cpu
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
