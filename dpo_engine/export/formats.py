"""The export formats as data: one `ExportFormat` row each, in FORMATS.

A row says what the format writes (a folder or one file, whether it takes a GGUF weight type), why a
model is refused it (`check`: raises the reason, before anything is written), about how big it will
be (`size`, from file headers), and how to write it (`write`, a generator of progress). Both
`export_options` (what the dialog lists) and `export_events` (the export itself) iterate these rows,
so each precondition is written once and the two cannot disagree:

    format     check                                             writes
    hf         -                                                 the merged model, tokenizer, card
    peft       a complete LoRA adapter                           the adapter, tokenizer, card
    gguf       a family llama.cpp runs, a tokenizer it reads     one .gguf (the tensors streamed)
    gguf-lora  a LoRA adapter of a family llama.cpp runs         the adapter as a GGUF LoRA file
    ollama     as gguf (or, over an Ollama base, as gguf-lora)   .gguf (or the adapter), Modelfile, card
               and a Modelfile Ollama reads back exactly

What the checks read of the model (its config, tensors, tokenizer) is read once per export, by
`Reads`, and the writers use the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

from dpo_engine.errors import ConfigError, DPOStudioError, ModelError
from dpo_engine.export.card import write_card
from dpo_engine.export.facts import ProjectFacts
from dpo_engine.export.gguf_file import QUANTS, check_supported, gguf_size, write_gguf_events
from dpo_engine.export.gguf_lora import write_gguf_lora
from dpo_engine.export.gguf_vocab import check_tokenizer
from dpo_engine.export.hf import check_adapter, write_hf_folder, write_peft_folder
from dpo_engine.export.ollama import adapter_modelfile, create_command, modelfile, ollama_model_of, ollama_name
from dpo_engine.export.source import (ExportSource, adapter_config_folder, check_adapter_fits,
                                      load_tokenizer_for_export, local_folder, merged_model_events, open_tensors)
from dpo_engine.iters import mapped

# what the tokenizer, the metadata and the header add to a GGUF's tensors is at most the size of
# tokenizer.json (the same token and merge strings, less JSON's quoting): 1.79 MB in the GGUF for the
# default model's 3.52 MB file, measured (the estimate 0.6% over the file); where there is no such
# file, about that of a 150k-token vocabulary
TOKENIZER_BYTES = 5_000_000


@dataclass(frozen=True)
class ExportProgress:
    """One step of an export."""

    stage: str  # "prepare" | "load" | "write" | "rename" | "done"
    fraction: float  # 0..1 over the whole export
    message: str


class Reads:
    """What the checks and writers read of one export source, each read at most once. `lazy`: from
    file headers only (the options list): a model whose files are not on this disk is refused, not loaded."""

    def __init__(self, source: ExportSource, lazy: bool = False):
        self.source, self.lazy = source, lazy
        self._misfit: dict[bool, DPOStudioError | None] = {}  # check_adapter_fits by `prepare`

    def check_adapter_fits(self, prepare: bool) -> None:
        """`source.check_adapter_fits`, read once for all the formats that ask (every format does)."""
        if prepare not in self._misfit:
            try:
                check_adapter_fits(self.source, prepare=prepare)
                self._misfit[prepare] = None
            except DPOStudioError as exc:
                self._misfit[prepare] = exc
        if self._misfit[prepare] is not None:
            raise self._misfit[prepare]

    @cached_property
    def weights(self) -> tuple:
        """(a TensorReader, the config) of the whole model, a LoRA adapter merged per tensor."""
        return open_tensors(self.source, lazy_only=self.lazy)

    @cached_property
    def tokenizer(self):
        return load_tokenizer_for_export(self.source)

    @cached_property
    def adapter_config(self):
        """The config of the model a LoRA adapter applies to (its architecture and shapes)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(adapter_config_folder(self.source)), trust_remote_code=False)

    @cached_property
    def ollama_base(self) -> str | None:
        """The Ollama model a LoRA run's base is (its blob in Ollama's store), or None."""
        return ollama_model_of(self.source.base_ref) if self.source.adapter is not None else None


@dataclass(frozen=True)
class ExportPlan:
    """One export, checked: what its writer needs."""

    reads: Reads
    output: Path  # where it lands (the writer writes a temporary sibling)
    quant: str  # the GGUF weight type, for the formats that take one
    facts: ProjectFacts | None  # the project's facts for the model card; None: a card without them


@dataclass(frozen=True)
class ExportFormat:
    """One export format (see the module docstring's table)."""

    name: str  # as export_model and `--format` take it
    as_folder: bool  # writes a folder; else one file
    quantised: bool  # takes a GGUF weight type (QUANTS)
    reads_base: bool  # may convert a LoRA run's base to check the adapter fits it (peft only copies files)
    check: Callable[[Reads, str], None]  # raises a DPOStudioError saying why; str: the output's name
    size: Callable[[Reads, str | None], int | None]  # bytes on disk, about; None: unknown until written
    write: Callable[[ExportPlan, Path], Iterator[ExportProgress]]  # into the temporary path; yields progress
    note: Callable[[Reads], str | None] = lambda reads: None  # what a person should know about the result
    command: Callable[[Path], str | None] = lambda output: None  # a command to run with it

    @property
    def quants(self) -> tuple[str | None, ...]:
        return QUANTS if self.quantised else (None,)


def check_format(fmt: ExportFormat, reads: Reads, name: str) -> None:
    """Every precondition of `fmt` for this source; raises the reason it is refused."""
    reads.check_adapter_fits(fmt.reads_base)  # an adapter of another model: in every format
    fmt.check(reads, name)


# --------------------------------------------------------------------------- checks


def _no_check(reads: Reads, name: str) -> None:
    """A transformers folder takes any model we load."""


def _check_adapter(reads: Reads, name: str) -> None:
    check_adapter(reads.source)


def _check_gguf_adapter(reads: Reads, name: str) -> None:
    check_adapter(reads.source)
    check_supported(reads.adapter_config)


def _check_gguf(reads: Reads, name: str) -> None:
    check_supported(reads.weights[1])
    check_tokenizer(reads.tokenizer)


def _check_ollama(reads: Reads, name: str) -> None:
    """As gguf, or over an Ollama base as gguf-lora, and a Modelfile that reads back exactly (a template,
    a file or model name it cannot write is refused now, not after the GGUF)."""
    if reads.ollama_base:
        _check_gguf_adapter(reads, name)
        adapter_modelfile(reads.ollama_base, _adapter_file(name))
    else:
        _check_gguf(reads, name)
        modelfile(_gguf_file(name), reads.tokenizer)


def _gguf_file(name: str) -> str:
    return name + ".gguf"


def _adapter_file(name: str) -> str:
    return name + "-adapter.gguf"


# --------------------------------------------------------------------------- sizes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _hf_size(reads: Reads, quant: str | None) -> int | None:
    try:
        tensors, _ = reads.weights
    except ModelError:  # not on this disk (a hub id): known once it is
        return None
    return sum(4 * _numel(tensors.shape(n)) for n in tensors.names())  # written in fp32


def _adapter_size(reads: Reads, quant: str | None) -> int:
    return (reads.source.adapter / "adapter_model.safetensors").stat().st_size


def _gguf_size(reads: Reads, quant: str | None) -> int:
    source = reads.source
    homes = [p for p in (source.folder, source.adapter, local_folder(source.base_ref) if source.base_ref else None)
             if p is not None and (p / "tokenizer.json").is_file()]
    vocab_bytes = (homes[0] / "tokenizer.json").stat().st_size if homes else TOKENIZER_BYTES
    tensors, config = reads.weights
    return gguf_size(tensors, config, quant) + vocab_bytes


def _ollama_size(reads: Reads, quant: str | None) -> int:
    return _adapter_size(reads, quant) if reads.ollama_base else _gguf_size(reads, quant)


# --------------------------------------------------------------------------- writers


def _tensors_written(plan: ExportPlan, events: Iterator[tuple[int, int]]) -> Iterator[ExportProgress]:
    """A GGUF writer's (done, total) as progress, every 5% of the tensors."""
    def every_5pct(event: tuple[int, int]) -> ExportProgress | None:
        done, total = event
        if done != total and int(20 * done / total) == int(20 * (done - 1) / total):
            return None
        return ExportProgress("write", 0.1 + 0.85 * done / total, f"Writing tensor {done}/{total} ({plan.quant})")

    return (yield from mapped(events, every_5pct))


def _write_hf(plan: ExportPlan, tmp: Path) -> Iterator[ExportProgress]:
    source = plan.reads.source
    yield ExportProgress("load", 0.05, f"Reading {source.name}" + ("" if source.has_weights else
                                                                   " and merging its LoRA adapter"))
    model = yield from mapped(merged_model_events(source), lambda e: ExportProgress("load", 0.05, e.message))
    yield ExportProgress("write", 0.1, f"Writing hf to a temporary {tmp.name}")
    write_hf_folder(model, plan.reads.tokenizer, tmp)
    write_card(tmp, source, "hf", plan.output.name, facts=plan.facts)


def _write_peft(plan: ExportPlan, tmp: Path) -> Iterator[ExportProgress]:
    yield ExportProgress("write", 0.1, f"Copying the LoRA adapter to a temporary {tmp.name}")
    write_peft_folder(plan.reads.source, tmp)
    write_card(tmp, plan.reads.source, "peft", plan.output.name, facts=plan.facts)


def _write_gguf(plan: ExportPlan, tmp: Path) -> Iterator[ExportProgress]:
    tensors, config = plan.reads.weights
    yield ExportProgress("write", 0.1, f"Writing gguf to a temporary {tmp.name}")
    yield from _tensors_written(plan, write_gguf_events(tensors, config, plan.reads.tokenizer, tmp, plan.quant,
                                                        name=plan.output.stem))


def _write_gguf_lora(plan: ExportPlan, tmp: Path) -> Iterator[ExportProgress]:
    yield ExportProgress("write", 0.1, f"Writing the LoRA adapter as GGUF to a temporary {tmp.name}")
    write_gguf_lora(plan.reads.source.adapter, plan.reads.adapter_config, tmp, name=plan.output.stem)


def _write_ollama(plan: ExportPlan, tmp: Path) -> Iterator[ExportProgress]:
    """A Modelfile and a card beside the model's GGUF, or, over an Ollama base, beside the adapter's."""
    reads, name = plan.reads, plan.output.name
    if reads.ollama_base:
        file = _adapter_file(name)
        yield ExportProgress("write", 0.1, f"Writing the LoRA adapter as GGUF to a temporary {tmp.name}")
        write_gguf_lora(reads.source.adapter, reads.adapter_config, tmp / file, name=name)
        text = adapter_modelfile(reads.ollama_base, file)
    else:
        file = _gguf_file(name)
        tensors, config = reads.weights
        yield ExportProgress("write", 0.1, f"Writing ollama to a temporary {tmp.name}")
        yield from _tensors_written(plan, write_gguf_events(tensors, config, reads.tokenizer, tmp / file, plan.quant,
                                                            name=name))
        text = modelfile(file, reads.tokenizer)
    (tmp / "Modelfile").write_text(text)
    write_card(tmp, reads.source, "ollama", ollama_name(plan.output), file, plan.facts,
               quant=None if reads.ollama_base else plan.quant, ollama_base=reads.ollama_base)


# --------------------------------------------------------------------------- notes


def adapter_note(source: ExportSource) -> str | None:
    """What a person should know about running a LoRA run's adapter alone over its base."""
    if source.adapter is None:
        return None
    base = ollama_model_of(source.base_ref) or source.base_ref
    if str(source.base_ref).endswith(".gguf") or ollama_model_of(source.base_ref):
        return (f"The adapter applies to {base}. It was trained on exactly that file's weights, dequantised, so "
                "over the same file it adds what it learned and nothing else.")
    return f"The adapter applies to {base}, and only to it."


def _ollama_note(reads: Reads) -> str | None:
    return adapter_note(reads.source) if reads.ollama_base else None


def _ollama_command(output: Path) -> str:
    return create_command(ollama_name(output), output / "Modelfile")


FORMATS = {fmt.name: fmt for fmt in (
    ExportFormat("hf", True, False, True, _no_check, _hf_size, _write_hf),
    ExportFormat("peft", True, False, False, _check_adapter, _adapter_size, _write_peft),
    ExportFormat("gguf", False, True, True, _check_gguf, _gguf_size, _write_gguf),
    ExportFormat("gguf-lora", False, False, True, _check_gguf_adapter, _adapter_size, _write_gguf_lora,
                 note=lambda reads: adapter_note(reads.source)),
    ExportFormat("ollama", True, True, True, _check_ollama, _ollama_size, _write_ollama, note=_ollama_note,
                 command=_ollama_command),
)}


def export_format(name: str) -> ExportFormat:
    """The row for `name`; ConfigError naming the formats for any other."""
    if name not in FORMATS:
        raise ConfigError(f"Unknown export format {name!r}: use one of {', '.join(FORMATS)}.")
    return FORMATS[name]
