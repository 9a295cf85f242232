import subprocess
import sys


def test_engine_and_cli_import_no_qt():
    """The engine must run without a screen: importing it (and its CLI) loads no Qt."""
    code = (
        "import sys, dpo_engine, dpo_engine.cli, dpo_engine.models, dpo_engine.generate\n"
        "import pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(dpo_engine.__path__):\n"
        "    importlib.import_module('dpo_engine.' + m.name)\n"
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'shiboken6', 'app'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
