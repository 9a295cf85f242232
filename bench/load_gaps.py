"""Loading a model at real size keeps the window responsive: event-loop gaps and the status
bar's texts from the window's opening until the model is ready.

Opens the real window offscreen (`app.main.create_window`, an empty temporary project, CPU)
with a model folder as the active model, starts its load as `dpo-studio` does
(`ctx.load_active_model()`, then `show()`), and runs the event loop with a 10 ms QTimer
heartbeat until the status bar says the model is ready (or failed). Records the gaps between
heartbeats (p50 / p99 / max; the goal: none over 100 ms), every text the status bar showed with
its time, and the load's duration; then, optionally (`--first-token`), the time until the Label
page shows its first answer text: the model's first use, which pays for reading any weight the
load left unread (memory-mapped weights are read when first touched).

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.load_gaps --model llama-3.2-1b
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.load_gaps --model llama-3.2-1b --cold --first-token
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.load_gaps --model llama-3.2-1b --dtype float32 --watchdog

--model: a `bench.real_size` shape (built once, random bf16 weights) or a model folder.
--preload-tokenizer: the tokenizer is loaded before the window opens and handed to the load
(`dpo_engine.models.load_tokenizer` replaced): the gaps the load leaves without the tokenizer's.
Since 8 Dec the window does this itself for a model folder (`models.preload_tokenizer`), so the
flag changes nothing there.
--spare: instead, how much memory a load and one sampling round take over the weights' bytes
(`dpo_engine.weights.LOAD_SPARE`): the peak RSS above the process's RSS before the load, over
the weights, for 8 prompts of 60 tokens sampling 32 new tokens each (no window).
--cold: evict the model's files from the OS page cache first (posix_fadvise DONTNEED, no root
needed), as on a first start after a reboot. --pretend-free-gib N: the memory free is said to be
N GiB (`dpo_engine.weights.free_memory` replaced), to see a refusal at real size. Appends one JSON
line to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, machine_info, uptime
from bench.event_loop import Watchdog, percentile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TICK_MS = 10  # the heartbeat, as bench/event_loop.py
LONG_GAP_MS = 100  # the goal: no gap longer (a person notices a stall from ~100 ms)


def model_folder(name: str) -> Path:
    """A `bench.real_size` shape's folder (built once), or `name` as a path."""
    from bench.real_size import CONFIGS, model_dir

    return model_dir(name) if name in CONFIGS else Path(name).expanduser()


def evict(folder: Path) -> int:
    """Drop the folder's files from the OS page cache; returns the bytes advised away."""
    total = 0
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            total += path.stat().st_size
    return total


class Heartbeat:
    """A 10 ms QTimer on the GUI thread: the gap between its ticks, and each new status-bar text."""

    def __init__(self, label, start: float, dog: Watchdog | None):
        from PySide6.QtCore import QElapsedTimer, QTimer

        self.label, self.start, self.dog = label, start, dog
        self.gaps: list[int] = []
        self.long_gaps: list[tuple[float, int]] = []
        self.texts: list[tuple[float, str]] = []
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)

    def now(self) -> float:
        return round(time.perf_counter() - self.start, 3)

    def begin(self) -> None:
        self.clock.start()
        self.timer.start()
        self.note_text()

    def tick(self) -> None:
        if self.dog is not None:
            self.dog.last = time.perf_counter()
        gap = self.clock.restart()
        self.gaps.append(gap)
        if gap > LONG_GAP_MS:
            self.long_gaps.append((self.now(), gap))
        self.note_text()

    def note_text(self) -> None:
        text = self.label.text()
        if not self.texts or self.texts[-1][1] != text:
            self.texts.append((self.now(), text))

    def summary(self, prefix: str = "") -> dict:
        ticks = sorted(self.gaps)
        if not ticks:
            return {f"{prefix}ticks": 0}
        return {f"{prefix}ticks": len(ticks), f"{prefix}p50_ms": percentile(ticks, 0.5),
                f"{prefix}p99_ms": percentile(ticks, 0.99), f"{prefix}max_ms": ticks[-1],
                f"{prefix}gaps_over_100ms": sum(g > LONG_GAP_MS for g in ticks)}


def run_until(app, done, timeout_s: float) -> None:
    """Run the GUI event loop (not processEvents + sleep, which would add its own gaps) until `done()`."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(5)
    poll.timeout.connect(lambda: loop.quit() if done() else None)
    poll.start()
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    poll.stop()
    if not done():
        raise TimeoutError(f"not done after {timeout_s:.0f} s")


def first_token(app, win) -> float:
    """Seconds until the Label page shows its first answer text (it samples as soon as the model
    is ready): the model's first use, which pays for any weight the load left unread."""
    start, seen = time.perf_counter(), []
    win.pages["Label"].controller.textUpdated.connect(lambda *_: seen.append(time.perf_counter()))
    run_until(app, lambda: bool(seen), 1800)
    return seen[0] - start


def preload_tokenizer(folder: Path) -> None:
    """Load the tokenizer now, on this thread, and make the window's load take it instead of loading one."""
    from dpo_engine import models

    tokenizer = models.load_tokenizer(models.resolve_model_ref(str(folder)))
    models.load_tokenizer = lambda resolved: tokenizer


def pretend_free(gib: float) -> None:
    """The load's fit check sees `gib` GiB free, whatever is free here (absent on code without the check)."""
    try:
        from dpo_engine import weights
    except ImportError:
        return
    weights.free_memory = lambda device: int(gib * 2**30)


def measure(model: str, dtype: str | None, cold: bool, token: bool, watch: bool, free_gib: float | None,
            preload: bool = False) -> dict:
    from PySide6.QtWidgets import QApplication

    from app.main import create_window
    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    app = QApplication.instance() or QApplication([])
    folder = model_folder(model)
    evicted = evict(folder) if cold else 0
    if free_gib is not None:
        pretend_free(free_gib)
    if preload:
        preload_tokenizer(folder)
    load_before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ctx, win = create_window(Path(tmp) / "bench.sqlite", str(folder), device="cpu", dtype=dtype)
        built = time.perf_counter() - start
        dog = Watchdog() if watch else None
        beat = Heartbeat(win.state_label, time.perf_counter(), dog)
        beat.begin()
        if dog is not None:
            dog.thread.start()
        ctx.load_active_model()  # as app.main.run_app: the load is queued first, then the window shows
        win.show()
        run_until(app, lambda: ctx.model_state[0] in ("ready", "error"), 3600)
        loaded_s, state = beat.now(), ctx.model_state
        row = {**beat.summary(), "texts": beat.texts, "long_gaps": beat.long_gaps}
        if token and state[0] == "ready":
            beat.gaps, beat.long_gaps = [], []
            row.update(first_token_s=round(first_token(app, win), 2), **beat.summary("token_"),
                       token_long_gaps=beat.long_gaps)
        beat.timer.stop()
        if dog is not None:
            dog.stop.set()
            row.update(stalled_in=dog.summary())
        ctx.shutdown()
        win.close()
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "model": model, "folder": str(folder),
            "precision": ctx.device.dtype, "cold": cold, "pretend_free_gib": free_gib,
            "preloaded_tokenizer": preload, "evicted_bytes": evicted, "window_built_s": round(built, 2),
            "load_s": loaded_s, "state": state[0], "detail": state[1][:300], **row,
            "uptime_before": load_before, "uptime_after": uptime(), "machine": machine_info()}


def measure_spare(model: str, dtype: str | None) -> dict:
    """Peak RSS of a load and one sampling round above the RSS before, over the weights' bytes."""
    import torch

    from bench.common import proc_status_bytes
    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model

    before = proc_status_bytes("VmRSS")
    loaded = load_model(str(model_folder(model)), pick_device("cpu", dtype))
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    ids = torch.randint(0, 1000, (8, 60))
    with torch.no_grad():
        loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=32,
                              min_new_tokens=32, pad_token_id=0)
    peak = proc_status_bytes("VmHWM")
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "model": model, "precision": loaded.device.dtype,
            "weights_gib": round(weight_bytes / 2**30, 3), "rss_before_gib": round(before / 2**30, 3),
            "peak_gib": round(peak / 2**30, 3), "spare": round((peak - before) / weight_bytes, 3),
            "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.2-1b", help="a bench.real_size shape or a model folder")
    parser.add_argument("--dtype", default=None, help="the window's --dtype: auto (default), float32, bfloat16")
    parser.add_argument("--cold", action="store_true", help="evict the model's files from the page cache first")
    parser.add_argument("--first-token", action="store_true",
                        help="then time until the Label page shows its first answer text")
    parser.add_argument("--watchdog", action="store_true", help="record where each thread is during long gaps")
    parser.add_argument("--pretend-free-gib", type=float, default=None,
                        help="the load's fit check sees this much memory free (to see a refusal at real size)")
    parser.add_argument("--preload-tokenizer", action="store_true",
                        help="load the tokenizer before the window opens (the gaps without its load)")
    parser.add_argument("--spare", action="store_true", help="measure LOAD_SPARE instead (no window)")
    parser.add_argument("--out", default=str(RESULTS / "load_gaps.jsonl"))
    args = parser.parse_args()
    if args.spare:
        row = measure_spare(args.model, args.dtype)
    else:
        row = measure(args.model, args.dtype, args.cold, args.first_token, args.watchdog, args.pretend_free_gib,
                      args.preload_tokenizer)
    print(json.dumps({k: v for k, v in row.items() if k != "machine"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
