"""Labeling pace: how long a person waits for the next pair after each verdict.

Drives the real Label page offscreen (app.main.create_window, a fresh temporary project,
the default model, CPU, the page's own sampling settings) with a scripted person: once
the current prompt's answers are all shown complete, the person thinks for `--think`
seconds and presses a key (1 or 2 at random in pairwise mode; 1, 2, ..., k in ranking
mode, which places every answer and saves the ranking). After each verdict the script
measures the wait until the next prompt's answers are complete on screen (0 when they
already were), and reports p50/p95 of that wait and verdicts per minute (from the first
ready pair to the last verdict's next ready pair). The first pair's time after start
(model load and the first sampling) is reported apart; it is not a wait after a verdict.
The first verdict's wait is the start-up batch (the whole queue sampled at once), so the
same figures are also given without it ("steady").

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.labeling_pace --think 2 4 8 --verdicts 30
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.labeling_pace --mode ranking --think 4
    # a second session: the first run leaves the measured pace where the second starts from it
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.labeling_pace --think 4 4 --pace-memory /tmp/pace.json
    # the 1B shape (random weights: every answer runs to the token cap), built once by bench.real_size
    .venv/bin/python -c "from bench.real_size import model_dir; print(model_dir('llama-3.2-1b'))"
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.labeling_pace --model <that folder> --think 4 4 \
        --verdicts 20 --pace-memory /tmp/pace-1b.json   # a first session, then a second

To measure another version of the app (e.g. main before the batched queue), put that checkout
first on the path and this one after it, for `bench`, and keep Python from putting the working
folder first (`-P`):

    PYTHONPATH=/path/to/other:$PWD QT_QPA_PLATFORM=offscreen .venv/bin/python -P -m bench.labeling_pace

It uses only `create_window`, the Label page's controller (`current`, `pairReady`,
`queue.prefetch`) and keys. One JSON line per condition is appended to --out, naming the machine (`bench/common.py`) and the sampling precision.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info, machine_row

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


def pump(app, seconds: float) -> None:
    """Run the event loop for `seconds` (the person reading), sleeping between polls so the
    GUI thread takes no more CPU than an idle window does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.005)


def run_condition(app, mode: str, k: int, think: float, verdicts: int, prefetch: int | None, seed: int,
                  timeout: float, pace_memory: Path | None = None, model: str = "default") -> dict:
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from app.main import create_window

    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="labeling-pace-"))
    memory = pace_memory or workdir / "labeling-pace.json"  # default: a first session, nothing remembered
    remembered = memory.exists()
    try:
        from app.controllers import pace

        pace.memory_file = lambda: memory  # the app's pace memory, kept out of the user's cache
    except ImportError:
        pass  # a version of the app from before the pace
    ctx, win = create_window(workdir / "pace.sqlite", model, device="cpu")
    page = win.pages["Label"]
    c = page.controller
    if prefetch is not None:
        c.queue.prefetch = prefetch
    ready_at: dict[int, float] = {}  # id(pair) -> when its answers were complete on screen
    c.pairReady.connect(lambda: ready_at.setdefault(id(c.current), time.monotonic()))
    start = time.monotonic()
    if mode == "ranking":
        page.mode_box.setCurrentIndex(page.mode_box.findData("ranking"))
        page.k_box.setValue(k)
    win.show()

    def wait_ready(pair_of_before) -> float:
        end = time.monotonic() + timeout
        while True:
            cur = c.current
            if cur is not None and cur is not pair_of_before and cur.done and id(cur) in ready_at:
                return ready_at[id(cur)]
            if time.monotonic() > end:
                raise TimeoutError(f"no ready pair after {timeout:.0f} s")
            app.processEvents()
            time.sleep(0.002)

    first_ready = wait_ready(None)
    waits, loads = [], [os.getloadavg()[0]]
    ready = first_ready
    readies = []
    for _ in range(verdicts):
        pump(app, think)
        judged = c.current
        keys = [Qt.Key.Key_1 + i for i in range(judged.n)] if judged.n > 2 else [rng.choice((Qt.Key.Key_1, Qt.Key.Key_2))]
        pressed = time.monotonic()
        for key in keys:
            QTest.keyClick(page, key)
        assert c.current is not judged, "the verdict was not taken"
        ready = wait_ready(judged)
        readies.append(ready)
        waits.append(max(0.0, ready - pressed))
    loads.append(os.getloadavg()[0])
    labeled = c.progress().session
    ctx.shutdown()
    win.close()
    return {
        "mode": mode if mode == "pairwise" else f"ranking of {k}",
        "think_s": think,
        "verdicts": verdicts,
        "stored_verdicts": labeled,
        "prefetch": c.queue.prefetch if c.queue.prefetch is not None else f"auto, ended at {c.queue.ahead()} prompts",
        "session": "pace remembered" if remembered else "first",
        "first_pair_s": round(first_ready - start, 1),
        "wait_p50_s": round(percentile(waits, 50), 2),
        "wait_p95_s": round(percentile(waits, 95), 2),
        "wait_max_s": round(max(waits), 2),
        "waits_s": [round(w, 2) for w in waits],
        "verdicts_per_min": round(60 * verdicts / (ready - first_ready), 2),
        # without the first verdict, whose wait is the start-up batch (the whole queue at once)
        "steady_wait_p50_s": round(percentile(waits[1:], 50), 2) if verdicts > 1 else None,
        "steady_wait_p95_s": round(percentile(waits[1:], 95), 2) if verdicts > 1 else None,
        "steady_verdicts_per_min": round(60 * (verdicts - 1) / (ready - readies[0]), 2) if verdicts > 1 else None,
        "load_1min": [round(x, 2) for x in loads],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("pairwise", "ranking"), default="pairwise")
    p.add_argument("--k", type=int, default=4, help="answers per prompt in ranking mode")
    p.add_argument("--think", type=float, nargs="+", default=[2, 4, 8], help="the person's seconds per verdict")
    p.add_argument("--verdicts", type=int, default=30, help="verdicts per think time")
    p.add_argument("--prefetch", type=int, default=None, help="prompts sampled ahead (default: the app's)")
    p.add_argument("--label", default="", help="a name for this version of the app in the results")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the whole app (default: torch's own choice, the app's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for one pair before giving up")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "labeling_pace.jsonl")
    p.add_argument("--model", default="default",
                   help="the model labeled with: default, or a folder (a 1B shape: bench.real_size's, see above)")
    p.add_argument("--pace-memory", type=Path, default=None,
                   help="the file where the app remembers the measured pace; give the same one to two runs "
                        "to measure a second session (default: a fresh one per condition, a first session)")
    args = p.parse_args(argv)

    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    import PySide6  # noqa: F401  (before pyqtgraph)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for think in args.think:
        row = run_condition(app, args.mode, args.k, think, args.verdicts, args.prefetch, args.seed, args.timeout,
                            args.pace_memory, args.model)
        row.update(label=args.label, model=args.model, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   cpus=os.cpu_count(), torch_threads=_torch_threads(), machine=machine_info(),
                   sampling_dtype=_sampling_dtype())
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['label'] or '-'} ({row['session']} session) {row['mode']} think {think:g}s: wait p50 {row['wait_p50_s']} s, "
              f"p95 {row['wait_p95_s']} s, {row['verdicts_per_min']} verdicts/min "
              f"(first pair {row['first_pair_s']} s, load {row['load_1min']}); after the first verdict: "
              f"p50 {row['steady_wait_p50_s']} s, p95 {row['steady_wait_p95_s']} s, "
              f"{row['steady_verdicts_per_min']} verdicts/min; {machine_row(row['machine'])}, sampling in "
              f"{row['sampling_dtype']}", flush=True)
    return 0


def _sampling_dtype() -> str:
    """The precision the app samples in on this machine (its models load in it)."""
    from dpo_engine.devices import pick_device

    return pick_device("cpu").dtype


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
