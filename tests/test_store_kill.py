"""kill -9 in the middle of labeling loses no acknowledged verdict and never corrupts the file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from dpo_engine.store.opening import open_project

REPO = Path(__file__).resolve().parents[1]

LABELER = """
import sys
from dpo_engine.store.opening import open_project
project = open_project(sys.argv[1])
round_ = sys.argv[2]
i = 0
while True:
    pid = project.add_prompt(f"round {round_} prompt {i}", "label")
    a = project.add_response(pid, f"answer A {i}", "tiny", {"temperature": 0.7})
    b = project.add_response(pid, f"answer B {i}", "tiny", None)
    cid = project.record_comparison(pid, a, b, "left" if i % 3 else "right", note="n" * (i % 50))
    print(cid, flush=True)  # acknowledged: record_comparison has returned
    i += 1
"""


def _label_until_killed(path, round_: int, rng: random.Random) -> list[int]:
    child = subprocess.Popen([sys.executable, "-c", LABELER, str(path), str(round_)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    first = child.stdout.readline()  # it is labeling now
    assert first.strip().isdigit(), child.stderr.read().decode()
    time.sleep(rng.uniform(0.0, 0.15))
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    lines = (first + out).decode().split("\n")
    return [int(x) for x in lines[:-1]]  # the last piece is empty or a line cut by the kill


def test_sigkill_loses_no_acknowledged_verdict(tmp_path):
    path = tmp_path / "killed.sqlite"
    rng = random.Random(1234)
    acknowledged: list[int] = []
    deadline = time.monotonic() + 8  # ~25 kills on a slow machine
    rounds = 0
    while time.monotonic() < deadline or rounds < 5:
        acknowledged += _label_until_killed(path, rounds, rng)
        rounds += 1
    with open_project(path) as project:
        conn = project.db.conn
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = {cid for (cid,) in conn.execute("SELECT id FROM comparisons")}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged verdicts lost over {rounds} kills"
    assert len(acknowledged) > rounds  # the kills really landed mid-labeling
