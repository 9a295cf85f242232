"""Regenerate the README screenshots (run offscreen: `make screenshots`).

Uses the real default model, so the Label page shows real SmolLM2 answers.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT))


def wait_until(app, condition, timeout: float, what: str = "the window to reach the state to photograph") -> None:
    """Run the event loop until `condition()` holds; TimeoutError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def shoot_label_page(app, path: Path) -> None:
    from app.main import create_window

    with tempfile.TemporaryDirectory() as tmp:
        ctx, win = create_window(Path(tmp) / "shots.sqlite", "default", device="cpu")
        page = win.pages["Label"]
        page.max_tokens.setValue(90)
        page.controller.queue.prefetch = 0  # photograph one pair; don't sample ahead
        ctx.load_active_model()
        win.show()
        wait_until(app, lambda: page.controller.current is not None and page.controller.current.done, 300)
        for _ in range(5):
            app.processEvents()
        win.grab().save(str(path))
        ctx.shutdown()
        win.close()


def shoot_train_page(app, path: Path) -> None:
    """The Train page mid-run: the default model training on the Data page's sample pairs."""
    from app.main import create_window
    from scripts.screenshots_data import fill_project

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "shots.sqlite"
        fill_project(project)
        ctx, win = create_window(project, "default", device="cpu")
        win.show()
        win.show_page("Train")
        page = win.pages["Train"]
        page.fields["epochs"].setValue(20)  # 20 steps of 8 pairs: long enough to photograph at step 12
        page.fields["eval_every"].setValue(3)
        page.fields["max_length"].setValue(256)
        page.fields["lr"].setValue(2e-5)  # a visible move in a few steps of a screenshot run
        page.train_button.click()
        wait_until(app, lambda: page.controller.last_step >= 12, 900)
        wait_until(app, lambda: True, 1)
        for _ in range(30):  # let the plot timer redraw
            app.processEvents()
            time.sleep(0.02)
        win.grab().save(str(path))
        page.controller.stop()
        wait_until(app, lambda: not page.controller.running, 300)
        ctx.shutdown()
        win.close()


def main() -> None:
    from PySide6.QtWidgets import QApplication

    from dpo_engine._compat import quiet_transformers

    quiet_transformers()
    OUT.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])
    which = set(sys.argv[1:]) or {"label", "data", "train", "compare", "models", "export"}
    if "label" in which:
        shoot_label_page(app, OUT / "label_page.png")
    if "data" in which:
        from scripts.screenshots_data import shoot_data_page

        shoot_data_page(OUT / "data_page.png")
    if "train" in which:
        shoot_train_page(app, OUT / "train_page.png")
    if "compare" in which:
        from scripts.screenshots_compare import shoot_compare_page

        shoot_compare_page(OUT / "compare_page.png")
    if "models" in which:
        from scripts.screenshots_models import shoot_model_picker

        shoot_model_picker(OUT / "model_picker.png")
    if "export" in which:
        from scripts.screenshots_export import shoot_export_dialog

        shoot_export_dialog(app, OUT / "export_dialog.png")
    print(f"screenshots written to {OUT}")


if __name__ == "__main__":
    main()
