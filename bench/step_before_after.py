"""The trainer's step and reference scoring at an older commit vs this tree, interleaved in one
process on one model and the same batches: a before/after that a machine's drift cannot bias.

    .venv/bin/python -m bench.step_before_after 08ec4a0 --precision fp32 --rounds 6
    .venv/bin/python -m bench.step_before_after 08ec4a0 --precision bf16 --rounds 6
    python -m bench.step_before_after .before --precision bf16   # a tree from `git archive 08ec4a0 dpo_engine`

The old `dpo_engine` is extracted with `git archive` and imported as `dpo_engine_old` (its
imports rewritten), so both versions' `train.step.run_step` and reference scoring run on the
same weights, one after the other, the order alternating round by round. Each round: score
the reference of 4 pairs (the trainer's batches, `bench/train_throughput.py`'s pairs), then one
optimizer step of 2 micro-batches of 2 pairs. Both versions step the same model, so the
weights move alike for both.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench.common import BATCH, MAX_LENGTH, ROOT, machine_row, make_pairs


def extract_old(commit: str, into: Path) -> None:
    """`dpo_engine` at `commit` (or in the tree at that path: a machine without the git history)
    as the package `dpo_engine_old` under `into`."""
    if Path(commit).is_dir():
        shutil.copytree(Path(commit) / "dpo_engine", into / "dpo_engine_old")
    else:
        archive = into / "old.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit, "dpo_engine"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        (into / "dpo_engine").rename(into / "dpo_engine_old")
    for path in (into / "dpo_engine_old").rglob("*.py"):
        path.write_text(re.sub(r"\bdpo_engine\b", "dpo_engine_old", path.read_text()))


def import_old(into: Path) -> None:
    """Import `into/dpo_engine_old` as the package `dpo_engine_old`: its submodules then import by
    name, and no path entry is added that could shadow anything else."""
    init = into / "dpo_engine_old" / "__init__.py"
    spec = importlib.util.spec_from_file_location("dpo_engine_old", init, submodule_search_locations=[str(init.parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["dpo_engine_old"] = package
    spec.loader.exec_module(package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit", help="the older commit (e.g. 08ec4a0), or a folder holding its dpo_engine")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dpo-before-"))
    extract_old(args.commit, work)
    import_old(work)

    import torch

    from dpo_engine.devices import pick_device
    from dpo_engine.encoding import encode_pair
    from dpo_engine.iters import drain
    from dpo_engine.losses import LossParams
    from dpo_engine.models import load_model
    from dpo_engine.train import step as new
    from dpo_engine.train.model import disable_dropout

    old = importlib.import_module("dpo_engine_old.train.step")
    old_params = importlib.import_module("dpo_engine_old.losses").LossParams
    new_score = new.policy_scores
    old_score = getattr(old, "policy_scores", None) or old.score_pairs  # its name before the rename

    torch.manual_seed(0)
    loaded = load_model("default", pick_device("cpu", "float32"))
    model, tok = loaded.model, loaded.tokenizer
    disable_dropout(model)
    model.config.use_cache = False
    encoded = sorted((encode_pair(tok, p, MAX_LENGTH) for p in make_pairs(tok)), key=lambda e: e.length)
    choice = pick_device("cpu", "bfloat16" if args.precision == "bf16" else "float32")
    new_autocast = choice.autocast
    if args.precision == "bf16":  # the trainer's attention on a CPU in bf16 (the model's own since it moved there)
        from dpo_engine.attention import use_fp32_attention

        use_fp32_attention(model)
    old_autocast = old.forward_precision(choice) if hasattr(old, "forward_precision") else choice.autocast
    contexts = {
        "after": (new, new_score, new.StepContext("sigmoid", LossParams(beta=0.1), tok.pad_token_id,
                                                  torch.device("cpu"), True, new_autocast)),
        "before": (old, old_score, old.StepContext("sigmoid", old_params(beta=0.1), tok.pad_token_id,
                                                   torch.device("cpu"), True, old_autocast)),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, fused=True)
    size = BATCH * 2
    steps = [encoded[i:i + size] for i in range(0, len(encoded) - size + 1, size)]
    seconds = {f"{name} {part}": [] for name in contexts for part in ("step", "reference")}
    print(machine_row(), file=sys.stderr)
    for k in range(args.rounds + 1):  # round 0 warms both up and is not counted
        pairs = steps[k % len(steps)]
        order = list(contexts) if k % 2 else list(reversed(contexts))
        for name in order:
            module, score, ctx = contexts[name]
            model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                chosen, rejected = drain(score(model, pairs, ctx, size))
            scored = time.perf_counter() - start
            model.train()
            start = time.perf_counter()
            module.run_step(model, optimizer, [[0, 1], [2, 3]], pairs, (chosen, rejected), ctx, 1.0, k,
                            list(range(size)))
            stepped = time.perf_counter() - start
            if k:
                seconds[f"{name} reference"].append(scored)
                seconds[f"{name} step"].append(stepped)
        if k:
            print(f"round {k}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in seconds.items()), file=sys.stderr)
    print(f"`bench/step_before_after.py {args.commit} --precision {args.precision} --rounds {args.rounds}`\n")
    print(f"Machine: {machine_row()}\n")
    print("| part | median (s) | fastest (s) | total (s) |\n|---|---:|---:|---:|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {sum(values):.1f} |")
    for part in ("step", "reference"):
        a, b = seconds[f"after {part}"], seconds[f"before {part}"]
        print(f"\nafter ÷ before, {part}: total {sum(a) / sum(b):.2f}, fastest {min(a) / min(b):.2f}")


if __name__ == "__main__":
    main()
