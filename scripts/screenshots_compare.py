"""Screenshot of the Compare page: `shoot_compare_page(path)`.

A real before/after: the default model, and a checkpoint of it trained for a few DPO
steps on the Data page's sample pairs (a larger learning rate than a real run, so a few
steps visibly change the answers). The person's earlier blind votes are staged; the
answers, rewards and held-out numbers on screen are computed.

Run offscreen: QT_QPA_PLATFORM=offscreen python scripts/screenshots_compare.py [out.png]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Give me three tips for staying focused while studying."
STAGED_VOTES = [("left", 0)] * 5 + [("right", 0)] * 2 + [("tie", 0)]  # 5 wins, 2 losses, 1 tie


def _train_checkpoint(project_path: Path, out: Path) -> str:
    from dpo_engine.store.opening import open_project
    from dpo_engine.train.config import TrainConfig
    from dpo_engine.train.loop import run_training

    with open_project(project_path) as project:
        pairs = [sp.pair for sp in project.queries.training_pairs(split=None)]
        config = TrainConfig(output_dir=str(out), lr=5e-5, max_steps=4, batch_size=2, grad_accum=1,
                             eval_fraction=0.0, device="cpu", warmup_steps=0)
        summary = run_training(config, pairs)
        project.runs.add_model(summary.checkpoint, "checkpoint", parent="default")
    return summary.checkpoint


def shoot_compare_page(path: str | Path) -> Path:
    """Render the Compare page after a blind vote and save it as a PNG at `path`."""
    import PySide6  # noqa: F401  (before pyqtgraph, which otherwise tries PyQt6 first)
    from PySide6.QtWidgets import QApplication

    from app.controllers.compare_controller import CompareController
    from app.plumbing.context import AppContext
    from app.pages.compare_page import ComparePage
    from dpo_engine._compat import quiet_transformers
    from dpo_engine.devices import pick_device
    from scripts.screenshots import wait_until
    from scripts.screenshots_data import fill_project

    quiet_transformers()
    app = QApplication.instance() or QApplication([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        project_path = Path(tmp) / "screenshot.dpo.sqlite"
        fill_project(project_path)
        _train_checkpoint(project_path, Path(tmp) / "checkpoint-run1")
        ctx = AppContext(project_path, "default", pick_device("cpu"))
        page = ComparePage(ctx, CompareController(ctx))
        c = page.controller
        page.max_tokens.setValue(70)
        page.source.setCurrentIndex(2)  # only typed prompts: one round, nothing generated ahead
        page.resize(1280, 760)
        page.show()
        c.votes = list(STAGED_VOTES)
        c.add_typed_prompt(PROMPT)
        wait_until(app, lambda: c.current is not None and c.current.done and c.current.rewards is not None, 600)
        c.compute_heldout() if ctx.project.queries.training_pairs(split="eval") else None
        c.vote("left" if c.current.after_side == 0 else "right")
        wait_until(app, lambda: not ctx.runner.busy(), 300)
        for _ in range(5):
            app.processEvents()
        page.grab().save(str(path))
        page.close()
        ctx.shutdown()
    return path


if __name__ == "__main__":
    print(shoot_compare_page(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs/screenshots/compare_page.png"))
