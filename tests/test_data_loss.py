"""Issue 18, items 1 and 3: an export never replaces a project, and a project file is locked
as a file (device + inode), not as a name. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.errors import DataError, ProjectLockedError
from dpo_engine.outputs import check_output_path
from dpo_engine.store.formats import export_pairs
from dpo_engine.store.lock import ProcessLock
from dpo_engine.store.opening import open_project
from tests.store_helpers import label


@pytest.fixture
def labeled(project_file):
    with open_project(project_file) as project:
        for i in range(3):
            label(project, f"question {i}", f"good {i}", f"bad {i}", "left")
        label(project, "a tie", "x", "y", "tie")
    return project_file


def _counts(path) -> tuple[int, int]:
    with open_project(path, read_only=True) as project:
        s = project.queries.stats()
        return s.comparisons, s.pairs


def test_cli_export_onto_the_project_is_refused_and_the_project_survives(labeled):
    before = _counts(labeled)
    result = CliRunner().invoke(main, ["export", "--project", str(labeled), str(labeled)])
    assert result.exit_code == 1, result.output
    assert "is the file being read" in result.output and "Traceback" not in result.output
    assert _counts(labeled) == before == (4, 3)  # the tie is still there: the file is still the project


def test_export_onto_a_hard_link_of_the_project_is_refused(labeled, tmp_path):
    link = tmp_path / "other-name.jsonl"
    os.link(labeled, link)
    result = CliRunner().invoke(main, ["export", "--project", str(labeled), str(link)])
    assert result.exit_code == 1 and "is the file being read" in result.output
    assert _counts(labeled) == (4, 3)


def test_export_onto_another_sqlite_database_is_refused(labeled, tmp_path):
    other = tmp_path / "someone-elses.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()
    conn.close()
    with open_project(labeled, read_only=True) as project, pytest.raises(DataError, match="SQLite database"):
        export_pairs(project, other)
    conn = sqlite3.connect(other)
    assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]  # untouched
    conn.close()


def test_export_to_a_new_file_still_works(labeled, tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(main, ["export", "--project", str(labeled), str(out)])
    assert result.exit_code == 0, result.output
    assert len([json.loads(line) for line in out.read_text().splitlines()]) == 3
    assert check_output_path(out, [labeled]) == out  # an earlier export may be replaced


def test_a_hard_linked_project_is_refused_for_writing_but_opens_read_only(labeled, tmp_path):
    link = tmp_path / "q.sqlite"
    os.link(labeled, link)
    for name in (labeled, link):
        with pytest.raises(ProjectLockedError, match="hard links"):
            open_project(name)
    assert _counts(link) == (4, 3)
    os.unlink(link)
    with open_project(labeled) as project:  # one name again: writable
        label(project, "after", "a", "b", "right")
    assert _counts(labeled) == (5, 4)


def test_the_lock_is_the_file_not_the_name(labeled, tmp_path):
    alias = tmp_path / "alias.sqlite"
    alias.symlink_to(labeled)
    a, b = ProcessLock(labeled), ProcessLock(alias)
    try:
        assert a.key == b.key == (os.stat(labeled).st_dev, os.stat(labeled).st_ino)
    finally:
        a.release()
        b.release()


HOLDER = "import sys\nfrom dpo_engine.store.opening import open_project\np = open_project(sys.argv[1])\nprint('open', flush=True)\nsys.stdin.read()\n"


def test_another_process_through_a_symlink_is_locked_out(labeled, tmp_path):
    alias = tmp_path / "alias.sqlite"
    alias.symlink_to(labeled)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(labeled)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(ProjectLockedError, match=f"pid {child.pid}"):
            open_project(alias)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        child.stdout.close()
