"""Import and export of preference pairs and prompt lists.

Import reads TRL standard/conversational and OpenAI preference JSONL, CSV
(`prompt,chosen,rejected`), Parquet, and prompt lists (`.txt` one per line, or JSONL /
CSV / Parquet with only `prompt`). Decoding is strict UTF-8 (a BOM is tolerated). Each bad
row becomes a `RowError` with its line (or row) number and reason; the good rows go into
the project in one transaction, or none at all in strict mode. Whole-file problems
(unreadable, unknown type, a CSV without the columns) raise `DataError`.

Export writes the usable pairs as `trl` (TRL conversational JSONL), `openai`, `csv` or
`parquet`; importing what was exported gives back the same pairs. In CSV a conversational
prompt is its messages as JSON; OpenAI records and mixed Parquet files hold only chat
prompts, so a plain prompt comes back as one user message there.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dpo_engine.atomic import staged
from dpo_engine.errors import DataError, storage_problem
from dpo_engine.outputs import check_output_path
from dpo_engine.pairs import PreferencePair, parse_preference_record
from dpo_engine.store.project import Project, normalize_prompt

PAIR_FILE_FORMATS = ("trl", "openai", "csv", "parquet")
PAIR_KEYS = ("chosen", "rejected", "preferred_output", "non_preferred_output", "input")
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based line in a text file; row (1-based, after the header) in Parquet
    reason: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.reason}"


@dataclass
class ImportReport:
    path: str
    kind: str = "pairs"  # "pairs" or "prompts"
    rows: int = 0  # non-blank rows read
    added: int = 0
    duplicates: int = 0  # already in the project (or repeated in the file)
    errors: list[RowError] = field(default_factory=list)
    refused: bool = False  # strict mode found bad rows and imported nothing
    failure: str = ""  # a whole-file problem (set by callers that go on with other files)

    def summary(self) -> str:
        if self.failure:
            return f"{self.path}: not imported: {self.failure}"
        what = "pairs" if self.kind == "pairs" else "prompts"
        text = f"{self.path}: {self.rows} rows, {self.added} new {what}, {self.duplicates} already present"
        if self.errors:
            text += f", {len(self.errors)} rejected"
            if self.refused:
                text += " (strict: nothing imported)"
        return text

    def lines(self) -> list[str]:
        """The summary, then one line per rejected row: `path:line N: reason`."""
        return [self.summary()] + [f"{self.path}:{e}" for e in self.errors]


# ----------------------------------------------------------------------------- reading
TOO_DEEP = "nested too deeply to be a pair or a prompt (JSON nesting over Python's recursion limit)"


def _check_unicode(*texts: Any) -> None:
    """A JSON `\\ud800` escape or an undecodable CSV byte leaves a lone surrogate."""
    try:
        json.dumps(texts, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"invalid Unicode (lone surrogate at character {exc.start})") from None


def _decoded_lines(data: bytes) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None, error) for each line, decoded strictly one by one."""
    data = data[len(BOM):] if data.startswith(BOM) else data
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r"), ""
        except UnicodeDecodeError as exc:
            yield number, None, f"invalid Unicode (not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def _pair_or_prompt(record: Any, kind: str):
    if kind == "pairs":
        pair = parse_preference_record(record)
        _check_unicode(pair.prompt, pair.chosen, pair.rejected)
        return pair
    if not isinstance(record, dict) or "prompt" not in record:
        raise DataError("missing key 'prompt'")
    prompt = record["prompt"]
    normalize_prompt(prompt)  # validates: type, emptiness, length, roles
    _check_unicode(prompt)
    return prompt


def _guess_kind(records: list) -> str:
    first = next((r for r in records if isinstance(r, dict)), {})
    return "prompts" if "prompt" in first and not any(k in first for k in PAIR_KEYS) else "pairs"


def _read_jsonl(data: bytes, rows: list, errors: list[RowError]) -> str:
    parsed = []
    for number, text, error in _decoded_lines(data):
        if error:
            errors.append(RowError(number, error))
        elif text.strip():
            try:
                parsed.append((number, json.loads(text)))
            except json.JSONDecodeError as exc:
                errors.append(RowError(number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            except RecursionError:
                errors.append(RowError(number, TOO_DEEP))
    kind = _guess_kind([r for _, r in parsed])
    _collect(parsed, kind, rows, errors)
    return kind


def _collect(records, kind: str, rows: list, errors: list[RowError], unit: str = "line") -> None:
    for number, record in records:
        try:
            rows.append((number, _pair_or_prompt(record, kind)))
        except DataError as exc:
            errors.append(RowError(number, str(exc), unit))
        except RecursionError:
            errors.append(RowError(number, TOO_DEEP, unit))


def _read_txt(data: bytes, rows: list, errors: list[RowError]) -> str:
    for number, text, error in _decoded_lines(data):
        if error:
            errors.append(RowError(number, error))
        elif text.strip():
            _collect([(number, {"prompt": text})], "prompts", rows, errors)
    return "prompts"


def _csv_prompt(value: str):
    """A prompt cell: chat messages when it holds a JSON list of messages, else text."""
    if value.lstrip().startswith("[{"):
        try:
            messages = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(messages, list) and all(isinstance(m, dict) and "role" in m for m in messages):
            return messages
    return value


def _read_csv(data: bytes, rows: list, errors: list[RowError]) -> str:
    data = data[len(BOM):] if data.startswith(BOM) else data
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))  # the pair parser reports over-long fields
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    kind = "pairs" if {"prompt", "chosen", "rejected"} <= set(header) else "prompts"
    if "prompt" not in header:
        raise DataError(f"the CSV header must name prompt,chosen,rejected (or prompt alone for a prompt list); "
                        f"found {','.join(header) or 'nothing'}")
    start = reader.line_num + 1
    for cells in reader:
        number, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            errors.append(RowError(number, f"wrong number of fields: expected {len(header)}, got {len(cells)}"))
        elif any("\udc80" <= ch <= "\udcff" for c in cells for ch in c):
            errors.append(RowError(number, "invalid Unicode (not UTF-8)"))
        else:
            record = dict(zip(header, cells))
            record["prompt"] = _csv_prompt(record["prompt"])
            _collect([(number, record)], kind, rows, errors)
    return kind


def _read_parquet(path: Path, rows: list, errors: list[RowError]) -> str:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None
    kind = _guess_kind(records)
    _collect(list(enumerate(records, 1)), kind, rows, errors, unit="row")
    return kind


def read_rows(path: str | Path) -> tuple[str, list[tuple[int, Any]], list[RowError]]:
    """Parse a file without touching any project.

    Returns:
        (kind, [(line, PreferencePair or prompt)], [RowError]); kind is "pairs" or "prompts".
    """
    path = Path(path)
    suffix = path.suffix.lower()
    rows: list = []
    errors: list[RowError] = []
    readers = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv,
               ".txt": _read_txt}
    if suffix == ".parquet":
        kind = _read_parquet(path, rows, errors)
    elif suffix not in readers:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'}; use .jsonl, .csv, .parquet or .txt")
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}") from None
        kind = readers[suffix](data, rows, errors)
    if not rows and not errors:
        raise DataError(f"{path} holds no rows (it is empty or blank): nothing to import. Give a file with "
                        "pairs (prompt, chosen, rejected) or prompts.")
    return kind, rows, errors


def import_file(project: Project, path: str | Path, strict: bool = False) -> ImportReport:
    """Import one file into `project` (good rows in one transaction; none if strict and any is bad)."""
    kind, rows, errors = read_rows(path)
    report = ImportReport(str(path), kind, len(rows) + len(errors), errors=sorted(errors, key=lambda e: e.line))
    if strict and errors:
        report.refused = True
        return report
    values = [v for _, v in rows]
    if kind == "pairs":
        report.added, report.duplicates = project.import_pairs(values, source="import")
    else:
        before = project.db["prompts"].count
        project.add_prompts(values, source=f"import:{Path(path).name}")
        report.added = project.db["prompts"].count - before
        report.duplicates = len(values) - report.added
    return report


# ----------------------------------------------------------------------------- writing
def _openai(pair: PreferencePair) -> dict:
    return {"input": {"messages": pair.messages},
            "preferred_output": [{"role": "assistant", "content": pair.chosen}],
            "non_preferred_output": [{"role": "assistant", "content": pair.rejected}]}


def _write_jsonl(pairs: list[PreferencePair], f, to_record) -> None:
    for pair in pairs:
        f.write(json.dumps(to_record(pair), ensure_ascii=False) + "\n")


def _write_csv(pairs: list[PreferencePair], f) -> None:
    writer = csv.writer(f)
    writer.writerow(["prompt", "chosen", "rejected"])
    for p in pairs:
        prompt = p.prompt if isinstance(p.prompt, str) else json.dumps(p.messages, ensure_ascii=False)
        writer.writerow([prompt, p.chosen, p.rejected])


def _write_parquet(pairs: list[PreferencePair], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if pairs and all(not p.conversational for p in pairs):
        records = [p.to_trl() for p in pairs]
    else:  # one column type: chat messages for every prompt (TRL conversational)
        records = [PreferencePair(tuple((m["role"], m["content"]) for m in p.messages), p.chosen,
                                  p.rejected).to_trl() for p in pairs]
    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    prompt_type = pa.string() if records and isinstance(records[0]["prompt"], str) else message
    answer_type = pa.string() if prompt_type == pa.string() else message
    schema = pa.schema([("prompt", prompt_type), ("chosen", answer_type), ("rejected", answer_type)])
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)


def export_pairs(project: Project, out: str | Path, fmt: str = "trl", split: str | None = None) -> int:
    """Write the project's usable pairs to `out` (replaced atomically); returns how many."""
    if fmt not in PAIR_FILE_FORMATS:
        raise DataError(f"unknown export format {fmt!r}; choose one of {', '.join(PAIR_FILE_FORMATS)}")
    out = check_output_path(out, inputs=[] if project.path == ":memory:" else [project.path])
    pairs = [s.pair for s in project.queries.training_pairs(split)]
    try:
        with staged(out) as tmp:
            if fmt == "parquet":
                _write_parquet(pairs, tmp)
            else:
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    if fmt == "csv":
                        _write_csv(pairs, f)
                    else:
                        _write_jsonl(pairs, f, PreferencePair.to_trl if fmt == "trl" else _openai)
    except OSError as exc:
        why = storage_problem(exc, out) or exc.strerror or str(exc)
        raise DataError(f"cannot write {out}: {why}. Nothing was written there.") from None
    return len(pairs)
