"""`dpo-engine import | export | stats`: the project's data from the command line.

Exit status: 0 on success, 1 on an error that stopped the command (bad project file,
unreadable input), 2 when some rows were rejected (the report names each one).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dpo_engine.cli.base import friendly_errors

if TYPE_CHECKING:  # the store is imported when a command runs, not when the CLI starts
    from dpo_engine.store.rows import Stats

PROJECT = click.option("--project", "project_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                       help="The project's SQLite file (created if missing).")
ROWS_REJECTED = 2


@click.command("import")
@PROJECT
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Import nothing if any row of any file is bad.")
@friendly_errors
def import_cmd(project_path: Path, files: tuple[Path, ...], strict: bool):
    """Import preference pairs or prompt lists from FILES (.jsonl, .csv, .parquet, .txt)."""
    from dpo_engine.store.formats import ImportReport, import_file, read_rows
    from dpo_engine.store.opening import open_project

    if strict:  # check every file before touching the project
        scanned = [(path, read_rows(path)) for path in files]
        bad = [ImportReport(str(p), kind, len(rows) + len(errs), errors=errs, refused=True)
               for p, (kind, rows, errs) in scanned if errs]
        if bad:
            for report in bad:
                click.echo("\n".join(report.lines()))
            click.echo(f"Error: {sum(len(r.errors) for r in bad)} rows rejected; --strict: nothing imported.",
                       err=True)
            sys.exit(ROWS_REJECTED)
    rejected = 0
    with open_project(project_path) as project:
        for path in files:
            report = import_file(project, path)
            click.echo("\n".join(report.lines()))
            rejected += len(report.errors)
    if rejected:
        click.echo(f"Error: {rejected} rows rejected (listed above); the other rows were imported.", err=True)
        sys.exit(ROWS_REJECTED)


@click.command("export")
@PROJECT
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["trl", "openai", "csv", "parquet"]), default="trl",
              show_default=True, help="trl: TRL conversational JSONL; openai: OpenAI preference JSONL.")
@click.option("--split", type=click.Choice(["train", "eval", "all"]), default="all", show_default=True)
@friendly_errors
def export_cmd(project_path: Path, out: Path, fmt: str, split: str):
    """Write the project's usable preference pairs to OUT."""
    from dpo_engine.outputs import check_output_path
    from dpo_engine.store.formats import export_pairs
    from dpo_engine.store.opening import open_project

    check_output_path(out, inputs=[project_path])  # before opening: the project is never at risk
    with open_project(project_path, read_only=True) as project:
        n = export_pairs(project, out, fmt, None if split == "all" else split)
    click.echo(f"Wrote {n} pairs to {out} ({fmt}).")


def _pct_whole(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _num(x: float | None, fmt: str = ".0f") -> str:
    return "n/a" if x is None else format(x, fmt)


def format_stats(s: Stats) -> str:
    """The project's stats as a short human-readable report."""
    verdicts = ", ".join(f"{k} {v}" for k, v in s.by_verdict.items())
    bias = s.position_bias
    return "\n".join([
        f"Prompts:      {s.prompts} (train {s.prompts_by_split['train']}, "
        f"eval {s.prompts_by_split['eval']}); "
        f"{s.labeled_prompts} labeled ({_pct_whole(s.labeled_fraction)})",
        f"Comparisons:  {s.comparisons} ({verdicts})",
        f"Usable pairs: {s.pairs} (train {s.pairs_by_split['train']}, eval {s.pairs_by_split['eval']})",
        f"Labeling:     {_num(s.labels_per_hour)} labels per hour of labeling",
        f"Position:     left won {bias.left_wins} of {bias.decided} labeled decisions ({_pct_whole(bias.left_rate)})",
        f"Length:       chosen {_num(s.length.chosen_mean)} vs rejected "
        f"{_num(s.length.rejected_mean)} characters on average",
    ])


@click.command("stats")
@PROJECT
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def stats_cmd(project_path: Path, as_json: bool):
    """Counts, splits, labeling rate and biases of the project's preference data."""
    from dpo_engine.errors import StoreError
    from dpo_engine.store.opening import open_project

    if not project_path.exists():
        raise StoreError(f"{project_path} does not exist.")
    with open_project(project_path, read_only=True) as project:
        stats = project.queries.stats()
    click.echo(json.dumps(asdict(stats), indent=2) if as_json else format_stats(stats))
