"""Crash-safe checkpoint writes: a write that dies at any point leaves the previous
checkpoint complete, and a folder whose manifest does not match is never taken."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpo_engine.atomic import CHECKPOINT_MANIFEST, find_checkpoint, read_manifest, write_checkpoint
from dpo_engine.train.checkpoints import load_trainer_state, save_trainer_state


pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


def writer(step: int, payload: bytes = b"w" * 1000):
    def write(folder: Path) -> None:
        (folder / "config.json").write_text(f'{{"step": {step}}}')
        (folder / "model.safetensors").write_bytes(payload)
    return write


def test_a_write_that_raises_midway_leaves_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    write_checkpoint(out, writer(1), {"step": 1})

    def dies_midway(folder: Path) -> None:
        (folder / "config.json").write_text('{"step": 2}')
        raise KeyboardInterrupt("killed while writing the weights")

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(out, dies_midway, {"step": 2})
    assert find_checkpoint(out) == out and read_manifest(out)["step"] == 1
    assert (out / "config.json").read_text() == '{"step": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp folder left behind


def test_a_kill_between_the_two_renames_is_recovered(tmp_path):
    out = tmp_path / "run"
    write_checkpoint(out, writer(1), {"step": 1})
    os.replace(out, tmp_path / ".run.prev")  # the first rename happened, the second did not
    assert find_checkpoint(out) == out and read_manifest(out)["step"] == 1
    write_checkpoint(out, writer(2), {"step": 2})
    assert read_manifest(out)["step"] == 2 and not (tmp_path / ".run.prev").exists()


def test_a_folder_whose_files_do_not_match_the_manifest_is_not_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    write_checkpoint(out, writer(1), {"step": 1})
    (out / "model.safetensors").write_bytes(b"short")
    assert read_manifest(out) is None and find_checkpoint(out) is None
    (out / "model.safetensors").unlink()
    (out / CHECKPOINT_MANIFEST).unlink()
    assert find_checkpoint(tmp_path / "nothing-here") is None


CHILD = """
import sys, time
from pathlib import Path
from dpo_engine.atomic import write_checkpoint
out = Path(sys.argv[1])
def first(folder):
    (folder / "model.safetensors").write_bytes(b"1" * 4096)
write_checkpoint(out, first, {"step": 1})
def slow(folder):
    with open(folder / "model.safetensors", "wb") as fh:
        for _ in range(10_000):
            fh.write(b"2" * 4096)
            fh.flush()
            Path(sys.argv[2]).touch()
            time.sleep(0.01)
write_checkpoint(out, slow, {"step": 2})
"""


def test_sigkill_during_a_write_leaves_the_previous_checkpoint(tmp_path):
    out, started = tmp_path / "run", tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(started)], cwd=Path(__file__).parent.parent)
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the child never started its second write"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert find_checkpoint(out) == out and read_manifest(out)["step"] == 1
    assert (out / "model.safetensors").read_bytes() == b"1" * 4096
    write_checkpoint(out, writer(3), {"step": 3})  # the next save cleans the dead temp folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "writing"]


def test_trainer_state_round_trips_with_weights_only_loading(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    save_trainer_state(tmp_path, opt, sched, {"step": 1, "epoch": 0, "step_in_epoch": 1})
    expected_noise = torch.rand(3)

    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1 / (s + 1))
    torch.manual_seed(123)
    position = load_trainer_state(tmp_path, opt2, sched2)
    assert position == {"step": 1, "epoch": 0, "step_in_epoch": 1}
    assert torch.equal(torch.rand(3), expected_noise)  # the RNG continues where it was saved
    assert sched2.get_last_lr() == sched.get_last_lr() == [0.05]
    state, state2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(state["exp_avg"], state2["exp_avg"]) and torch.equal(state["step"], state2["step"])
