"""The export controller against a mocked view: the export and `ollama create` run on the torch
worker; `ollama create` (a fake `ollama` executable on PATH: no real Ollama here) is stopped by a
cancel and by its timeout, and its process does not outlive either."""

from __future__ import annotations

import os
import sys
import threading
import time
from unittest.mock import MagicMock

import pytest

import app.controllers.export_controller as ec
from app.controllers.export_controller import ExportController, ExportDone, OllamaDone
from app.plumbing.context import AppContext
from dpo_engine.devices import pick_device
from dpo_engine.export import ExportProgress, ExportResult

FAKE_OLLAMA = """#!{python}
import os, sys, time
from pathlib import Path
log = Path(os.environ["FAKE_OLLAMA_LOG"])
log.write_text(f"{{os.getpid()}}\\n" + " ".join(sys.argv[1:]))
print("transferring model data", flush=True)
time.sleep(float(os.environ.get("FAKE_OLLAMA_SLEEP", "0")))
print("success")
sys.exit(int(os.environ.get("FAKE_OLLAMA_EXIT", "0")))
"""


@pytest.fixture
def fake_ollama(tmp_path, monkeypatch):
    """`ollama` on PATH: records its pid and arguments, sleeps FAKE_OLLAMA_SLEEP seconds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ollama"
    exe.write_text(FAKE_OLLAMA.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "ollama.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OLLAMA_LOG", str(log))
    return log


@pytest.fixture
def host(tmp_path):
    ctx = AppContext(tmp_path / "p.sqlite", "default", pick_device("cpu"))
    yield ctx
    ctx.shutdown()


@pytest.fixture
def fake_export(monkeypatch, tmp_path):
    """export_events writing an Ollama folder's Modelfile, yielding two progress events; records its thread."""
    threads = []

    def export_events(ref, fmt, out, quant="f16", overwrite=False, project=None):
        threads.append(threading.current_thread())
        yield ExportProgress("write", 0.5, "Writing tensors")
        yield ExportProgress("done", 1.0, "Exported")
        (tmp_path / "mine").mkdir(exist_ok=True)
        (tmp_path / "mine" / "Modelfile").write_text("FROM ./mine.gguf\n")
        return ExportResult(fmt, out, ("Modelfile",), 1.0, f"ollama create mine -f {tmp_path / 'mine' / 'Modelfile'}",
                            2_000_000)

    monkeypatch.setattr("dpo_engine.export.export_events", export_events)
    return threads


def mocked_view(controller: ExportController) -> MagicMock:
    view = MagicMock()
    controller.progress.connect(view.show_progress)
    controller.exported.connect(view.show_exported)
    controller.failed.connect(view.show_failure)
    controller.cancelled.connect(view.show_cancelled)
    controller.runningChanged.connect(view.set_running)
    controller.ollamaDone.connect(view.show_ollama)
    return view


def export_then_wait(qtbot, controller, view, tmp_path) -> ExportDone:
    assert controller.start("ollama", "q8_0", str(tmp_path / "mine"))
    qtbot.waitUntil(lambda: controller.job is None, timeout=10_000)
    view.show_exported.assert_called_once()
    return view.show_exported.call_args.args[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_export_runs_on_the_worker_and_the_view_only_receives(qtbot, host, fake_export, fake_ollama, tmp_path):
    controller = ExportController(host, "some/run")
    view = mocked_view(controller)
    done = export_then_wait(qtbot, controller, view, tmp_path)
    assert fake_export and fake_export[0] is not threading.main_thread()
    assert [c.args for c in view.show_progress.call_args_list] == [(0.5, "Writing tensors"), (1.0, "Exported")]
    assert [c.args for c in view.set_running.call_args_list] == [(True,), (False,)]
    assert done.status == "Exported to {} (2.0 MB) in 1 s.".format(tmp_path / "mine")
    assert "ollama create mine -f" in done.details and done.can_create_in_ollama
    view.show_failure.assert_not_called()


def test_ollama_create_runs_the_command_and_reports_its_output(qtbot, host, fake_export, fake_ollama, tmp_path,
                                                               monkeypatch):
    threads, real_popen = [], ec.subprocess.Popen
    monkeypatch.setattr(ec.subprocess, "Popen", lambda *a, **k: threads.append(threading.current_thread())
                        or real_popen(*a, **k))
    controller = ExportController(host, "some/run")
    view = mocked_view(controller)
    export_then_wait(qtbot, controller, view, tmp_path)
    assert controller.create_in_ollama()
    qtbot.waitUntil(lambda: view.show_ollama.called, timeout=20_000)
    done: OllamaDone = view.show_ollama.call_args.args[0]
    assert done.ok and done.text.startswith("Ollama created the model.") and "success" in done.text
    assert fake_ollama.read_text().splitlines()[1] == f"create mine -f {tmp_path / 'mine' / 'Modelfile'}"
    assert threads and threads[0] is not threading.main_thread()  # not on the GUI thread
    qtbot.waitUntil(lambda: controller.job is None, timeout=5_000)
    assert view.show_ollama.call_count == 1


def test_a_failing_ollama_create_says_so_with_its_output(qtbot, host, fake_export, fake_ollama, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("FAKE_OLLAMA_EXIT", "3")
    controller = ExportController(host, "some/run")
    view = mocked_view(controller)
    export_then_wait(qtbot, controller, view, tmp_path)
    controller.create_in_ollama()
    qtbot.waitUntil(lambda: view.show_ollama.called, timeout=20_000)
    done = view.show_ollama.call_args.args[0]
    assert not done.ok and "exit code 3" in done.text and "transferring model data" in done.text


def test_ollama_create_past_its_timeout_is_killed(qtbot, host, fake_export, fake_ollama, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_OLLAMA_SLEEP", "60")
    controller = ExportController(host, "some/run", ollama_timeout_s=1.5)
    view = mocked_view(controller)
    export_then_wait(qtbot, controller, view, tmp_path)
    began = time.monotonic()
    controller.create_in_ollama()
    qtbot.waitUntil(lambda: view.show_ollama.called, timeout=30_000)
    assert 1.5 <= time.monotonic() - began < 20
    done = view.show_ollama.call_args.args[0]
    assert not done.ok and "did not finish in 1.5 s" in done.text and "transferring model data" in done.text
    assert not pid_alive(int(fake_ollama.read_text().splitlines()[0]))


def test_cancelling_ollama_create_kills_it(qtbot, host, fake_export, fake_ollama, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_OLLAMA_SLEEP", "60")
    controller = ExportController(host, "some/run")
    view = mocked_view(controller)
    export_then_wait(qtbot, controller, view, tmp_path)
    controller.create_in_ollama()
    qtbot.waitUntil(lambda: fake_ollama.is_file() and len(fake_ollama.read_text().splitlines()) == 2, timeout=20_000)
    began = time.monotonic()
    controller.cancel()
    qtbot.waitUntil(lambda: controller.job is None, timeout=20_000)
    assert time.monotonic() - began < 10  # not the fake's 60 s
    assert view.show_ollama.call_args.args[0] == OllamaDone(False, "ollama create was stopped.")
    assert not pid_alive(int(fake_ollama.read_text().splitlines()[0]))


def test_without_ollama_on_path_no_create_is_offered(qtbot, host, fake_export, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    controller = ExportController(host, "some/run")
    view = mocked_view(controller)
    assert not export_then_wait(qtbot, controller, view, tmp_path).can_create_in_ollama


def test_no_target_is_a_message_and_starts_nothing(host):
    controller = ExportController(host, "some/run")
    view = mocked_view(controller)
    assert not controller.start("gguf", "f16", "  ")
    view.show_failure.assert_called_once_with("Choose where to export first.")
    assert controller.job is None and not view.set_running.called
