"""`dpo-engine import | export | stats`, run in-process with click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.store.opening import open_project
from tests.store_helpers import label, sample_pairs


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_text("\n".join(json.dumps(p.to_trl()) for p in sample_pairs()), encoding="utf-8")
    return path


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n', encoding="utf-8")
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_import_then_reimport(project_file, good_file):
    first = run("import", "--project", project_file, good_file)
    assert first.exit_code == 0, first.output
    assert "5 new pairs" in first.output
    again = run("import", "--project", project_file, good_file)
    assert again.exit_code == 0 and "0 new pairs, 5 already present" in again.output


def test_rejected_rows_are_listed_and_exit_non_zero(project_file, good_file, bad_file):
    result = run("import", "--project", project_file, good_file, bad_file)
    assert result.exit_code == 2
    assert f"{bad_file}:line 2: missing key 'chosen'" in result.output
    with open_project(project_file) as project:
        assert project.queries.stats().pairs == 6  # the good rows of both files went in


def test_strict_imports_nothing(project_file, good_file, bad_file):
    result = run("import", "--project", project_file, good_file, bad_file, "--strict")
    assert result.exit_code == 2 and "nothing imported" in result.output
    with open_project(project_file) as project:
        assert project.queries.stats().comparisons == 0


def test_not_a_project_is_a_clean_error(tmp_path, good_file):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = run("import", "--project", notes, good_file)
    assert result.exit_code == 1
    assert "is not a DPO Studio project" in result.output and "Traceback" not in result.output
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("fmt,suffix", [("trl", "jsonl"), ("openai", "jsonl"), ("csv", "csv"), ("parquet", "parquet")])
def test_export_formats(project_file, good_file, tmp_path, fmt, suffix):
    run("import", "--project", project_file, good_file)
    out = tmp_path / f"out.{suffix}"
    result = run("export", "--project", project_file, "--format", fmt, out)
    assert result.exit_code == 0 and "Wrote 5 pairs" in result.output
    other = tmp_path / "other.sqlite"
    assert run("import", "--project", other, out).exit_code == 0
    with open_project(other) as project:
        assert project.queries.stats().pairs == 5


def test_export_default_is_trl_conversational(project_file, tmp_path):
    with open_project(project_file) as project:
        label(project, "Hi", "Hello!", "Go away.", "left")
    out = tmp_path / "out.jsonl"
    assert run("export", "--project", project_file, out).exit_code == 0
    assert json.loads(out.read_text()) == {"prompt": [{"role": "user", "content": "Hi"}],
                                           "chosen": [{"role": "assistant", "content": "Hello!"}],
                                           "rejected": [{"role": "assistant", "content": "Go away."}]}


def test_stats_text_and_json(project_file):
    with open_project(project_file) as project:
        label(project, "q1", "long answer", "s", "left")
        label(project, "q2", "a", "bb", "right")
        label(project, "q3", "a", "b", "tie")
    as_json = run("stats", "--project", project_file, "--json")
    stats = json.loads(as_json.output)
    assert stats["pairs"] == 2 and stats["by_verdict"]["tie"] == 1
    assert stats["position_bias"]["left_rate"] == 0.5
    text = run("stats", "--project", project_file).output
    assert "Usable pairs: 2" in text and "left won 1 of 2" in text and "chosen 6 vs rejected 1" in text


def test_stats_of_missing_project(tmp_path):
    result = run("stats", "--project", tmp_path / "nope.sqlite")
    assert result.exit_code == 1 and "does not exist" in result.output
