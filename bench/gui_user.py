"""The simulated user, by hand: the same scripted labeler drives the real app, offscreen.

Where `bench/simulated_user.py` calls the engine directly, this script does what a person
does, through the widgets and keys of the running app (default model, CPU, app defaults):

  1. Label page, ranking mode (k = 4, the page's own sampling settings): for each of 60
     starter prompts it reads the four answers on screen and types the ranking: the number
     of the shortest first, `=` before an answer that ties with the previous one (answers
     the page marks "cut off at the limit" tie), an empty answer last. Placing the last
     answer saves the ranking, as it does for a person.
  2. Train page: presses **Train** (the page's small-data defaults) and waits for the run.
  3. Compare page: before = the base, after = the new checkpoint (the page's defaults),
     blind; types the 24 held-out prompts of `simulated_user.py` one by one and votes for
     the shorter answer (a tie when both are cut off). The page's own tally gives mean
     lengths before/after and the trained model's win rate.

Screenshots of the three pages go to --shots (bench/gui_user/ by default), and one JSON
line per run is appended to <workdir>/gui_results.jsonl.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m bench.gui_user --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bench.common import ROOT
from bench.simulated_user import simulated_ranking, split_prompts
from scripts.screenshots import wait_until as wait


def labeler_order(texts: list[str], ended: list[bool]) -> tuple[list[int], list[bool]]:
    """What the scripted person decides from what the screen shows: `simulated_user`'s
    labeler (shortest finished answer first, answers cut off at the limit tie below them,
    empty answers last)."""
    return simulated_ranking([{"text": t, "finished": e} for t, e in zip(texts, ended)])


def rank_on_screen(app, page, count: int, log, shot: Path | None = None) -> int:
    """Rank `count` prompts by keyboard on the Label page; returns rankings saved. The page
    is photographed to `shot` just before the last key of the last ranking."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    c, saved, t0 = page.controller, 0, time.perf_counter()
    digit = [Qt.Key.Key_1, Qt.Key.Key_2, Qt.Key.Key_3, Qt.Key.Key_4, Qt.Key.Key_5, Qt.Key.Key_6]
    while saved < count:
        wait(app, lambda: c.current is not None and c.current.done, 900, "the Label page's answers")
        pair = c.current
        # read the screen: the text of each pane and whether the pane says the answer was cut off
        texts = [p.text.toPlainText() for p in page.rank_panes[:pair.n]]
        ended = ["cut off" not in p.length.text() for p in page.rank_panes[:pair.n]]
        order, ties = labeler_order(texts, ended)
        for n, (index, tied) in enumerate(zip(order, ties)):
            if tied:
                QTest.keyClick(page, Qt.Key.Key_Equal)
            if shot is not None and saved == count - 1 and n == len(order) - 1:
                app.processEvents()
                page.window().grab().save(str(shot))
            QTest.keyClick(page, digit[index])
        wait(app, lambda: c.current is not pair, 60, "the next prompt")
        saved += 1
        if saved % 10 == 0 or saved == count:
            log(f"  ranked {saved}/{count} ({time.perf_counter() - t0:.0f} s)")
    return saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/dpo-gui-user")
    ap.add_argument("--shots", default=str(ROOT / "bench" / "gui_user"))
    args = ap.parse_args(argv)

    import PySide6  # noqa: F401  (before pyqtgraph)
    import torch
    from PySide6.QtWidgets import QApplication

    from app.main import create_window
    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    torch.set_num_threads(args.threads)
    work, shots = Path(args.workdir), Path(args.shots)
    work.mkdir(parents=True, exist_ok=True)
    shots.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    label_prompts, heldout = split_prompts(args.seed, args.prompts, args.heldout)
    app = QApplication.instance() or QApplication([])
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        project_path = Path(tmp) / "by-hand.dpo.sqlite"
        from dpo_engine.store.project import open_project

        with open_project(project_path) as project:  # the person's prompt list (held-out ones kept out)
            project.add_prompts(label_prompts, "starter")
        ctx, win = create_window(project_path, "default", device="cpu")
        win.resize(1280, 800)
        win.show()
        label = win.pages["Label"]
        label.controller.rng.seed(args.seed)
        label.mode_box.setCurrentIndex(label.mode_box.findData("ranking"))
        t0 = time.perf_counter()
        rank_on_screen(app, label, args.prompts, log, shots / "label.png")
        label_s = time.perf_counter() - t0
        with open_project(project_path, read_only=True) as project:
            counts = project.counts()
        log(f"labeled: {counts}")

        win.show_page("Train")
        train = win.pages["Train"]
        tc, summary = train.controller, {}
        tc.finished.connect(lambda ev: summary.setdefault("summary", ev))
        tc.failed.connect(lambda msg: summary.setdefault("failed", msg))
        estimate = train.estimate_label.text()
        t0 = time.perf_counter()
        train.train_button.click()
        wait(app, lambda: summary, 3600, "the training run")
        wait(app, lambda: not tc.running, 60, "the run to wind down")
        train_s = time.perf_counter() - t0
        if "failed" in summary:
            raise SystemExit(f"training failed: {summary['failed']}")
        run = summary["summary"]
        log(f"trained: {run.step} steps in {train_s:.0f} s -> {run.checkpoint}")
        app.processEvents()
        win.grab().save(str(shots / "train.png"))

        win.show_page("Compare")
        compare = win.pages["Compare"]
        cc = compare.controller
        cc.rng.seed(args.seed)
        cc.set_models(ctx.base_model_ref, run.checkpoint)
        compare.source.setCurrentIndex(compare.source.findData("typed"))
        t0 = time.perf_counter()
        rounds = []
        for prompt in heldout:
            cc.add_typed_prompt(prompt)
            wait(app, lambda: cc.current is not None and cc.current.done, 900, "the Compare page's answers")
            rnd = cc.current
            after, before = rnd.after_side, 1 - rnd.after_side
            texts = [p.text.toPlainText() for p in compare.panes]
            ended = ["cut off" not in p.length.text() for p in compare.panes]
            order, ties = labeler_order(texts, ended)
            verdict = "tie" if ties[1] else ("left" if order[0] == 0 else "right")
            rounds.append({"prompt": prompt, "before": texts[before], "after": texts[after],
                           "before_tokens": rnd.tokens[before], "after_tokens": rnd.tokens[after],
                           "before_ended": rnd.ended[before], "after_ended": rnd.ended[after], "vote": verdict})
            cc.vote(verdict)
        compare_s = time.perf_counter() - t0
        stats = cc.stats()
        wait(app, lambda: cc.current.rewards is not None, 300, "the last round's implicit rewards")
        app.processEvents()
        win.grab().save(str(shots / "compare.png"))
        log(f"compare: {json.dumps(stats)}")
        result = {
            "seed": args.seed, "prompts": args.prompts, "heldout": len(heldout), "counts": counts,
            "estimate_shown": estimate, "steps": run.step, "checkpoint_status": run.status,
            "stats": stats, "label_s": label_s, "train_s": train_s, "compare_s": compare_s,
            "total_s": time.perf_counter() - t_start, "threads": args.threads,
            "shorter_share": sum(r["after_tokens"] < r["before_tokens"] for r in rounds) / len(rounds),
            "rounds": rounds,
        }
        ctx.shutdown()
        win.close()
    with open(work / "gui_results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
