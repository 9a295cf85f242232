"""Screenshot of the Data page with a small, realistic project: `shoot_data_page(path)`.

Run offscreen: QT_QPA_PLATFORM=offscreen python scripts/screenshots_data.py [out.png]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

EXAMPLES = [  # (prompt, left answer, right answer, verdict, note)
    ("Explain DPO in one sentence.",
     "DPO fine-tunes a language model directly on pairs of preferred and rejected answers, "
     "without training a separate reward model.",
     "DPO is a kind of database.", "left", None),
    ("Write a haiku about autumn.", "Leaves fall, soft and red\nthe wind carries them away\nquiet evening sky",
     "Autumn is a season that comes after summer and before winter.", "left", None),
    ("What is the capital of Australia?", "Sydney.", "Canberra is the capital of Australia.", "right",
     "Sydney is a common mistake"),
    ("Give me a tip for better sleep.", "Keep a regular schedule, even on weekends.",
     "Go to bed at the same time every day.", "tie", None),
    ("Summarise the plot of Hamlet.", "A dog goes to the park.", "It is a play.", "both_bad", None),
    ("How do I reverse a list in Python?", "Use my_list[::-1] for a copy, or my_list.reverse() in place.",
     "You can't.", "left", None),
    ("Translate 'good morning' into French.", "Bonsoir.", "Bonjour.", "right", None),
    ("Name three primary colours.", "Red, yellow and blue.", "Red, green and purple.", "left", None),
]
IMPORTED = [
    ("Is 17 a prime number?", "Yes, 17 is prime: its only divisors are 1 and 17.", "No, 17 = 3 × 6."),
    ("What does HTTP stand for?", "HyperText Transfer Protocol.", "High Transfer Text Process."),
    ("Suggest a name for a cat.", "Miso.", "Cat."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red (Rayleigh scattering).", "Because of the sea."),
]


def fill_project(path: Path) -> None:
    from dpo_engine.pairs import PreferencePair
    from dpo_engine.store.opening import open_project

    with open_project(path) as project:
        project.import_pairs([PreferencePair(((("user", p),)), c, r) for p, c, r in IMPORTED])
        for prompt, left, right, verdict, note in EXAMPLES:
            pid = project.add_prompt(prompt, "starter")
            a = project.add_response(pid, left, "SmolLM2-135M-Instruct", {"temperature": 0.8})
            b = project.add_response(pid, right, "SmolLM2-135M-Instruct", {"temperature": 0.8})
            project.record_comparison(pid, a, b, verdict, note=note)


def shoot_data_page(path: str | Path) -> Path:
    """Render the Data page over a sample project and save it as a PNG at `path`."""
    import PySide6  # noqa: F401  (before pyqtgraph, which otherwise tries PyQt6 first)
    from PySide6.QtWidgets import QApplication

    from app.controllers.data_controller import DataController
    from app.plumbing.context import AppContext
    from app.pages.data_page import DataPage
    from dpo_engine.devices import pick_device

    app = QApplication.instance() or QApplication([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        project_path = Path(tmp) / "screenshot.dpo.sqlite"
        fill_project(project_path)
        ctx = AppContext(project_path, "default", pick_device("cpu"))
        page = DataPage(ctx, DataController(project_path, on_changed=ctx.comparisonsChanged.emit, submit=ctx.submit))
        page.resize(1280, 760)
        page.show()
        page.select_id(page.controller.model.row_at(5).id)  # the Australia question, with a note
        app.processEvents()
        page.grab().save(str(path))
        page.controller.close()
        page.close()
        ctx.shutdown()
    return path


if __name__ == "__main__":
    print(shoot_data_page(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots/data_page.png"))
