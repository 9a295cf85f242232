"""Nothing lost, whatever the person does (the reliability audit's failures; the ones about
losing saved data are in test_data_loss.py). Each test failed on the code before the fix. docs/reliability.md lists them.

Full disks and read-only disks are real: a small tmpfs mounted for the test (root in CI and
here); where mounting is not allowed the test is skipped, and the SQLite "full" path is still
covered without a mount by `PRAGMA max_page_count`.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dpo_engine.atomic import find_checkpoint, prev_folder, read_manifest, write_checkpoint
from dpo_engine.cli.main import main
from dpo_engine.errors import ModelError, NotAProjectError, StoreError, TrainingError
from dpo_engine.store.opening import open_project
from tests.store_helpers import label, sample_pairs
from tests.train_helpers import make_pairs

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("private_cache")  # training caches reference log-probs there


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_pairs(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps(p.to_trl()) + "\n" for p in pairs), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- real small disks
class Disk:
    """A tmpfs of `size` at `where`: fill it, make it read-only; unmounted at teardown."""

    def __init__(self, where: Path, size: str):
        self.where = where
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")

    def fill(self) -> None:
        with open(self.where / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        try:
            with open(self.where / "filler2", "wb") as f:  # the last bytes, one at a time
                while True:
                    f.write(b"\0")
                    f.flush()
        except OSError:
            pass

    def free(self) -> None:
        for name in ("filler", "filler2"):
            (self.where / name).unlink(missing_ok=True)

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.where)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path / "disk", "4m")
    yield d
    d.unmount()


def no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# ----------------------------------------------------------------------------- 4. full disks
def test_import_onto_a_full_disk_is_a_message_and_keeps_what_was_saved(disk, tmp_path):
    project = disk.where / "p.dpo"
    assert cli("import", "--project", project, write_pairs(tmp_path / "a.jsonl", sample_pairs())).exit_code == 0
    disk.fill()
    big = write_pairs(tmp_path / "b.jsonl", make_pairs(400))
    result = cli("import", "--project", project, big)
    no_traceback(result)
    assert result.exit_code == 1 and "full" in result.output and str(project) in result.output
    disk.free()
    with open_project(project, read_only=True) as p:
        assert p.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert len(p.queries.training_pairs()) == len(sample_pairs())  # the earlier import is intact
    assert cli("import", "--project", project, big).exit_code == 0  # space again: the retry works


def test_a_full_database_is_a_store_error_that_leaves_nothing_half_written(tmp_path):
    """The same SQLite "full" error without a mount: the page cap stands in for the disk."""
    with open_project(tmp_path / "p.dpo") as project:
        project.import_pairs(sample_pairs())
        pages = project.db.conn.execute("PRAGMA page_count").fetchone()[0]
        project.db.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match="full.*Nothing of this change was written"):
            project.import_pairs(make_pairs(300))
        assert len(project.queries.training_pairs()) == len(sample_pairs())
        assert not project.db.conn.in_transaction


def test_train_output_on_a_full_disk_fails_with_a_message_and_records_it(disk, tiny_model_dir, tmp_path):
    db = tmp_path / "p.dpo"
    with open_project(db) as project:
        project.import_pairs(make_pairs(8))
    disk.fill()
    result = cli("train", "--device", "cpu", "--project", db, "--model", tiny_model_dir, "--output",
                 disk.where / "out", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1")
    no_traceback(result)
    assert result.exit_code == 1 and "full" in result.output
    assert not any(p.name.startswith((".out", "out")) for p in disk.where.iterdir())  # no half checkpoint
    with open_project(db, read_only=True) as project:
        (run,) = project.queries.runs()
        assert run.status == "failed" and "full" in run.error


def test_a_verdict_that_cannot_be_saved_is_not_acknowledged_and_the_window_says_so(qtbot, tmp_path, tiny_model_dir):
    from PySide6.QtWidgets import QMessageBox

    from app.main import create_window
    from app.controllers.label_queue import PendingPair
    from dpo_engine.generate import GenerationSettings

    ctx, window = create_window(tmp_path / "p.dpo", str(tiny_model_dir), "cpu")
    qtbot.addWidget(window)
    project = ctx.project
    pid = project.add_prompt("Say hi", "test")
    ids = [project.add_response(pid, text, "tiny") for text in ("Hi!", "Go away.")]
    page = window.pages["Label"]
    pair = PendingPair(pid, "Say hi", "Say hi", (str(tiny_model_dir),) * 2, GenerationSettings(),
                       texts=["Hi!", "Go away."], done=True, response_ids=tuple(ids))
    page.controller.current = pair
    pages = project.db.conn.execute("PRAGMA page_count").fetchone()[0]
    project.db.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here on
    project.db.conn.execute("PRAGMA cache_size = 0")
    before = project.queries.counts().comparisons
    for _ in range(50):  # fill the last free page, then the next verdict fails
        if not page.controller.judge("left"):
            break
        page.controller.current = pair
    else:
        pytest.fail("the capped database never filled up")
    box = window.findChild(QMessageBox, "saveFailedDialog")
    assert box is not None and "full" in box.text() and box.textFormat() == box.textFormat().PlainText
    assert page.controller.current is pair  # the pair stays: the person can retry
    project.db.conn.execute(f"PRAGMA max_page_count = {pages + 1000}")
    saved = project.queries.counts().comparisons
    assert page.controller.judge("left") and project.queries.counts().comparisons == saved + 1 > before
    ctx.shutdown()


# ----------------------------------------------------------------------------- 5. read-only
def test_a_new_project_in_a_read_only_folder_is_a_message(disk, tmp_path):
    disk.read_only()
    target = disk.where / "new.dpo"
    with pytest.raises(StoreError, match="read-only"):
        open_project(target)
    result = cli("import", "--project", target, write_pairs(tmp_path / "a.jsonl", sample_pairs()))
    no_traceback(result)
    assert result.exit_code == 1 and "read-only" in result.output
    assert not target.exists()


def test_an_existing_project_on_a_read_only_disk_opens_read_only(disk):
    path = disk.where / "p.dpo"
    with open_project(path) as project:
        project.import_pairs(sample_pairs())
    disk.read_only()
    with pytest.raises(StoreError, match="read-only") as refused:
        open_project(path)
    assert not isinstance(refused.value, NotAProjectError)  # it is a project, just not writable here
    with open_project(path, read_only=True) as project:
        assert len(project.queries.training_pairs()) == len(sample_pairs())
    result = cli("stats", "--project", path)
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- 6. checkpoints
def _checkpoint(out: Path, step: int, status: str = "running") -> Path:
    def write(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        (folder / "weights.safetensors").write_bytes(b"x" * 100)
    return write_checkpoint(out, write, {"step": step, "status": status})


def test_a_checkpoint_left_in_prev_is_reachable_by_model_and_resume(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", make_pairs(8))
    out = tmp_path / "run"
    first = cli("train", "--device", "cpu", "--data", data, "--model", tiny_model_dir, "--output", out,
                "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1")
    assert first.exit_code == 0, first.output
    os.replace(out, prev_folder(out))  # a kill between the two renames of the next save
    from dpo_engine.models import resolve_model_ref

    assert resolve_model_ref(str(out)).path == str(out) and read_manifest(out) is not None
    os.replace(out, prev_folder(out))
    resumed = cli("train", "--device", "cpu", "--data", data, "--resume", out)
    no_traceback(resumed)
    assert "does not exist" not in resumed.output and "Resuming" in resumed.output


def _config(out: Path, model: str = "m") -> dict:
    return {"output_dir": str(out), "model": model}


def test_a_run_left_running_by_a_crash_is_reconciled_with_its_checkpoint(tmp_path):
    db = tmp_path / "p.dpo"
    with open_project(db) as project:
        with_ckpt = project.runs.create(_config(tmp_path / "a"))
        in_prev = project.runs.create(_config(tmp_path / "b"))
        nothing = project.runs.create(_config(tmp_path / "c"))
        final = project.runs.create(_config(tmp_path / "d"))
        _checkpoint(tmp_path / "a", 3)
        _checkpoint(tmp_path / "b", 5)
        os.replace(tmp_path / "b", prev_folder(tmp_path / "b"))
        _checkpoint(tmp_path / "d", 9, "finished")
        with open_project(db) as second:  # the same process again (another thread): nothing is reconciled
            assert {r.status for r in second.queries.runs()} == {"running"}
    with open_project(db) as project:  # a new process after the crash
        runs = {r.id: r for r in project.queries.runs()}
        models = {m.ref for m in project.queries.models()}
    assert runs[with_ckpt].status == "stopped" and runs[with_ckpt].checkpoint == str(tmp_path / "a")
    assert "step 3" in runs[with_ckpt].error
    assert runs[in_prev].status == "stopped" and find_checkpoint(tmp_path / "b") == tmp_path / "b"
    assert runs[nothing].status == "failed" and "before the run wrote a checkpoint" in runs[nothing].error
    assert runs[final].status == "finished"
    assert {str(tmp_path / x) for x in "abd"} <= models


def _start_training(db: Path, tiny_model_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dpo_engine", "train", "--device", "cpu", "--project", str(db), "--model",
         str(tiny_model_dir), "--output", str(out), "--max-steps", "400", "--batch-size", "2", "--grad-accum", "1",
         "--eval-fraction", "0", *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)


def _wait_for(child: subprocess.Popen, predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if child.poll() is not None:
            pytest.fail(f"training ended before {what}: {child.stderr.read()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.05)


def test_kill_9_of_train_project_leaves_a_resumable_run(tiny_model_dir, tmp_path):
    db, out = tmp_path / "p.dpo", tmp_path / "run"
    with open_project(db) as project:
        project.import_pairs(make_pairs(16))
    child = _start_training(db, tiny_model_dir, out, "--save-every", "2")
    _wait_for(child, lambda: read_manifest(out) is not None, "checkpoint")
    child.send_signal(signal.SIGKILL)
    child.communicate()  # reaps it and closes its stderr pipe
    with open_project(db) as project:
        (run,) = project.queries.runs()
    assert run.status == "stopped" and run.checkpoint == str(out.absolute())
    assert read_manifest(out)["step"] >= 2


def test_sigterm_of_train_stops_at_the_next_step_and_saves(tiny_model_dir, tmp_path):
    db, out = tmp_path / "p.dpo", tmp_path / "run"
    with open_project(db) as project:
        project.import_pairs(make_pairs(16))
        lines = []

    def stepped() -> bool:
        lines.append(child.stderr.readline())
        return "step " in lines[-1]

    child = _start_training(db, tiny_model_dir, out, "--save-every", "1000")
    _wait_for(child, stepped, "training step")
    child.send_signal(signal.SIGTERM)
    rest = child.communicate(timeout=120)[1]
    assert child.returncode == 0, rest
    assert "Stopped at step" in rest and "Traceback" not in rest
    with open_project(db, read_only=True) as project:
        (run,) = project.queries.runs()
    assert run.status == "stopped" and read_manifest(out)["status"] == "stopped"


# ----------------------------------------------------------------------------- 7. import edge cases
def test_a_deeply_nested_line_is_a_row_error_and_the_rest_imports(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text(json.dumps(sample_pairs()[0].to_trl()) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    result = cli("import", "--project", tmp_path / "p.dpo", path)
    no_traceback(result)
    assert "1 new pairs" in result.output and "line 2" in result.output  # exit 2: some rows were rejected
    assert "nested too deeply" in result.output


@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.txt", "\n  \n"), ("empty.csv", "")])
def test_an_empty_import_file_is_an_error(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    result = cli("import", "--project", tmp_path / "p.dpo", path)
    no_traceback(result)
    assert result.exit_code != 0 and ("no rows" in result.output or "header" in result.output)


# ----------------------------------------------------------------------------- 8. bad models
@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"GGUF\x03\x00\x00\x00" + b"\xff" * 40])
def test_a_bad_gguf_file_is_a_message(tmp_path, content):
    from dpo_engine.models import load_model

    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="bad.gguf"):
        load_model(str(path))
    result = cli("generate", "--model", path, "--device", "cpu", "--prompt", "hi")
    no_traceback(result)
    assert result.exit_code == 1


def test_a_folder_with_an_unknown_model_type_is_a_message(tmp_path, tiny_model_dir):
    import shutil

    from dpo_engine.models import load_model

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="totally_new_arch", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelError, match="totally_new_arch|remote code"):
        load_model(str(folder))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_malicious_optimizer_file_is_refused_with_a_message(tmp_path, monkeypatch):
    import torch

    from dpo_engine.train.checkpoints import load_trainer_state

    monkeypatch.chdir(tmp_path)
    state = tmp_path / "ckpt" / "trainer_state"
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")
    with open(state / "optimizer.pt", "wb") as f:
        pickle.dump(_Evil(), f, protocol=2)  # torch.save's protocol (torch.load warns about others)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param])
    with pytest.raises(TrainingError, match="optimizer.pt.*asks to run code"):
        load_trainer_state(tmp_path / "ckpt", optimizer, None)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- 9. smaller ones
def test_an_empty_sqlite_file_of_another_program_is_not_called_newer(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(NotAProjectError, match="another program"):
        open_project(path)


def test_refusing_a_damaged_wal_file_leaves_no_wal_or_shm(tmp_path):
    path = tmp_path / "p.dpo"
    with open_project(path) as project:
        for i in range(60):
            label(project, f"prompt {i} " + "x" * 500, "a" * 300, "b" * 300, "left")
    data = bytearray(path.read_bytes())
    data[8192:16384] = os.urandom(8192)  # damage pages 3-4; the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(NotAProjectError):
        open_project(path)
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


def test_invalid_utf8_inside_a_project_does_not_break_stats_or_export(tmp_path):
    path = tmp_path / "p.dpo"
    with open_project(path) as project:
        project.import_pairs(sample_pairs())
    conn = sqlite3.connect(path)
    conn.execute("UPDATE responses SET text = CAST(x'48c328ff21' AS TEXT) WHERE id = 1")
    conn.commit()
    conn.close()
    stats = cli("stats", "--project", path)
    assert stats.exit_code == 0, stats.output
    exported = cli("export", "--project", path, tmp_path / "out.jsonl")
    assert exported.exit_code == 0, exported.output
    assert "\ufffd" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")


def test_the_startup_error_dialog_shows_a_file_name_as_text(qtbot):
    from PySide6.QtCore import Qt

    from app.main import startup_error_box

    box = startup_error_box("<b>BIG<img src=x>.sqlite is not a DPO Studio project")
    assert box.textFormat() == Qt.TextFormat.PlainText and "<b>BIG" in box.text()


def test_the_prompt_boxes_take_a_long_pasted_prompt(qtbot, tmp_path, tiny_model_dir):
    from app.main import create_window

    ctx, window = create_window(tmp_path / "p.dpo", str(tiny_model_dir), "cpu")
    qtbot.addWidget(window)
    long = "word " * 8000  # 40,000 characters
    for name in ("Label", "Compare"):
        box = window.pages[name].prompt_input
        box.setText(long)
        assert box.text() == long
    ctx.shutdown()


def test_a_prompt_longer_than_the_context_is_a_message(tiny_loaded):
    from dpo_engine.errors import ConfigError
    from dpo_engine.generate import GenerationSettings, generate

    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    with pytest.raises(ConfigError, match="context length"):
        generate(model, tok, "x" * 5000, settings=GenerationSettings(max_new_tokens=4))
    near = "x" * (model.config.max_position_embeddings - 60)  # room for a few tokens only
    result = generate(model, tok, near, settings=GenerationSettings(max_new_tokens=500, temperature=0))
    assert result.token_counts[0] <= 60


def test_a_bulk_flip_is_one_transaction_all_or_nothing(tmp_path, monkeypatch):
    from app.controllers.data_controller import DataController

    path = tmp_path / "p.dpo"
    with open_project(path) as project:
        ids = [label(project, f"prompt {i}", "a", "b", "left") for i in range(5)]
    controller = DataController(path)
    real, calls = controller.project.set_verdict, []

    def fails_on_the_fourth(cid, verdict):
        calls.append(cid)
        if len(calls) == 4:
            raise StoreError("Not saved: the disk is full.")
        real(cid, verdict)

    monkeypatch.setattr(controller.project, "set_verdict", fails_on_the_fourth)
    with pytest.raises(StoreError):
        controller.flip(ids)
    assert {controller.project.queries.comparison(c).verdict for c in ids} == {"left"}  # none flipped
    assert not controller.undo_stack
    monkeypatch.setattr(controller.project, "set_verdict", real)
    assert controller.flip(ids) == 5 and {controller.project.queries.comparison(c).verdict for c in ids} == {"right"}
    controller.close()
