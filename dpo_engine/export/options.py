"""Which export formats a model allows, and how big each would be, before anything is written.

Read from file headers only (safetensors shapes, the adapter's tensors, the config and tokenizer
files): no weights are loaded. Each format's checks and size are its row of `export.formats.FORMATS`,
the same the export runs, so a format the model does not allow carries the message the export itself
would refuse with.

    export_options(MODEL) -> [ExportOption("gguf", "q4_0", 93_000_000, None), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

from dpo_engine.errors import DPOStudioError
from dpo_engine.export.formats import FORMATS, ExportFormat, Reads, check_format
from dpo_engine.export.source import find_source

PROBE_NAME = "model"  # the output's name the checks see: a name a Modelfile can always carry


@dataclass(frozen=True)
class ExportOption:
    format: str  # as export_model takes it
    quant: str | None  # the GGUF weight type, for gguf / ollama; None otherwise
    size_bytes: int | None  # about what the export will take on disk; None where unknown
    reason: str | None = None  # why this model cannot be exported so; None: it can

    @property
    def allowed(self) -> bool:
        return self.reason is None


def _options(fmt: ExportFormat, reads: Reads) -> list[ExportOption]:
    try:
        check_format(fmt, reads, PROBE_NAME)
        return [ExportOption(fmt.name, quant, fmt.size(reads, quant)) for quant in fmt.quants]
    except DPOStudioError as exc:
        return [ExportOption(fmt.name, quant, None, str(exc)) for quant in fmt.quants]


def export_options(model_ref: str | None) -> list[ExportOption]:
    """Every format (and GGUF weight type) with its size, or the reason the model does not allow it."""
    reads = Reads(find_source(model_ref), lazy=True)  # one read of each file, shared by every format
    return [option for fmt in FORMATS.values() for option in _options(fmt, reads)]
