"""`dpo-engine models`: the models already on this machine and whether each fits for training.

Reads configs and file headers only (no weights). A model that cannot be read is listed
with the reason, never fails the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dpo_engine.catalog.entry import format_parameters, format_size
from dpo_engine.cli.base import DEVICE_HELP, friendly_errors


def format_catalog(catalog) -> str:
    """A plain table, one model a line, then its notes and any error indented below it."""
    rows = [("NAME", "SOURCE", "FAMILY", "PARAMS", "PRECISION", "SIZE", "CHAT", "FIT")]
    details = []
    for e in catalog.entries:
        chat = {True: "yes", False: "no", None: "?"}[e.chat_template]
        fit = e.fit.verdict if e.fit else ("unusable" if e.error else "?")
        fit += " (checkpointing)" if e.fit and e.fit.gradient_checkpointing else ""
        rows.append((e.name, e.source, e.family or "?", format_parameters(e.parameters, e.parameters_estimated),
                     e.precision or "?", format_size(e.size_bytes), chat, fit))
        lines = [f"  error: {e.error}"] if e.error else []
        lines += [f"  path: {e.path}"]
        lines += [f"  {e.fit.explain()}"] if e.fit else []
        lines += [f"  license: {e.license}"] if e.license else []
        lines += [f"  gated: {e.gated}"] if e.gated else []
        lines += [f"  note: {n}" for n in e.notes]
        details.append(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip()]
    for row, lines in zip(rows[1:], details):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        out += lines
    out.append(f"{len(catalog.entries)} models; verdicts for {catalog.device} with {format_size(catalog.free_bytes)} free.")
    return "\n".join(out)


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--folder", "folders", multiple=True, type=click.Path(path_type=Path),
              help="Also look in this folder (.gguf files and model folders); repeatable.")
@click.option("--project", "project_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also list this project's training checkpoints.")
@click.option("--path", "paths", multiple=True, type=click.Path(path_type=Path),
              help="Also describe this model file or folder; repeatable.")
@click.option("--device", default="auto", show_default=True, help="Judge the fit for this device. " + DEVICE_HELP)
@friendly_errors
def models_cmd(as_json: bool, folders: tuple[Path, ...], project_path: Path | None, paths: tuple[Path, ...],
               device: str):
    """List the models on this machine: the default, the project's checkpoints, the Hugging Face
    cache, Ollama, LM Studio and the given folders, with a fit verdict for each."""
    from dpo_engine.catalog import list_models

    catalog = list_models(project=project_path, folders=folders, device=device, paths=paths)
    click.echo(json.dumps(catalog.to_dict(), indent=1, ensure_ascii=False) if as_json else format_catalog(catalog))
