"""A GGUF file's header (metadata and tensor infos) through the `gguf` package's reader,
without its slow path: a real model's vocabulary arrays.

`gguf.GGUFReader` turns every element of every array into numpy views; a Qwen2 GGUF's
151k tokens plus 151k merges take it ~10 s (measured on a 150k-token file). HeaderReader
walks arrays longer than SKIP_ARRAYS_OVER by their byte lengths only (~0.07 s for the same
file) and keeps their element type and length, which is all the catalog reads of them
(the vocabulary size). Scalars, strings, short arrays and tensor infos are the reader's own.
Tensor data is memory-mapped, never read.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType

SKIP_ARRAYS_OVER = 64  # longer arrays are walked, not parsed (vocabularies, merges, scores)
_FIXED = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
          GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1,
          GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}
GGUF_MAGIC = b"GGUF"


class HeaderReader(GGUFReader):
    """GGUFReader that skips over long arrays: their field keeps [item type, length] only."""

    def _get_field_parts(self, orig_offs, raw_type):
        if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        length = self._get(orig_offs + 4, np.uint64)
        n, itype = int(length[0]), GGUFValueType(raw_itype[0])
        if n <= SKIP_ARRAYS_OVER:
            return super()._get_field_parts(orig_offs, raw_type)
        offs = orig_offs + 12
        if itype in _FIXED:
            offs += n * _FIXED[itype]
        elif itype == GGUFValueType.STRING:
            u64 = struct.Struct("<Q" if self.byte_order == "I" else ">Q").unpack_from
            data = self.data
            for _ in range(n):
                offs += 8 + u64(data, offs)[0]
        else:
            raise ValueError("nested arrays in a long GGUF array")
        if offs > len(self.data):
            raise ValueError("the metadata runs past the end of the file")
        return offs - orig_offs, [raw_itype, length], [], [GGUFValueType.ARRAY, itype]

    def _build_tensors(self, start_offs, fields):
        """Refuse a file cut short with a reason, before the reader's own reshape fails on it."""
        end = start_offs
        for field in fields:
            _len, _name, _n_dims, dims, raw_dtype, offset = field.parts
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_dtype[0]))]
            end = max(end, start_offs + int(offset[0]) + int(np.prod(dims)) * type_size // block)
        if end > len(self.data):
            raise ValueError(f"the file is cut off: its header describes {end:,} bytes, the file has "
                             f"{len(self.data):,}")
        self.expected_size = end
        super()._build_tensors(start_offs, fields)


@dataclass(frozen=True)
class GGUFInfo:
    metadata: dict  # scalar and string fields, and short arrays as lists
    array_lengths: dict  # long (skipped) arrays: key -> length
    parameters: int  # sum of the tensors' element counts
    quantisation: str  # "Q4_K_M", "BF16", ... (file type, else the type holding most elements)
    expected_size: int  # bytes the header says the file needs: a smaller file is cut off


def is_gguf(path: Path) -> bool:
    """Whether `path` is a file starting with the GGUF magic (Ollama's blobs have no suffix)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _quantisation(metadata: dict, tensors) -> str:
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    by_type = Counter()
    for t in tensors:
        by_type[t.tensor_type.name] += int(t.n_elements)
    return by_type.most_common(1)[0][0] if by_type else "unknown"


def read_gguf(path: str | Path) -> GGUFInfo:
    """Metadata, parameter count and quantisation of a GGUF file, from its header only.

    Raises ValueError (or OSError) with the reader's reason for a file that is not a
    complete GGUF: bad magic, unknown version, a header or data cut short.
    """
    reader = HeaderReader(str(path))
    metadata, lengths = {}, {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types[0] == GGUFValueType.ARRAY and not field.data:
            lengths[key] = int(field.parts[-1][0])  # [key length, key, type, item type, length]
        else:
            metadata[key] = field.contents()
    params = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFInfo(metadata, lengths, params, _quantisation(metadata, reader.tensors), reader.expected_size)
