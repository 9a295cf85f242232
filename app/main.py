"""`dpo-studio`: open the main window at once; the model loads in the background."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import platformdirs


def default_project_path() -> Path:
    return Path(platformdirs.user_data_dir("dpo-studio")) / "default.dpo.sqlite"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dpo-studio", description="Label, train with DPO, compare.")
    p.add_argument("--project", type=Path, default=None,
                   help="SQLite project file (created if missing). Default: one in your user data folder.")
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct), a local model folder, a .gguf file or a hub id.")
    p.add_argument("--device", default=None, help="auto (default), cuda, cuda:N, mps or cpu.")
    p.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16 or float16.")
    return p.parse_args(argv)


def create_window(project: Path, model_ref: str, device: str | None = None, dtype: str | None = None):
    """Build the context and the main window (a QApplication must exist)."""
    from app.plumbing.context import AppContext
    from app.main_window import MainWindow
    from dpo_engine.devices import pick_device
    from dpo_engine.models import preload_tokenizer, warm_imports

    # The torch worker thread runs Python between its ops; a shorter GIL switch interval
    # (default 5 ms) hands the GUI thread the GIL sooner, so the window stays smooth.
    sys.setswitchinterval(0.001)
    # Loading a model on the worker would import these there, holding the GIL in stretches
    # of up to ~350 ms: imported here, before the window shows, they cannot stall it.
    warm_imports(model_ref)
    tokenizer = preload_tokenizer(model_ref)  # likewise the tokenizer's GIL-holding load (~0.1-0.3 s)
    project.parent.mkdir(parents=True, exist_ok=True)
    ctx = AppContext(project, model_ref, pick_device(device, dtype))
    ctx.models.offer_tokenizer(model_ref, tokenizer)
    window = MainWindow(ctx)
    return ctx, window


# import name -> the package that provides it, where the two differ (pyproject.toml's dependencies)
PACKAGE_OF = {"PySide6": "PySide6-Essentials", "PIL": "pillow", "sqlite_utils": "sqlite-utils"}


def missing_module_message(exc: ModuleNotFoundError) -> str:
    """What to tell a person whose install lacks a module the window imports."""
    name = (exc.name or str(exc)).split(".")[0]
    package = PACKAGE_OF.get(name, name)
    return (f"DPO Studio cannot start: the Python module '{name}' is missing ({exc}).\n"
            f"Install it into the environment that runs DPO Studio:\n"
            f"  python -m pip install '{package}'\n"
            f"or reinstall the app with its dependencies (from its folder): make setup")


def startup_error_box(message: str):
    """The dialog for a project or model that cannot be opened. Plain text: a file name such as
    `<b>x<img src=y>.sqlite` is shown as written, never rendered as HTML."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Icon.Critical, "DPO Studio", message)
    box.setObjectName("startupErrorDialog")
    box.setTextFormat(Qt.TextFormat.PlainText)
    return box


def run_app(argv=None) -> int:
    args = parse_args(argv)
    import PySide6  # noqa: F401  (before pyqtgraph, which otherwise tries PyQt6 first)
    from PySide6.QtWidgets import QApplication

    from dpo_engine._compat import quiet_transformers
    from dpo_engine.errors import DPOStudioError

    quiet_transformers()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("DPO Studio")
    try:
        ctx, window = create_window(args.project or default_project_path(), args.model, args.device, args.dtype)
    except DPOStudioError as exc:
        startup_error_box(str(exc)).exec()
        return 1
    except ModuleNotFoundError as exc:  # an install without a page's dependency: say which, never a blank page
        message = missing_module_message(exc)
        print(message, file=sys.stderr)
        startup_error_box(message).exec()
        return 1
    ctx.load_active_model()  # queued first, so the status bar tracks it before pages sample
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(run_app())
