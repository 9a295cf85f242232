"""What the benchmarks share: where results go, the machine a result ran on, the default model,
the throughput bench's 64 pairs, and the train-mode setup and bare forward+backward of the step
benches. Run every bench from the repository root as a module, `python -m bench.<name>`.

The machine row: CPU model, the flags that decide its speed (AVX2, AVX-512, native bf16:
avx512_bf16 and AMX), cores, torch and its threads, load. Figures from different machines are
never compared as if from one: a row that names its CPU and flags says which class of machine
it belongs to (bf16 runs ~2x fp32 where it is native, ~10x slower than fp32 where it is emulated).
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"  # every result file a bench writes lives here

CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the ones bench results depend on


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ('', empty) where there is none."""
    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


def machine_info() -> dict:
    """Plain values for a JSON result row."""
    import torch

    name, flags = _cpuinfo()
    return {
        "cpu": name or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "cores": os.cpu_count(),
        # the CPUs this process may run on (taskset / a container's cpuset): what its threads share
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        # kernel caps set by environment (an AMX CPU capped to AVX2 stands in for a CPU without native bf16)
        "isa_caps": {k: os.environ[k] for k in CAP_VARIABLES if k in os.environ},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),  # which kernels ran: their rounding differs
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def machine_row(info: dict | None = None) -> str:
    """One line for a report: 'AMD EPYC (avx2 avx512f avx512_bf16), 2 cores, torch 2.13.0 (2 threads), load 1.0'."""
    m = info or machine_info()
    flags = " ".join(m["cpu_flags"]) or "no avx2"
    cores = f"{m['cores']} cores"
    if m.get("cpus_allowed") not in (None, m["cores"]):
        cores += f" ({m['cpus_allowed']} allowed)"
    caps = m.get("isa_caps") or {}
    capped = f", capped: {' '.join(f'{k}={v}' for k, v in caps.items())}" if caps else ""
    return (f"{m['cpu']} ({flags}{capped}), {cores}, torch {m['torch']} ({m['torch_threads']} threads), "
            f"load {m['load_1min']}")


def uptime() -> str:
    """`uptime`'s line: the load before and after a run, for the report."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def proc_status_bytes(key: str) -> int:
    """A /proc/self/status value (VmRSS, VmHWM, RssAnon, ...) in bytes; 0 where there is none."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs bench module `module` (its `__spec__.name`) in a fresh process."""
    return [sys.executable, "-m", module, *args]


def module_env() -> dict:
    """The environment of such a process: this checkout first on the path, whatever the caller's cwd."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}


def markdown_table(header: list[str], align: str, rows: list[list]) -> str:
    """A Markdown table; `align` one character per column: l (left) or r (right)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


# --------------------------------------------------------------------------- the default model and its pairs

N_PAIRS, BATCH, MAX_LENGTH, LR, BETA, SEED = 64, 2, 256, 5e-6, 0.1, 0
GOOD = "clear careful kind helpful precise honest gentle thorough useful friendly accurate calm".split()
BAD = "rude vague wrong lazy careless sloppy false noisy random useless angry confused".split()
TOPIC = "explain how plants make food from sunlight water and air in simple words for a curious child".split()


def grow(tok_len, rng: random.Random, words: list[str], target: int, start: str = "") -> str:
    """`start` plus words drawn from `words` until `tok_len` of it reaches `target` tokens."""
    text = start
    while tok_len(text) < target:
        text += (" " if text else "") + rng.choice(words)
    return text


def make_pairs(tokenizer):
    """64 fixed conversational pairs; the chosen answers use 'good' words (a learnable preference)."""
    from dpo_engine.pairs import conversation

    rng = random.Random(SEED)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    pairs = []
    for i in range(N_PAIRS):
        prompt = grow(n_tokens, rng, TOPIC, 16, f"Question {i}:")  # + the chat template's ~24 -> ~40 tokens
        chosen = grow(n_tokens, rng, GOOD + TOPIC, rng.randint(40, 118))
        rejected = grow(n_tokens, rng, BAD + TOPIC, rng.randint(40, 118))
        pairs.append(conversation(prompt, chosen, rejected))
    return pairs


def load_default():
    """The default model with fp32 weights on the CPU (a `LoadedModel`), transformers' chatter off."""
    from dpo_engine._compat import quiet_transformers
    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model

    quiet_transformers()
    return load_model("default", pick_device("cpu", "float32"))


def encoded_pairs(tokenizer, n: int = N_PAIRS) -> list:
    """The first `n` of the 64 pairs, encoded at MAX_LENGTH, in their order."""
    from dpo_engine.encoding import encode_pair

    return [encode_pair(tokenizer, p, MAX_LENGTH) for p in make_pairs(tokenizer)[:n]]


def train_model():
    """The default model as the trainer steps it: fp32 weights, train mode, dropout and the KV
    cache off. (model, tokenizer)."""
    from dpo_engine.train.model import disable_dropout

    loaded = load_default()
    model, tokenizer = loaded.model, loaded.tokenizer
    disable_dropout(model)
    model.config.use_cache = False
    model.train()
    return model, tokenizer


def train_setup():
    """`train_model()` and the bench's pairs encoded and length-sorted: (model, tokenizer, encoded),
    shared by the step benches."""
    model, tokenizer = train_model()
    return model, tokenizer, sorted(encoded_pairs(tokenizer), key=lambda e: e.length)


def bare_forward_backward(model, pairs, pad_id: int, autocast) -> None:
    """The ceiling of a step: the bare forward+backward of the model over a step's tokens.

    The same tokens as the trainer's step (`train.step.pair_tokens`: prompt once, both answers)
    as one row per pair, prompt + chosen + rejected, right-padded; the LM head and a plain
    cross-entropy on the positions whose next token is an answer token (as many as the trainer
    scores), then backward. No optimizer, no clipping, no metrics, no DPO: the work any
    trainer of these tokens must do, in a few lines of torch.
    """
    import torch
    import torch.nn.functional as F

    rows = [list(p.prompt_ids) + list(p.chosen_ids) + list(p.rejected_ids) for p in pairs]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    scored = torch.zeros_like(ids, dtype=torch.bool)  # position t is scored when token t+1 is an answer token
    for i, (p, row) in enumerate(zip(pairs, rows)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        scored[i, len(p.prompt_ids) - 1:len(row) - 1] = True
    with autocast():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden[scored])
    targets = ids[:, 1:][scored[:, :-1]]
    F.cross_entropy(logits.float(), targets).backward()
    model.zero_grad(set_to_none=True)
