"""The window never stutters while training: event-loop gaps during a
default-model training run on the Train page, measured with a 10 ms QTimer heartbeat.

Drives the real window offscreen (app.main.create_window, a temporary project filled with
the Data page's sample pairs, the default model, CPU), presses Train, and records the gap
between heartbeats from the click until the run ends. Reports p50 / p99 / max of the gaps
(the goal: p99 < 50 ms on an idle machine) and the load average, and appends one JSON line
to --out.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.event_loop --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1)))]


class Watchdog:
    """Where the GUI thread is while it does not tick: a thread that, every 20 ms the
    heartbeat is more than 100 ms late, records the GUI thread's innermost frames (and the
    other threads' too, to see who holds the GIL). Names what a long gap was spent on."""

    def __init__(self) -> None:
        import threading

        self.last = self.t0 = time.perf_counter()
        self.samples: list[tuple[float, str, list[str]]] = []
        self.main = threading.get_ident()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import traceback

        while not self.stop.wait(0.02):
            late = time.perf_counter() - self.last
            if late < 0.1:
                continue
            for ident, frame in sys._current_frames().items():
                if ident == self.thread.ident:
                    continue
                who = "gui" if ident == self.main else str(ident)
                stack = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-6:]]
                self.samples.append((round(time.perf_counter() - self.t0, 2), who, stack))

    def summary(self) -> list[tuple[int, str]]:
        """(samples, 'thread: frame') most frequent first: the GUI thread's innermost own frames."""
        from collections import Counter

        counts = Counter(f"{who}: {' < '.join(reversed(stack[-3:]))}" for _, who, stack in self.samples)
        return counts.most_common(12)


def measure(steps: int, max_length: int, watch: bool = False) -> dict:
    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from app.main import create_window
    from dpo_engine._compat import quiet_transformers
    from scripts.screenshots import wait_until
    from scripts.screenshots_data import fill_project

    quiet_transformers()
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "bench.sqlite"
        fill_project(project)
        ctx, win = create_window(project, "default", device="cpu")
        win.show()
        win.show_page("Train")
        page = win.pages["Train"]
        page.fields["max_steps"].setValue(steps)
        page.fields["max_length"].setValue(max_length)
        page.fields["eval_every"].setValue(max(1, steps // 2))
        clock, gaps, long_gaps, marks = QElapsedTimer(), [], [], {}
        start = time.perf_counter()

        dog = Watchdog() if watch else None

        def tick() -> None:
            if dog is not None:
                dog.last = time.perf_counter()
            gap = clock.restart()
            gaps.append(gap)
            if gap > 100:  # where the long ones fall, against the run's milestones
                long_gaps.append((round(time.perf_counter() - start, 2), gap))

        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(tick)
        finished = []
        page.controller.finished.connect(finished.append)
        page.controller.started.connect(lambda *_: marks.setdefault("run started", round(time.perf_counter() - start, 2)))
        page.controller.stepArrived.connect(
            lambda e: marks.setdefault(f"step {e.step}", round(time.perf_counter() - start, 2)))
        clock.start()
        timer.start()
        if dog is not None:
            dog.thread.start()
        page.train_button.click()
        wait_until(app, lambda: bool(finished), 3600, "the run to finish")
        timer.stop()
        if dog is not None:
            dog.stop.set()
        seconds = time.perf_counter() - start
        ctx.shutdown()
        win.close()
    ticks = sorted(gaps[1:])
    summary = finished[0]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "steps": steps, "max_length": max_length,
        "status": summary.status, "precision": ctx.device.dtype,
        "seconds": round(seconds, 1), "ticks": len(ticks), "p50_ms": percentile(ticks, 0.5),
        "p99_ms": percentile(ticks, 0.99), "max_ms": ticks[-1], "load": round(os.getloadavg()[0], 2),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"), "long_gaps": long_gaps, "marks": marks,
        **({"stalled_in": dog.summary(), "stall_samples": dog.samples} if dog is not None else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "event_loop.jsonl"))
    parser.add_argument("--watchdog", action="store_true",
                        help="record where each thread is during long gaps (costs a little; for finding stalls)")
    args = parser.parse_args()
    row = measure(args.steps, args.max_length, args.watchdog)
    print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
