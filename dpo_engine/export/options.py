"""Which export formats a model allows, and how big each would be, before anything is written.

Read from file headers only (safetensors shapes, the adapter's tensors, the config and tokenizer
files): no weights are loaded. A format the model does not allow carries the reason, the same
message the export itself would refuse with.

    export_options(MODEL) -> [ExportOption("gguf", "q4_0", 93_000_000, None), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

from dpo_engine.errors import DPOStudioError
from dpo_engine.export.gguf_file import QUANTS, check_supported, gguf_size
from dpo_engine.export.gguf_vocab import check_tokenizer
from dpo_engine.export.ollama import modelfile, ollama_model_of
from dpo_engine.export.source import (ExportSource, adapter_config_folder, find_source, load_tokenizer_for_export,
                                      local_folder, tensor_source)

# what the tokenizer, the metadata and the header add to a GGUF's tensors is at most the size of
# tokenizer.json (the same token and merge strings, less JSON's quoting): 1.79 MB in the GGUF for the
# default model's 3.52 MB file, measured (the estimate 0.6% over the file); where there is no such
# file, about that of a 150k-token vocabulary
TOKENIZER_BYTES = 5_000_000


@dataclass(frozen=True)
class ExportOption:
    format: str  # as export_model takes it
    quant: str | None  # the GGUF weight type, for gguf / ollama; None otherwise
    size_bytes: int | None  # about what the export will take on disk; None where unknown
    reason: str | None = None  # why this model cannot be exported so; None: it can

    @property
    def allowed(self) -> bool:
        return self.reason is None


def _adapter_bytes(source: ExportSource) -> int:
    return (source.adapter / "adapter_model.safetensors").stat().st_size


def _gguf_options(source: ExportSource, ollama_base: str | None) -> list[ExportOption]:
    try:
        tensors, config = tensor_source(source, lazy_only=True)
        check_supported(config)
        tokenizer = load_tokenizer_for_export(source)
        check_tokenizer(tokenizer)
    except DPOStudioError as exc:
        return [ExportOption(fmt, q, None, str(exc)) for fmt in ("gguf", "ollama") for q in QUANTS]
    ollama_refused = None
    if not ollama_base:
        try:
            modelfile("x.gguf", tokenizer)  # the whole model needs its chat template translated
        except DPOStudioError as exc:
            ollama_refused = str(exc)
    homes = [p for p in (source.folder, source.adapter, local_folder(source.base_ref) if source.base_ref else None)
             if p is not None and (p / "tokenizer.json").is_file()]
    vocab_bytes = (homes[0] / "tokenizer.json").stat().st_size if homes else TOKENIZER_BYTES
    out = []
    for quant in QUANTS:
        size = gguf_size(tensors, config, quant) + vocab_bytes
        out.append(ExportOption("gguf", quant, size))
        out.append(ExportOption("ollama", quant, _adapter_bytes(source) if ollama_base else size, ollama_refused))
    return out


def _adapter_options(source: ExportSource) -> list[ExportOption]:
    if source.adapter is None:
        why = "this model was trained as a full fine-tune (or is a plain model): it has no LoRA adapter"
        return [ExportOption("peft", None, None, why), ExportOption("gguf-lora", None, None, why)]
    size = _adapter_bytes(source)
    try:
        from transformers import AutoConfig

        check_supported(AutoConfig.from_pretrained(str(adapter_config_folder(source)), trust_remote_code=False))
        lora = ExportOption("gguf-lora", None, size)
    except DPOStudioError as exc:
        lora = ExportOption("gguf-lora", None, None, str(exc))
    return [ExportOption("peft", None, size), lora]


def export_options(model_ref: str | None) -> list[ExportOption]:
    """Every format (and GGUF weight type) with its size, or the reason the model does not allow it."""
    source = find_source(model_ref)
    ollama_base = ollama_model_of(source.base_ref) if source.adapter is not None else None
    folder = source.folder if source.has_weights else local_folder(source.base_ref)
    hf_size = None
    if folder is not None:
        from dpo_engine.export.tensors import FolderTensors

        tensors = FolderTensors(folder)
        hf_size = sum(4 * _numel(tensors.shape(n)) for n in tensors.names())  # written in fp32
    return [ExportOption("hf", None, hf_size), *_adapter_options(source), *_gguf_options(source, ollama_base)]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
