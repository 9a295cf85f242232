"""Compare at real size: the memory of comparing a LoRA run's checkpoint with its base, the checkpoint
loaded as a model of its own (two copies of the base) and as a view over the base (one copy).

    .venv/bin/python -m bench.compare_memory                  # Llama-3.2-1B shape, bf16 window, fp32 scores
    .venv/bin/python -m bench.compare_memory --parts window   # the window's bf16 copies only
    .venv/bin/python -m bench.compare_memory --model smoke    # a 4-layer Llama: checks this script in a minute

The base is bench/real_size.py's Llama-3.2-1B shape (random bf16 weights, built once). The checkpoint
is made once beside it as the trainer saves a LoRA run with merge_lora, by the trainer's own
`train.model.write_model_files`: LoRA as the Train page sets it (`LoraSettings()`: rank 16 on every
linear), B drawn at random (a trained adapter is not zero), the merged model at the top (fp32, as
`_merged_copy` writes it), the adapter in adapter/. Each measured side runs in its own subprocess (its
peak RSS is its own) and does what the Compare page does, through the app's ModelCache in bf16:

    window   load before (the base) and after (the checkpoint); each writes 8 greedy tokens
    scoring  then `scoring_models(after, before)` (fp32 copies where the cache finds they fit) and the
             implicit rewards of one pair
    speed    (--parts speed) the after model's sampling pace, as a view and as the merged model

"two copies" is the ModelCache with checkpoint views turned off (`lora_checkpoint` answering None: what
Compare did before); "one base" is as shipped. Reported: weights held (the cache's own count, each
tensor once), RSS at the end, peak RSS (VmHWM), the scoring precision the cache chose and why, and the
rewards, which must agree between the two ways to rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import machine_row, markdown_table, module_command, module_env, proc_status_bytes, uptime
from bench.real_size import bench_dir, model_dir

MODEL = "llama-3.2-1b"  # the default --model: any of bench.real_size.CONFIGS
B_STD = 0.01  # LoRA B drawn ~N(0, 0.01): the adapter moves the weights by a few percent, as a short run might
PROMPT = "Explain how plants make food from sunlight."
ANSWERS = ("Leaves catch light and turn water and air into sugar.", "Plants eat soil.")  # fixed: rewards comparable
WAYS = {"two copies": "two", "one base": "one"}
NEED_GIB = {("two", "window"): 8, ("two", "scoring"): 17, ("one", "window"): 5, ("one", "scoring"): 10,
            ("one", "speed"): 8}
# ^ MemAvailable a side needs before it starts (the machine is shared): its weights plus load-time transients


def checkpoint_dir(model: str) -> Path:
    """The LoRA run's checkpoint over `model`, made once (about 8 GB of RAM while the merged copy is written)."""
    import torch

    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model
    from dpo_engine.train.checkpoints import RUN_FILE
    from dpo_engine.train.config import LoraSettings, TrainConfig
    from dpo_engine.train.model import run_info, trainable_parameters, wrap_lora, write_model_files

    folder = bench_dir() / f"{model}-lora-run"
    if (folder / RUN_FILE).is_file():
        return folder
    base = model_dir(model)
    loaded = load_model(str(base), pick_device("cpu", "bfloat16"))  # the frozen base as a bf16 run holds it
    config = TrainConfig(output_dir=str(folder), model=str(base), lora=LoraSettings(), merge_lora=True)
    torch.manual_seed(0)
    model = wrap_lora(loaded.model, config.lora)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.data = p.data.float()  # the adapter in fp32, as load_policy keeps it
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, B_STD)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    write_model_files(tmp, model, loaded.tokenizer, run_info(config, str(base), str(base), 1, 1, "finished"))
    os.replace(tmp, folder)
    return folder


def child(model: str, way: str, part: str) -> dict:
    """One side, in this process: what Compare loads and computes, and what it cost."""
    import app.plumbing.context as context
    from dpo_engine._compat import quiet_transformers
    from dpo_engine.devices import DeviceChoice
    from dpo_engine.generate import GenerationSettings, generate
    from dpo_engine.heldout import implicit_rewards

    quiet_transformers()
    if way == "two":
        context.lora_checkpoint = lambda ref: None  # every checkpoint loads as a model of its own, as before
    base, ckpt = str(model_dir(model)), str(checkpoint_dir(model))
    cache = context.ModelCache(DeviceChoice("cpu", "bfloat16", "bench", "bf16: the window's precision here"))
    start = time.perf_counter()
    texts = []
    for ref in (base, ckpt):
        loaded = cache.get(ref)
        texts.append(generate(loaded.model, loaded.tokenizer, PROMPT, 1,
                              GenerationSettings(max_new_tokens=8, temperature=0.0)).texts[0])
    row = {"model": model, "way": way, "part": part, "greedy_differs": texts[0] != texts[1]}
    if part == "scoring":
        after, before = cache.scoring_models(ckpt, base)
        scores = implicit_rewards(after.model, before.model, after.tokenizer, PROMPT, ANSWERS, 0.1)
        row.update(precision=cache.scoring_choice.dtype, reason=cache.scoring_choice.precision_reason,
                   rewards=[round(r, 5) for r in scores.rewards])
    row.update(seconds=round(time.perf_counter() - start, 1), held_gb=round(cache.held_bytes() / 1e9, 2),
               rss_gb=round(proc_status_bytes("VmRSS") / 1e9, 2), peak_gb=round(proc_status_bytes("VmHWM") / 1e9, 2))
    return row


def child_speed(model: str) -> dict:
    """The sampling pace of the base, of the checkpoint as a view (the base's bf16 linears plus the fp32
    adapter's two small products each) and as its merged model loaded alone: 16 greedy tokens, alternated
    5 times, the fastest of each (the machine is shared: alternating puts all three under the same load,
    and another process's load only ever adds time).
    The base and the view read the base's weights where its bf16 safetensors file is mapped (a bf16 load of
    a bf16 file copies nothing; the pages come in on first use), the merged model its own converted copy."""
    from app.plumbing.context import ModelCache
    from dpo_engine.devices import DeviceChoice
    from dpo_engine.generate import GenerationSettings, generate
    from dpo_engine.models import load_model

    window = DeviceChoice("cpu", "bfloat16", "bench", "bf16: the window's precision here")
    cache, ckpt = ModelCache(window), str(checkpoint_dir(model))
    views = {"base": cache.get(str(model_dir(model))), "view": cache.get(ckpt), "merged": load_model(ckpt, window)}
    greedy = GenerationSettings(max_new_tokens=16, temperature=0.0)
    wall: dict[str, list[float]] = {name: [] for name in views}
    cpu: dict[str, list[float]] = {name: [] for name in views}
    for _ in range(5):
        for name, loaded in views.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            tokens = max(1, generate(loaded.model, loaded.tokenizer, PROMPT, 1, greedy).token_counts[0])
            wall[name].append((time.perf_counter() - start) / tokens)
            cpu[name].append((time.process_time() - start_cpu) / tokens)  # less moved by another process's load
    return {"model": model, "part": "speed", **{f"{name}_s_per_token": round(min(t), 3) for name, t in wall.items()},
            **{f"{name}_cpu_s_per_token": round(min(t), 3) for name, t in cpu.items()}}


def available_gib() -> float:
    with open("/proc/meminfo") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
    return kib / 2**20


def run_side(model: str, way: str, part: str) -> dict:
    if available_gib() < NEED_GIB[way, part]:
        return {"way": way, "part": part, "skipped": f"{available_gib():.1f} GiB available, "
                                                     f"{NEED_GIB[way, part]} GiB needed"}
    proc = subprocess.run(module_command(__spec__.name, "--model", model, "--child", way, part),
                          capture_output=True, text=True, env=module_env())
    if proc.returncode != 0:
        return {"way": way, "part": part, "error": proc.stderr.strip()[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    header = ["part", "way", "weights held (GB)", "RSS at end (GB)", "peak RSS (GB)", "scores in", "rewards", "s"]
    lines = []
    for r in rows:
        if r["part"] == "speed":
            continue
        if "held_gb" not in r:
            lines.append([r["part"], r["way"], r.get("skipped") or "error", "", "", "", "", ""])
            continue
        rewards = " / ".join(f"{x:+.4f}" for x in r["rewards"]) if "rewards" in r else "-"
        lines.append([r["part"], {"two": "two copies", "one": "one base"}[r["way"]], r["held_gb"], r["rss_gb"],
                      r["peak_gb"], r.get("precision", "bfloat16 (window)"), rewards, r["seconds"]])
    return markdown_table(header, "llrrrllr", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="window,scoring")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--child", nargs=2, metavar=("WAY", "PART"), help=argparse.SUPPRESS)
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    if args.build:
        print(checkpoint_dir(args.model))
        return
    if args.child:
        way, part = args.child
        print(json.dumps(child_speed(args.model) if part == "speed" else child(args.model, way, part)))
        return
    build = module_command(__spec__.name, "--model", args.model, "--build")
    subprocess.run(build, check=True, env=module_env())  # made once, never inside a measured side
    print(machine_row(), "\n", uptime(), flush=True)
    rows = []
    for part in args.parts.split(","):
        for way in (["one"] if part == "speed" else WAYS.values()):
            rows.append(run_side(args.model, way, part))
            print(json.dumps(rows[-1]), flush=True)
    print(uptime())
    print(table(rows))
    for r in rows:
        if "reason" in r:
            print(f"- {r['way']}, {r['part']}: {r['reason']}")


if __name__ == "__main__":
    main()
