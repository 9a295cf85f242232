"""The whole loop in the real window at 1-3B: label, train, compare, each phase measured.

Drives the app offscreen (`app.main.create_window`, a fresh temporary project, the
starter prompts) as a person with a model of their own would:

  0. open   the window with the model (a 1B/3B shape built by `bench.real_size`: published
            config, random weights, so every answer runs to the token cap), and the model
            picker's choice for it (`catalog.with_fit` at the free memory: LoRA,
            checkpointing, 4-bit and micro-batch as the plan says, handed to the window as
            the picker does, `MainWindow.use_model`)
  1. label  pairwise, a first session (the pace memory starts empty): once both answers
            are fully shown the person reads for --think seconds and presses 1 or 2;
            --verdicts of them. First pair after opening, verdicts per minute, p95 wait
  2. train  the Train page as it stands after the pick (its small-data defaults), Train
            pressed; the page's "About m:ss" estimate (or that there is none yet) beside
            the real time
  3. compare  before = the base, after = the new checkpoint, blind; --compare typed
            prompts, a vote each; then the implicit rewards of the last round

Throughout, a 10 ms QTimer heartbeat records event-loop gaps, and every beat samples the
process's RSS (CUDA: `torch.cuda.max_memory_allocated`, reset per phase); a thread samples its
PSS and anonymous memory every 0.25 s (Linux: /proc/self/smaps_rollup and status). RSS counts
a page of a memory-mapped safetensors file once per mapping: the window's sampling copy and
the trainer's base map the same bf16 file, so at 1B RSS counts those 2.5 GB twice where PSS
(physical memory) counts them once; and file pages are the kernel's to drop, anonymous memory
is what cannot be. Each phase reports its time, peak memory and longest gap. One JSON line per
run is appended to bench/results/window_end_to_end.jsonl, naming the machine.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.window_end_to_end --model llama-3.2-1b
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.window_end_to_end --model llama-3.2-1b --device cuda
    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.window_end_to_end --model default --verdicts 20

TRL's side of the same 1B LoRA run (tokens/s, peak): `python -m bench.real_size --tasks train,trl`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import RESULTS, machine_info, machine_row
from scripts.screenshots import wait_until

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))] if ordered else 0.0


class Meter:
    """Event-loop gaps and peak memory, per phase, from a 10 ms heartbeat on the GUI thread."""

    def __init__(self, device: str):
        import psutil
        from PySide6.QtCore import QTimer

        self.process, self.cuda = psutil.Process(), device.startswith("cuda")
        self.phase, self.gaps, self.peak = "open", {}, {}
        self.physical: dict[tuple[str, str], int] = {}  # (phase, "pss" | "anon") -> peak bytes
        # on a thread of its own: reading smaps_rollup of a 10 GB process takes milliseconds, which
        # on the heartbeat would be counted as the event loop's gaps
        threading.Thread(target=self._sample_physical, daemon=True, name="meter").start()
        self.last = time.monotonic()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self.beat)
        self.timer.start()

    def beat(self) -> None:
        now = time.monotonic()
        self.gaps.setdefault(self.phase, []).append(now - self.last)
        self.last = now
        self.peak[self.phase] = max(self.peak.get(self.phase, 0), self.process.memory_info().rss)

    def _sample_physical(self) -> None:
        while True:
            phase = self.phase
            for name, value in physical_memory().items():
                self.physical[phase, name] = max(self.physical.get((phase, name), 0), value)
            time.sleep(0.25)

    def start(self, phase: str) -> None:
        self.phase, self.last = phase, time.monotonic()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def report(self, phase: str) -> dict:
        gaps = self.gaps.get(phase, [0.0])
        out = {"max_gap_ms": round(1000 * max(gaps)), "p99_gap_ms": round(1000 * percentile(gaps, 99)),
               "peak_rss_gb": round(self.peak.get(phase, 0) / 1e9, 2)}
        for name in ("pss", "anon"):
            if (phase, name) in self.physical:
                out[f"peak_{name}_gb"] = round(self.physical[phase, name] / 1e9, 2)
        if self.cuda:
            import torch

            out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        return out


def physical_memory() -> dict[str, int]:
    """This process's PSS and anonymous resident bytes (Linux; empty elsewhere)."""
    out = {}
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                out["anon"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def wait(app, until, timeout: float, what: str) -> float:
    """`scripts.screenshots.wait_until`; returns when (monotonic): callers that time a pair take
    the moment from its signal instead (polls are 20 ms apart)."""
    wait_until(app, until, timeout, what)
    return time.monotonic()


def pump(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.005)


def model_path(name: str) -> str:
    if name == "default" or Path(name).is_dir():
        return name
    from bench.real_size import model_dir

    return str(model_dir(name))


def picker_choice(path: str, device: str, free_gib: float | None = None):
    """What the model picker hands the window for `path` here: its fit at the free memory
    (`free_gib`: as if that much were free, e.g. a 16 GB laptop's ~13)."""
    from app.pages.model_choice import ModelChoice
    from dpo_engine.catalog import with_fit
    from dpo_engine.catalog.fit import memory_budget
    from dpo_engine.catalog.sources import inspect_path

    free, where = memory_budget(device)
    free = int(free_gib * 2**30) if free_gib else free
    entry = with_fit(inspect_path(path), free, device)
    return ModelChoice(path, entry.fit.plan if entry.fit else None), entry.fit


def label(app, win, meter: Meter, args, rng: random.Random, opened: float) -> dict:
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    page = win.pages["Label"]
    c = page.controller
    ready_at: dict[int, float] = {}
    c.pairReady.connect(lambda: ready_at.setdefault(id(c.current), time.monotonic()))

    def ready(before) -> bool:
        cur = c.current
        return cur is not None and cur is not before and cur.done and id(cur) in ready_at

    wait(app, lambda: ready(None), args.timeout, "the first pair")
    first = ready_at[id(c.current)]
    meter.start("label")
    waits, last = [], first
    for _ in range(args.verdicts):
        pump(app, args.think)
        judged = c.current
        pressed = time.monotonic()
        QTest.keyClick(page, rng.choice((Qt.Key.Key_1, Qt.Key.Key_2)))
        assert c.current is not judged, "the verdict was not taken"
        wait(app, lambda: ready(judged), args.timeout, "the next pair")
        last = ready_at[id(c.current)]
        waits.append(max(0.0, last - pressed))
    return {"first_pair_s": round(first - opened, 1), "verdicts": args.verdicts,
            "stored": c.progress().session, "verdicts_per_min": round(60 * args.verdicts / (last - first), 2),
            "wait_p50_s": round(percentile(waits, 50), 2), "wait_p95_s": round(percentile(waits, 95), 2),
            "wait_max_s": round(max(waits), 2), "seconds": round(last - first, 1)}


def train(app, win, meter: Meter, args) -> tuple[dict, str]:
    win.show_page("Train")
    page = win.pages["Train"]
    tc, result = page.controller, {}
    tc.finished.connect(lambda ev: result.setdefault("summary", ev))
    tc.failed.connect(lambda msg: result.setdefault("failed", msg))
    settings = page.read_settings()
    estimate = page.duration_label.text() if hasattr(page, "duration_label") else ""
    if not page.train_button.isEnabled():
        raise SystemExit(f"Train is not enabled: {tc.why_not_ready() or page.ready_label.text()}")
    meter.start("train")
    t0 = time.monotonic()
    page.train_button.click()
    wait(app, lambda: result, 4 * 3600, "the training run")
    wait(app, lambda: not tc.running, 120, "the run to wind down")
    seconds = time.monotonic() - t0
    if "failed" in result:
        raise SystemExit(f"training failed: {result['failed']}")
    run = result["summary"]
    form = settings.form
    return {"seconds": round(seconds, 1), "estimate_shown": estimate, "steps": run.step, "status": run.status,
            "lora": settings.lora, "base_bits": settings.lora_base_bits,
            "checkpointing": bool(form.get("gradient_checkpointing")),
            "batch": [form.get("batch_size"), form.get("grad_accum")], "plan": tc.plan_text(settings),
            "tokens_per_s": round(getattr(run, "tokens_per_s", 0.0), 1)}, run.checkpoint


def compare(app, win, ctx, meter: Meter, args, checkpoint: str) -> dict:
    from dpo_engine.starter import starter_prompts

    win.show_page("Compare")
    page = win.pages["Compare"]
    cc = page.controller
    cc.set_models(ctx.base_model_ref, checkpoint)
    page.source.setCurrentIndex(page.source.findData("typed"))
    meter.start("compare")
    t0 = time.monotonic()
    rounds = []
    for prompt in starter_prompts()[-args.compare:]:
        cc.add_typed_prompt(prompt)
        wait(app, lambda: cc.current is not None and cc.current.done, args.timeout, "the Compare page's answers")
        rounds.append(time.monotonic() - t0)
        print(json.dumps({"compare_prompt": len(rounds), "at_s": round(rounds[-1], 1), **{
            k: round(v / 1e9, 2) for k, v in physical_memory().items()}}), flush=True)
        cc.vote(random.Random(len(rounds)).choice(("left", "right")))
    sampled = time.monotonic() - t0
    wait(app, lambda: cc.current is not None and cc.current.rewards is not None, args.timeout, "the implicit rewards")
    return {"prompts": args.compare, "answered_at_s": [round(r, 1) for r in rounds], "seconds": round(time.monotonic() - t0, 1), "sampling_s": round(sampled, 1),
            "scoring": cc.scoring_reason()}


def run(app, args) -> dict:
    from app.controllers import pace
    from app.main import create_window

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="window-e2e-"))
    pace.memory_file = lambda: work / "labeling-pace.json"  # a first session: nothing remembered
    path = model_path(args.model)
    choice, fit = picker_choice(path, args.device, args.free_gib) if path != "default" else (None, None)
    meter = Meter(args.device)
    opened = time.monotonic()
    ctx, win = create_window(work / "e2e.dpo.sqlite", path, device=args.device)
    win.resize(1280, 800)
    win.show()
    shown = time.monotonic()
    meter.start("open")  # gaps from here: building the window before it shows is not a stall
    if choice is not None and choice.plan is not None:
        win.use_model(choice)
    result = {"model": args.model, "device": args.device, "fit": fit.explain() if fit else None,
              "picked": win.state_label.text(), "window_shown_s": round(shown - opened, 1)}
    try:
        if args.compare_only:  # the Compare phase alone, after a checkpoint trained before
            result["compare"] = compare(app, win, ctx, meter, args, str(Path(args.compare_only).expanduser()))
            result["compare"].update(meter.report("compare"))
            return result
        result["label"] = label(app, win, meter, args, rng, opened)
        result["open"] = meter.report("open")
        result["label"].update(meter.report("label"))
        print(json.dumps({k: result[k] for k in ("picked", "open", "label")}), flush=True)
        result["train"], checkpoint = train(app, win, meter, args)
        result["train"].update(meter.report("train"))
        print(json.dumps(result["train"]), flush=True)
        result["compare"] = compare(app, win, ctx, meter, args, checkpoint)
        result["compare"].update(meter.report("compare"))
    finally:
        ctx.shutdown()
        win.close()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3.2-1b", help="default, a folder, or a bench.real_size shape name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verdicts", type=int, default=20)
    p.add_argument("--compare", type=int, default=5, help="typed prompts on the Compare page")
    p.add_argument("--think", type=float, default=4.0, help="the person's seconds per verdict")
    p.add_argument("--free-gib", type=float, default=None,
                   help="plan as if this much memory were free (a 16 GB laptop: ~13); default: what is free")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-only", metavar="CHECKPOINT", default=None,
                   help="only the Compare phase: before = --model, after = this run folder")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for one pair before giving up")
    args = p.parse_args(argv)

    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    import PySide6  # noqa: F401  (before pyqtgraph)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    row = run(app, args)
    row.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=machine_info(), think_s=args.think)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "window_end_to_end.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    print(machine_row(row["machine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
