"""Which files of this repository a verdict key crosses until the next pair is on screen.

Opens the window offscreen on a tiny random model (nothing downloaded), waits until the
next pair is sampled ahead, presses 2 (pairwise mode) and records every function of the
repository that runs on the GUI thread, in order, until the Label page has shown the next
pair. docs/architecture.md ("How a verdict travels") gives the count.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/press_path.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHOWN = {"_on_controller_pairShown", "_on_controller_pairReady"}  # the page presenting a pair


def main() -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from app.main import create_window
    from tests.tiny_model import build_tiny_model

    os.environ["DPO_STUDIO_CACHE"] = tempfile.mkdtemp()  # the pace memory, away from the user's cache
    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp())
    ctx, win = create_window(tmp / "p.sqlite", str(build_tiny_model(tmp / "tiny")), device="cpu")
    page = win.pages["Label"]
    page.max_tokens.setValue(8)
    win.show()
    c = page.controller
    end = time.monotonic() + 120
    while not (c.current is not None and c.current.done and c.queue.pairs and c.queue.pairs[0].done):
        if time.monotonic() > end:
            raise TimeoutError("no pair sampled ahead")
        app.processEvents()
        time.sleep(0.01)

    calls: list[tuple[str, str, int]] = []  # (file, function, depth) on the GUI thread, in call order
    gui, depth = threading.get_ident(), [0]

    def profile(frame, event, _arg):
        if threading.get_ident() != gui or event not in ("call", "return"):
            return
        depth[0] += 1 if event == "call" else -1
        path = Path(frame.f_code.co_filename)  # "<string>": code made at run time (a dataclass's __init__)
        if event == "call" and path.is_absolute() and path.resolve().is_relative_to(ROOT) \
                and ".venv" not in path.parts:
            path = path.resolve()
            calls.append((str(path.relative_to(ROOT)), frame.f_code.co_name, depth[0]))

    sys.setprofile(profile)
    QTest.keyClick(page, Qt.Key.Key_2)
    sys.setprofile(None)
    ctx.shutdown()

    last = max(i for i, (_, fn, _) in enumerate(calls) if fn in SHOWN)
    cut = last  # the last call made inside the page's last presenting of the pair
    while cut + 1 < len(calls) and calls[cut + 1][2] > calls[last][2]:
        cut += 1
    label: dict[str, list[str]] = {}  # file -> functions, on the Label page's own path
    others: dict[str, list[str]] = {}  # what other pages run meanwhile (comparisonsChanged listeners)
    inside_other = None  # the depth of the other page's handler being run
    for f, fn, d in calls[:cut + 1]:
        if inside_other is not None and d <= inside_other:
            inside_other = None
        if inside_other is None and f.startswith("app/pages/") and f != "app/pages/label_page.py":
            inside_other = d
        fns = (others if inside_other is not None else label).setdefault(f, [])
        if fn not in fns:
            fns.append(fn)
    app_files = [f for f in label if f.startswith("app/")]
    print(f"Until the next pair is shown: {len(label)} files on the Label path, {len(app_files)} of them in app/")
    for f, fns in label.items():
        print(f"  {f}: {', '.join(fns[:8])}")
    print(f"and {len(others)} files run by other pages listening to comparisonsChanged:")
    for f, fns in others.items():
        print(f"  {f}: {', '.join(fns[:8])}")
    after = list(dict.fromkeys(f for f, _, _ in calls[cut + 1:]))
    print(f"Then (topping up the queue, progress): {', '.join(after)}")


if __name__ == "__main__":
    main()
