"""Screenshot of the export dialog after exporting the default model for Ollama:
`shoot_export_dialog(app, path)` (run offscreen, through `make screenshots`)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shoot_export_dialog(app, path: Path) -> None:
    from app.main import create_window
    from app.controllers.export_controller import ExportController
    from app.pages.export_dialog import ExportDialog
    from dpo_engine.models import default_model_dir, prepare_default_model
    from scripts.screenshots import wait_until

    prepare_default_model()
    with tempfile.TemporaryDirectory() as tmp:
        ctx, win = create_window(Path(tmp) / "shots.sqlite", "default", device="cpu")
        dialog = ExportDialog(ExportController(ctx, str(default_model_dir())), win)
        dialog.format.setCurrentIndex(dialog.format.findData("ollama"))
        dialog.path.setText(str(Path(tmp) / "exports" / "smollm2-mine"))
        dialog.show()
        dialog.start()
        wait_until(app, lambda: dialog.controller.job is None, 600, "the export to finish")
        for _ in range(5):
            app.processEvents()
        dialog.grab().save(str(path))
        dialog.close()
        ctx.shutdown()
        win.close()
