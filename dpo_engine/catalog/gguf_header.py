"""A GGUF file's header (metadata and tensor infos), read without touching the weights.

The layout is the `gguf` package's (GGUF v2/v3: magic, version, tensor count, metadata
count, key/value pairs, tensor infos, aligned data), and so are the value types and the
quantisation block sizes used here. Why not `gguf.GGUFReader` itself: it turns every
element of every array into a numpy view, so a real model's vocabulary makes it slow
(measured: 5.3 s for SmolLM2-135M's Q8_0 GGUF with 49k tokens and 49k merges; ~10 s for a
150k-token one). This reader walks long arrays by their byte lengths and keeps only their
element type and length (the catalog needs the vocabulary size, not the tokens): 0.01 s
for the same file. tests/test_catalog.py checks it against GGUFReader field by field.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 (2023) used 32-bit counts; llama.cpp stopped writing it long ago
KEEP_ARRAYS_UP_TO = 64  # longer arrays (vocabularies, merges, scores) are skipped, their length kept
DEFAULT_ALIGNMENT = 32
_SCALARS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
            GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
            GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
            GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}


@dataclass(frozen=True)
class GGUFInfo:
    metadata: dict  # scalars, strings and short arrays (as lists)
    array_lengths: dict  # long, skipped arrays: key -> length
    parameters: int  # sum of the tensors' element counts
    quantisation: str  # "Q4_K_M", "F16", ... (the file type, else the type holding most elements)
    expected_size: int  # bytes the header says the file has: header + every tensor's data


def is_gguf(path: Path) -> bool:
    """Whether `path` is a file starting with the GGUF magic (Ollama's blobs have no suffix)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


class _Cursor:
    """Reads little- (or big-) endian values from a buffer, refusing to run past its end."""

    def __init__(self, buf, order: str):
        self.buf, self.pos, self.order = buf, 0, order

    def take(self, fmt: str):
        st = struct.Struct(self.order + fmt)
        if self.pos + st.size > len(self.buf):
            raise ValueError("the header is cut off")
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ValueError("the header is cut off")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def skip_strings(self, n: int) -> None:
        u64, buf, pos, end = struct.Struct(self.order + "Q").unpack_from, self.buf, self.pos, len(self.buf)
        for _ in range(n):
            if pos + 8 > end:
                raise ValueError("the header is cut off")
            pos += 8 + u64(buf, pos)[0]
        if pos > end:
            raise ValueError("the header is cut off")
        self.pos = pos

    def value(self, vtype: int, key: str, lengths: dict):
        vtype = GGUFValueType(vtype)
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype != GGUFValueType.ARRAY:
            raise ValueError(f"unknown value type {vtype} for {key}")
        itype, n = GGUFValueType(self.take("I")), self.take("Q")
        if n <= KEEP_ARRAYS_UP_TO:
            return [self.value(itype, key, lengths) for _ in range(n)]
        lengths[key] = n
        if itype in _SCALARS:
            self.pos += n * struct.calcsize(_SCALARS[itype])
        elif itype == GGUFValueType.STRING:
            self.skip_strings(n)
        else:
            raise ValueError(f"nested arrays in {key}")
        if self.pos > len(self.buf):
            raise ValueError("the header is cut off")
        return None


def _quantisation(metadata: dict, by_type: Counter) -> str:
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    return by_type.most_common(1)[0][0] if by_type else "unknown"


def _parse(buf, size: int) -> GGUFInfo:
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise ValueError("GGUF magic invalid")
    order = "<"
    version = struct.unpack_from("<I", buf, 4)[0]
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    cur = _Cursor(buf, order)
    cur.pos = 8
    n_tensors, n_kv = cur.take("Q"), cur.take("Q")
    metadata, lengths = {}, {}
    for _ in range(n_kv):
        key = cur.string()
        value = cur.value(cur.take("I"), key, lengths)
        if key not in lengths:
            metadata[key] = value
    params, by_type, ends = 0, Counter(), 0
    for _ in range(n_tensors):
        cur.string()
        n_elems = 1
        for _d in range(cur.take("I")):
            n_elems *= cur.take("Q")
        qtype, offset = GGMLQuantizationType(cur.take("I")), cur.take("Q")
        block, type_size = GGML_QUANT_SIZES[qtype]
        params += n_elems
        by_type[qtype.name] += n_elems
        ends = max(ends, offset + n_elems * type_size // block)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT
    expected = cur.pos + (-cur.pos % alignment) + ends
    if expected > size:
        raise ValueError(f"the file is cut off: its header describes {expected:,} bytes, the file has {size:,}")
    return GGUFInfo(metadata, lengths, params, _quantisation(metadata, by_type), expected)


def read_gguf_cached(path: Path) -> GGUFInfo:
    """read_gguf, remembered for the process while the file's size and mtime stay the same
    (a picker opened again lists at once)."""
    st = Path(path).stat()
    return _cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=512)
def _cached(path: str, _size: int, _mtime_ns: int) -> GGUFInfo:
    return read_gguf(path)


def read_gguf(path: str | Path) -> GGUFInfo:
    """Metadata, parameter count and quantisation of a GGUF file, from its header only.

    Raises ValueError (or OSError) saying why for a file that is not a complete GGUF: bad
    magic, unknown version, a header or data cut short.
    """
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ValueError("GGUF magic invalid")
        size = fh.seek(0, 2)
        if size < 24:
            raise ValueError("the header is cut off")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:  # pages are read as touched
            return _parse(buf, size)
