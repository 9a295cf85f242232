"""The trained model out, in the formats the person's tools read.

    for progress in export_events(MODEL, "hf" | "peft" | "gguf" | "gguf-lora" | "ollama", OUTPUT,
                                  quant="f16" | "q8_0" | "q4_1" | "q4_0", overwrite=False, project=None):
        ...   # ExportProgress; the generator returns the ExportResult
    export_model(MODEL, FORMAT, OUTPUT, ...) -> ExportResult          the blocking helper on top

- hf         a clean transformers folder (a LoRA adapter merged in) with a model card;
- peft       the LoRA adapter folder of a LoRA run (a full run is refused);
- gguf       one .gguf file for llama.cpp, LM Studio and Ollama (Llama 2/3.x, Mistral, Qwen2/2.5/3,
             Gemma 2/3, Phi-3; f16, q8_0, q4_1 or q4_0);
- gguf-lora  a LoRA run's adapter alone as a GGUF LoRA file (llama.cpp `--lora`, Ollama `ADAPTER`);
- ollama     a folder with a Modelfile and a model card, plus the `ollama create` command: for a LoRA
             run whose base is a model in Ollama's store, the GGUF LoRA adapter and `FROM <that model>`
             (no copy of the base); otherwise the whole model as a .gguf.

The folder formats carry a model card (README.md); given the project the model was trained in
(opened read-only), the card adds its data, the run's held-out results, the Compare win rate and
the loss and accuracy curves as PNG files (`export.card`, `export.facts`).

Each format is one row of `export.formats.FORMATS` (its checks, size and writer). Every check runs
before anything is written; the export is then written into a temporary sibling and renamed into place
(`dpo_engine.atomic.staged`): a failure, or a stop at any `yield` (closing the generator: a cancel),
leaves nothing under OUTPUT and any earlier export there as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator

from dpo_engine.atomic import staged
from dpo_engine.errors import ConfigError, DataError, storage_problem
from dpo_engine.export.facts import project_facts
from dpo_engine.export.formats import ExportFormat, ExportPlan, ExportProgress, Reads, check_format, export_format
from dpo_engine.export.gguf_file import QUANTS
from dpo_engine.export.source import find_source_events
from dpo_engine.export.targets import check_export_target
from dpo_engine.iters import drain, mapped


@dataclass(frozen=True)
class ExportResult:
    format: str
    path: str  # the folder or file written
    files: tuple[str, ...]  # what is in it (relative names), or the file itself
    seconds: float
    command: str | None = None  # the `ollama create` command to run, for the ollama format
    size_bytes: int = 0  # of everything written
    note: str | None = None  # what a person should know about it (e.g. the base an adapter needs)


def _files(path: Path) -> tuple[str, ...]:
    if path.is_file():
        return (path.name,)
    return tuple(sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()))


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_events(model_ref: str | None, fmt: str, output: str | Path, quant: str = "f16", overwrite: bool = False,
                  project: str | Path | None = None) -> Generator[ExportProgress, None, ExportResult]:
    """Export a model (a run's checkpoint, a model folder, 'default', ...) as `fmt` to `output`; yield
    progress, return the ExportResult. Stopping at any yield leaves nothing under `output`.

    `project`: the project file the model was trained in, read (read-only) for the model card;
    unused for the single-file formats, which carry no card."""
    row = export_format(fmt)
    if quant not in QUANTS:
        raise ConfigError(f"Unknown GGUF quantisation {quant!r}: use one of {', '.join(QUANTS)}.")
    start = time.perf_counter()
    yield ExportProgress("prepare", 0.0, f"Finding {model_ref or 'default'}")
    source = yield from mapped(find_source_events(model_ref),
                               lambda e: ExportProgress("prepare", 0.05 * e.fraction, e.message))
    output = check_export_target(output, row.as_folder, overwrite, inputs=source.inputs, bases=source.base_inputs)
    yield ExportProgress("load", 0.05, f"Checking that {source.name} can be exported as {fmt}")
    reads = Reads(source)
    check_format(row, reads, output.name)  # every refusal before anything is staged
    facts = None
    if project is not None and row.as_folder:
        yield ExportProgress("prepare", 0.05, "Reading the project for the model card")
        facts = project_facts(project, source.ref, source.folder, source.run.get("base_model") or source.base_ref)
    yield from _write(row, ExportPlan(reads, output, quant, facts))
    yield ExportProgress("done", 1.0, f"Exported {source.name} as {fmt} to {output}")
    return ExportResult(fmt, str(output), _files(output), time.perf_counter() - start, row.command(output),
                        _size(output), row.note(reads))


def _write(row: ExportFormat, plan: ExportPlan) -> Generator[ExportProgress, None, None]:
    """The format's writer into a temporary sibling of the output, renamed into place when it ends."""
    try:
        with staged(plan.output, row.as_folder) as tmp:
            yield from row.write(plan, tmp)
            yield ExportProgress("rename", 0.98, f"Moving the export into place at {plan.output}")
    except OSError as exc:  # a full disk, a read-only folder: nothing was left under `output`
        why = storage_problem(exc, plan.output.parent) or "check the folder and try again"
        raise DataError(f"Could not write the export to {plan.output} ({exc.strerror or exc}): {why}. Nothing was "
                        "written there.") from exc


def export_model(model_ref: str | None, fmt: str, output: str | Path, quant: str = "f16", overwrite: bool = False,
                 project: str | Path | None = None,
                 on_event: Callable[[ExportProgress], None] | None = None) -> ExportResult:
    """Blocking `export_events`: `on_event` (to show progress) sees every ExportProgress."""
    return drain(export_events(model_ref, fmt, output, quant, overwrite, project), on_event)


__all__ = ["ExportProgress", "ExportResult", "export_events", "export_model"]
