"""The trained model out, in the formats the person's tools read.

    export_model(MODEL, "hf" | "peft" | "gguf" | "gguf-lora" | "ollama", OUTPUT, quant="f16" | "q8_0" | "q4_1"
                 | "q4_0", overwrite=False, on_progress=callback, project=None) -> ExportResult

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

Every export is written into a temporary sibling and renamed into place (`dpo_engine.atomic.staged`): a
failure, or an exception raised by `on_progress` to cancel, leaves nothing under OUTPUT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dpo_engine.errors import ConfigError, DataError, storage_problem
from dpo_engine.atomic import staged
from dpo_engine.export.targets import check_export_target
from dpo_engine.export.card import write_card
from dpo_engine.export.facts import ProjectFacts, project_facts
from dpo_engine.export.gguf_file import QUANTS, check_supported, write_gguf
from dpo_engine.export.gguf_lora import write_gguf_lora
from dpo_engine.export.gguf_vocab import check_tokenizer
from dpo_engine.export.hf import check_adapter, write_hf_folder, write_peft_folder
from dpo_engine.export.ollama import adapter_modelfile, create_command, modelfile, ollama_model_of, ollama_name
from dpo_engine.export.source import (ExportSource, check_adapter_fits, find_source, load_merged_model,
                                      load_tokenizer_for_export, tensor_source)

EXPORT_FORMATS = ("hf", "peft", "gguf", "gguf-lora", "ollama")
FOLDER_FORMATS = ("hf", "peft", "ollama")  # these write a folder; gguf and gguf-lora write one file


@dataclass(frozen=True)
class ExportProgress:
    """One step of an export."""

    stage: str  # "prepare" | "load" | "write" | "rename" | "done"
    fraction: float  # 0..1 over the whole export
    message: str


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


def _gguf_name(output: Path) -> str:
    return output.name + ".gguf"


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _ollama_base(source: ExportSource) -> str | None:
    """The Ollama model a LoRA run's base is (its blob in Ollama's store), or None."""
    return ollama_model_of(source.base_ref) if source.adapter is not None else None


def adapter_note(source: ExportSource) -> str | None:
    """What a person should know about running a LoRA run's adapter alone over its base."""
    if source.adapter is None:
        return None
    base = ollama_model_of(source.base_ref) or source.base_ref
    if str(source.base_ref).endswith(".gguf") or ollama_model_of(source.base_ref):
        return (f"The adapter applies to {base}. It was trained on exactly that file's weights, dequantised, so "
                "over the same file it adds what it learned and nothing else.")
    return f"The adapter applies to {base}, and only to it."


def export_model(model_ref: str | None, fmt: str, output: str | Path, quant: str = "f16",
                 overwrite: bool = False, on_progress: Callable[[ExportProgress], None] | None = None,
                 project: str | Path | None = None) -> ExportResult:
    """Export a model (a run's checkpoint, a model folder, 'default', ...) as `fmt` to `output`.

    `project`: the project file the model was trained in, read (read-only) for the model card;
    unused for the single-file gguf format, which carries no card."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    if quant not in QUANTS:
        raise ConfigError(f"Unknown GGUF quantisation {quant!r}: use one of {', '.join(QUANTS)}.")
    start = time.perf_counter()

    def report(stage: str, fraction: float, message: str) -> None:
        if on_progress is not None:
            on_progress(ExportProgress(stage, fraction, message))

    report("prepare", 0.0, f"Finding {model_ref or 'default'}")
    source = find_source(model_ref, on_progress=lambda e: report("prepare", 0.05 * e.fraction, e.message))
    as_folder = fmt in FOLDER_FORMATS
    output = check_export_target(output, as_folder, overwrite, inputs=source.inputs, bases=source.base_inputs)
    check_adapter_fits(source, prepare=fmt != "peft")  # an adapter of another model: said before any work
    facts = None
    if project is not None and as_folder:  # read before anything is staged: a bad project fails first
        report("prepare", 0.05, "Reading the project for the model card")
        facts = project_facts(project, source.ref, source.folder, source.run.get("base_model") or source.base_ref)
    ollama_base = _ollama_base(source) if fmt == "ollama" else None
    if fmt == "peft":
        write = _peft_writer(source, output, facts)
    elif fmt == "gguf-lora" or ollama_base:
        write = _adapter_writer(source, fmt, output, ollama_base, report, facts)
    else:
        write = _model_writer(source, fmt, output, quant, report, facts)
    try:
        with staged(output, as_folder) as tmp:
            write(tmp)
            report("rename", 0.98, f"Moving the export into place at {output}")
    except OSError as exc:  # a full disk, a read-only folder: nothing was left under `output`
        why = storage_problem(exc, output.parent) or "check the folder and try again"
        raise DataError(f"Could not write the export to {output} ({exc.strerror or exc}): {why}. Nothing was "
                        "written there.") from exc
    command = create_command(ollama_name(output), output / "Modelfile") if fmt == "ollama" else None
    report("done", 1.0, f"Exported {source.name} as {fmt} to {output}")
    note = adapter_note(source) if fmt == "gguf-lora" or ollama_base else None
    return ExportResult(fmt, str(output), _files(output), time.perf_counter() - start, command, _size(output), note)


def _peft_writer(source: ExportSource, output: Path, facts: ProjectFacts | None) -> Callable[[Path], None]:
    check_adapter(source)  # refuse before anything is staged

    def write(tmp: Path) -> None:
        write_peft_folder(source, tmp)
        write_card(tmp, source, "peft", output.name, facts=facts)

    return write


def _adapter_writer(source: ExportSource, fmt: str, output: Path, ollama_base: str | None, report,
                    facts: ProjectFacts | None) -> Callable[[Path], None]:
    """The adapter alone as a GGUF LoRA file (and, over an Ollama base, a Modelfile that names it)."""
    from transformers import AutoConfig

    from dpo_engine.export.source import adapter_config_folder

    check_adapter(source)
    config = AutoConfig.from_pretrained(str(adapter_config_folder(source)), trust_remote_code=False)
    check_supported(config)
    adapter_name = output.name + "-adapter.gguf"
    if fmt == "ollama":
        adapter_modelfile(ollama_base, adapter_name)  # a name it cannot write safely is refused now

    def write(tmp: Path) -> None:
        report("write", 0.1, f"Writing the LoRA adapter as GGUF to a temporary {tmp.name}")
        if fmt == "gguf-lora":
            write_gguf_lora(source.adapter, config, tmp, name=output.stem)
            return
        write_gguf_lora(source.adapter, config, tmp / adapter_name, name=output.name)
        (tmp / "Modelfile").write_text(adapter_modelfile(ollama_base, adapter_name))
        write_card(tmp, source, "ollama", ollama_name(output), adapter_name, facts, ollama_base=ollama_base)

    return write


def _model_writer(source: ExportSource, fmt: str, output: Path, quant: str, report,
                  facts: ProjectFacts | None) -> Callable[[Path], None]:
    """Prepare what the format needs (for GGUF: the tensors, read lazily, and the config; for hf: the
    merged model), so a model that cannot be exported fails before staging."""
    gguf_like = fmt in ("gguf", "ollama")
    report("load", 0.05, f"Reading {source.name}" + (" and its LoRA adapter" if not source.has_weights else ""))
    model = None if gguf_like else load_merged_model(source)
    tensors, config = tensor_source(source) if gguf_like else (None, model.config)
    tokenizer = load_tokenizer_for_export(source)
    if gguf_like:
        check_supported(config)
        check_tokenizer(tokenizer)
    if fmt == "ollama":
        modelfile(_gguf_name(output), tokenizer)  # refuses a bad template or file name now, not after the GGUF

    def on_tensor(done: int, total: int) -> None:
        if done == total or int(20 * done / total) != int(20 * (done - 1) / total):  # every 5%
            report("write", 0.1 + 0.85 * done / total, f"Writing tensor {done}/{total} ({quant})")

    def write(tmp: Path) -> None:
        report("write", 0.1, f"Writing {fmt} to a temporary {tmp.name}")
        if fmt == "hf":
            write_hf_folder(model, tokenizer, tmp)
            write_card(tmp, source, "hf", output.name, facts=facts)
        elif fmt == "gguf":
            write_gguf(tensors, config, tokenizer, tmp, quant, name=output.stem, on_tensor=on_tensor)
        else:
            gguf_name = _gguf_name(output)
            write_gguf(tensors, config, tokenizer, tmp / gguf_name, quant, name=output.name, on_tensor=on_tensor)
            (tmp / "Modelfile").write_text(modelfile(gguf_name, tokenizer))
            write_card(tmp, source, "ollama", ollama_name(output), gguf_name, facts, quant=quant)

    return write


__all__ = ["EXPORT_FORMATS", "ExportProgress", "ExportResult", "export_model"]
