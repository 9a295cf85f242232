"""Import and export: every bad-row reason, strictness, dedupe, round trips, 10k-row speed."""

from __future__ import annotations

import json

import pytest

from dpo_engine.errors import DataError
from dpo_engine.store.formats import PAIR_FILE_FORMATS, RowError, export_pairs, import_file, read_rows
from dpo_engine.pairs import PreferencePair
from dpo_engine.store.opening import open_project
from tests.store_helpers import sample_pairs

GOOD_1 = b'{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}'
GOOD_3 = b'{"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}'


def _jsonl(bad: bytes) -> bytes:
    return b"\n".join([GOOD_1, bad, GOOD_3]) + b"\n"


def _csv(bad: bytes) -> bytes:
    return b"prompt,chosen,rejected\n" + bad + b"\nHi,Hello!,Go away.\n2+2?,4,5\n"


# Each reason: (file suffix, file bytes with the bad row on line 2, words the reason must contain)
CATALOG = {
    "invalid JSON": (".jsonl", _jsonl(b'{"prompt": "a", "chosen": "b",'), "invalid JSON"),
    "missing key": (".jsonl", _jsonl(b'{"prompt": "a", "chosen": "b"}'), "missing key 'rejected'"),
    "wrong type": (".jsonl", _jsonl(b'{"prompt": "a", "chosen": 1, "rejected": "c"}'), "must be strings"),
    "not an object": (".jsonl", _jsonl(b'["a", "b", "c"]'), "must be a JSON object"),
    "empty field": (".jsonl", _jsonl(b'{"prompt": "a", "chosen": "  ", "rejected": "c"}'), "chosen is empty"),
    "chosen == rejected": (".jsonl", _jsonl(b'{"prompt": "a", "chosen": "same", "rejected": "same"}'), "identical"),
    "over-long field": (".jsonl", _jsonl(b'{"prompt": "a", "chosen": "' + b"x" * 200_001 + b'", "rejected": "c"}'),
                        "over-long"),
    "invalid UTF-8": (".jsonl", _jsonl(b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}'), "invalid Unicode"),
    "lone surrogate": (".jsonl", _jsonl(b'{"prompt": "\\ud800", "chosen": "b", "rejected": "c"}'), "invalid Unicode"),
    "bad role": (".jsonl", _jsonl(b'{"prompt": [{"role": "wizard", "content": "a"}], "chosen": "b", "rejected": "c"}'),
                 "unknown role"),
    "csv field count": (".csv", _csv(b"a,b"), "wrong number of fields"),
    "csv invalid UTF-8": (".csv", _csv(b"caf\xe9,b,c"), "invalid Unicode"),
    "csv empty field": (".csv", _csv(b"a,,c"), "chosen is empty"),
    "prompt list invalid UTF-8": (".txt", b"first\n\xff\xfe bad\nthird\n", "invalid Unicode"),
}


@pytest.mark.parametrize("reason", list(CATALOG))
def test_bad_row_is_reported_by_line_and_good_rows_import(fresh_db, tmp_path, reason):
    suffix, data, words = CATALOG[reason]
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data)
    report = import_file(fresh_db, path)
    assert [e.line for e in report.errors] == [2]
    assert words in report.errors[0].reason
    assert report.added == 2 and report.rows == 3
    assert f"{path}:line 2: " in report.lines()[1]


def test_strict_imports_nothing_when_any_row_is_bad(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(CATALOG["missing key"][1])
    report = import_file(fresh_db, path, strict=True)
    assert report.refused and report.added == 0 and len(report.errors) == 1
    assert fresh_db.queries.stats().comparisons == 0 and fresh_db.queries.stats().prompts == 0


def test_reimport_adds_nothing_and_bom_is_tolerated(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl(GOOD_1))  # GOOD_1 twice: the repeat is a duplicate
    first = import_file(fresh_db, path)
    assert (first.added, first.duplicates, first.errors) == (2, 1, [])
    again = import_file(fresh_db, path)
    assert (again.added, again.duplicates) == (0, 3)
    assert fresh_db.queries.stats().comparisons == 2


def test_openai_and_implicit_prompt_records_import(fresh_db, tmp_path):
    openai = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
              "preferred_output": [{"role": "assistant", "content": "Hello"}],
              "non_preferred_output": [{"role": "assistant", "content": "Bye"}]}
    implicit = {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (openai, implicit)), encoding="utf-8")
    assert import_file(fresh_db, path).added == 2
    assert {p.pair for p in fresh_db.queries.training_pairs(None)} == {
        PreferencePair((("user", "Hi"),), "Hello", "Bye"), PreferencePair((("user", "Q"),), "A", "B")}


@pytest.mark.parametrize("suffix,data", [
    (".txt", "Tell me a joke.\n\n  \nWhat is DPO?\r\nTell me a joke.\n"),
    (".jsonl", '{"prompt": "Tell me a joke."}\n{"prompt": [{"role": "user", "content": "What is DPO?"}]}\n'),
    (".csv", "prompt\nTell me a joke.\nWhat is DPO?\n"),
])
def test_prompt_lists_import_as_labeling_prompts(fresh_db, tmp_path, suffix, data):
    path = tmp_path / f"prompts{suffix}"
    path.write_text(data, encoding="utf-8")
    report = import_file(fresh_db, path)
    assert report.kind == "prompts" and report.added == 2 and not report.errors
    assert sorted(p.prompt for p in fresh_db.queries.prompts()) == [(("user", "Tell me a joke."),),
                                                                     (("user", "What is DPO?"),)]
    assert fresh_db.queries.stats().comparisons == 0


def test_csv_line_numbers_count_embedded_newlines(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b'prompt,chosen,rejected\n"multi\nline\nprompt",a,b\nx,y,y\n')
    _, rows, errors = read_rows(path)
    assert [n for n, _ in rows] == [2] and errors == [RowError(5, "chosen and rejected are identical")]


def test_whole_file_problems_raise(tmp_path):
    (tmp_path / "a.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown file type"):
        read_rows(tmp_path / "a.xlsx")
    (tmp_path / "b.csv").write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match="header must name prompt"):
        read_rows(tmp_path / "b.csv")
    with pytest.raises(DataError, match="cannot read"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "c.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="as Parquet"):
        read_rows(tmp_path / "c.parquet")


def _as_chat(pair: PreferencePair) -> PreferencePair:
    return PreferencePair(tuple((m["role"], m["content"]) for m in pair.messages), pair.chosen, pair.rejected)


@pytest.mark.parametrize("fmt", PAIR_FILE_FORMATS)
def test_export_then_import_round_trips(fresh_db, tmp_path, fmt):
    pairs = sample_pairs()
    fresh_db.import_pairs(pairs)
    out = tmp_path / f"out.{ {'trl': 'jsonl', 'openai': 'jsonl'}.get(fmt, fmt) }"
    assert export_pairs(fresh_db, out, fmt) == len(pairs)
    with open_project(":memory:") as other:
        report = import_file(other, out)
        assert report.errors == [] and report.added == len(pairs)
        back = {p.pair for p in other.queries.training_pairs(None)}
    lossless = fmt in ("trl", "csv")  # OpenAI and mixed Parquet carry chat prompts only
    assert back == ({*pairs} if lossless else {_as_chat(p) for p in pairs})


def test_parquet_of_plain_pairs_stays_plain(fresh_db, tmp_path):
    pairs = [p for p in sample_pairs() if not p.conversational]
    fresh_db.import_pairs(pairs)
    export_pairs(fresh_db, tmp_path / "plain.parquet", "parquet")
    _, rows, _ = read_rows(tmp_path / "plain.parquet")
    assert {p for _, p in rows} == set(pairs)


def test_ten_thousand_rows_with_bad_ones_import_all_the_good_ones(tmp_path):
    """Every bad line reported by its number, every good one imported (the time it takes:
    bench/catalog_listing.py)."""
    bad_lines = {17: b'{"prompt": "x", "chosen": "y"}', 2500: b"{not json", 4999: b'{"prompt": "x", "chosen": "\xff", '
                 b'"rejected": "z"}', 7777: b'{"prompt": "x", "chosen": "same", "rejected": "same"}',
                 10000: b'{"prompt": "", "chosen": "a", "rejected": "b"}'}
    lines = []
    for n in range(1, 10_001):
        record = {"prompt": [{"role": "user", "content": f"Question {n}: why is the sky blue?"}],
                  "chosen": [{"role": "assistant", "content": f"Rayleigh scattering ({n})." * 3}],
                  "rejected": [{"role": "assistant", "content": f"Because it is ({n})."}]}
        lines.append(bad_lines.get(n, json.dumps(record).encode()))
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines))
    with open_project(tmp_path / "big.sqlite") as project:
        report = import_file(project, path)
        assert [e.line for e in report.errors] == sorted(bad_lines)
        assert report.added == 10_000 - len(bad_lines) == len(project.queries.training_pairs(None))
