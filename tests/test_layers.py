import subprocess
import sys


def test_engine_and_cli_import_no_qt():
    """The engine must run without a screen: importing it (and its CLI) loads no Qt."""
    code = (
        "import sys, dpo_engine, dpo_engine.cli.main, dpo_engine.models, dpo_engine.generate\n"
        "import pkgutil, importlib\n"
        "for m in pkgutil.walk_packages(dpo_engine.__path__, 'dpo_engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'shiboken6', 'app'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_command_module_imports_first():
    """No import order to work around: each CLI and training module can be the first one imported."""
    first = ["dpo_engine.cli.train", "dpo_engine.cli.eval", "dpo_engine.cli.data", "dpo_engine.train.distributed",
             "dpo_engine.train.step", "dpo_engine.store.formats"]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in first:  # one fresh interpreter each, so nothing was imported before
        subprocess.run([sys.executable, "-c", code, name], check=True)
