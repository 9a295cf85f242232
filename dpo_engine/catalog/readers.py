"""Read one model's description from its files without loading weights: config.json,
safetensors headers (8-byte length + JSON), tokenizer config, model card front matter,
and GGUF headers. Each reader returns a CatalogEntry; a broken model gives an entry with
`error` set, never an exception.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections import Counter
from pathlib import Path

from dpo_engine.catalog.entry import CatalogEntry, broken
from dpo_engine.catalog.fit import ModelShape
from dpo_engine.catalog.gguf_header import read_gguf_cached

SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
                      "F8_E4M3": "float8", "F8_E5M2": "float8", "I8": "int8", "U8": "uint8", "I32": "int32"}
MAX_HEADER = 100 * 2**20  # safetensors caps its JSON header at 100 MB; a larger length means a broken file
GATED_KEYS = ("extra_gated_prompt", "extra_gated_heading", "extra_gated_fields", "extra_gated_description")


class NestedTooDeep(ValueError):
    """A JSON file nested deeper than Python's parser recurses (a damaged or hostile file)."""


def loads_json(text: str | bytes, what: str):
    """`json.loads`, with a file nested too deeply to parse (json raises RecursionError past
    ~1,000 levels) turned into a ValueError that names `what`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise NestedTooDeep(f"{what} is nested too deeply to read (a damaged file)") from None


# --------------------------------------------------------------------------- safetensors folders


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file: {tensor: {dtype, shape, data_offsets}, "__metadata__": ...}."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path.name} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise ValueError(f"{path.name} has no valid safetensors header")
        if 8 + n > size:
            raise ValueError(f"{path.name} is cut off inside its header ({size:,} bytes)")
        header = loads_json(fh.read(n), f"the header of {path.name}")
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path.name} is cut off: its header describes {8 + n + end:,} bytes, the file has {size:,}")
    return header


def count_safetensors(files: list[Path]) -> tuple[int, str | None]:
    """(parameter count, dominant dtype name) over the tensors of `files`."""
    params, by_dtype = 0, Counter()
    for path in files:
        for name, t in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = 1
            for d in t["shape"]:
                n *= d
            params += n
            by_dtype[t["dtype"]] += n
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else None
    return params, SAFETENSORS_DTYPES.get(dtype, dtype.lower() if dtype else None)


def text_config(config: dict) -> dict:
    """The language model's part of a config (multimodal configs nest it in text_config)."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def shape_from_config(config: dict, parameters: int | None) -> tuple[ModelShape, bool]:
    """(shape, estimated): the parameter count is estimated from the config when not given.

    Estimate: embeddings (twice if untied) + per layer attention (q, o: h x h; k, v: h x kv)
    + gated MLP (3 x h x ffn) + norms.
    """
    c = text_config(config)
    h = int(c.get("hidden_size") or c.get("n_embd") or c.get("d_model") or 0)
    layers = int(c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers") or 0)
    ffn = int(c.get("intermediate_size") or c.get("n_inner") or 0) or 4 * h
    vocab = int(c.get("vocab_size") or 0)
    heads = int(c.get("num_attention_heads") or c.get("n_head") or 0)
    head_dim = int(c.get("head_dim") or (h // heads if heads else 0))
    kv_dim = int(c.get("num_key_value_heads") or heads) * head_dim
    estimated = parameters is None
    if estimated:
        q_dim = heads * head_dim or h
        per_layer = h * q_dim * 2 + h * kv_dim * 2 + 3 * h * ffn + 2 * h
        embeddings = vocab * h * (1 if c.get("tie_word_embeddings", True) else 2)
        parameters = layers * per_layer + embeddings + h
    return ModelShape(parameters, h, layers, ffn, vocab, kv_dim), estimated


def has_chat_template(folder: Path) -> bool:
    """A chat template in tokenizer_config.json, or the separate chat_template.jinja / .json."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        tok = loads_json((folder / "tokenizer_config.json").read_text(encoding="utf-8"), "tokenizer_config.json")
    except NestedTooDeep:
        raise  # a damaged file, not a missing template: the tokenizer would not load either
    except (OSError, ValueError):
        return False
    return bool(tok.get("chat_template"))


def card_terms(folder: Path) -> tuple[str | None, str | None]:
    """(license, gated note) from README.md's YAML front matter, if any."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None, None
    try:
        import yaml

        meta = yaml.safe_load(match.group(1)) or {}
    except Exception:  # a malformed card is no reason to hide the model
        return None, None
    if not isinstance(meta, dict):
        return None, None
    license_ = meta.get("license_name") or meta.get("license")
    gated = None
    if meta.get("gated") or any(k in meta for k in GATED_KEYS):
        prompt = str(meta.get("extra_gated_prompt") or meta.get("extra_gated_heading") or "").strip()
        gated = "its terms ask for acceptance before use" + (f": {prompt.splitlines()[0][:160]}" if prompt else "")
    return (str(license_) if license_ else None), gated


def folder_size(folder: Path) -> int:
    """Bytes of the files in `folder` (following links: the HF cache links snapshots to blobs)."""
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def read_folder(folder: Path, name: str, source: str, size: int | None = None) -> CatalogEntry:
    """A Hugging Face model folder (config.json + *.safetensors), or a PEFT adapter folder.
    Whatever is wrong with it (a damaged file, a file it may not read) is this entry's error."""
    folder = Path(folder)
    try:
        size = folder_size(folder) if size is None else size
        return _read_folder(folder, name, source, size)
    except Exception as exc:  # one model's damage is its own row: listing goes on with the others
        return broken(name, source, str(folder), f"cannot be read: {exc}", size or 0)


def _read_folder(folder: Path, name: str, source: str, size: int) -> CatalogEntry:
    try:
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            return _read_adapter(folder, name, source, size)
        config = loads_json((folder / "config.json").read_text(encoding="utf-8"), "config.json")
        if not isinstance(config, dict):
            raise ValueError("config.json is not a JSON object")
    except FileNotFoundError:
        return broken(name, source, str(folder), "no config.json: not a model folder", size)
    except NestedTooDeep as exc:
        return broken(name, source, str(folder), str(exc), size)
    except (OSError, ValueError) as exc:
        return broken(name, source, str(folder), f"config.json cannot be read: {exc}", size)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        why = "pickled .bin weights only (DPO Studio loads only safetensors)" if any(folder.glob("*.bin")) \
            else "no .safetensors weights"
        return broken(name, source, str(folder), why, size, "safetensors")
    try:
        params, dtype = count_safetensors(files)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return broken(name, source, str(folder), f"unreadable weights: {exc}", size, "safetensors")
    shape, _ = shape_from_config(config, params)
    license_, gated = card_terms(folder)
    notes = _config_notes(config)
    chat = has_chat_template(folder)
    if not chat:
        notes.append("no chat template: a base model, used in plain-text mode (prompt + continuation)")
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        dtype = f"{quant.get('quant_method', 'quantised')} {quant.get('bits', '')}-bit".replace(" -bit", "")
    return CatalogEntry(name=name, source=source, path=str(folder), format="safetensors",
                        family=text_config(config).get("model_type") or config.get("model_type"),
                        parameters=params, precision=dtype, size_bytes=size, chat_template=chat,
                        license=license_, gated=gated, notes=tuple(notes), shape=shape)


def _config_notes(config: dict) -> list[str]:
    notes = []
    if config.get("auto_map"):
        notes.append("the config names remote code (auto_map); DPO Studio never runs it, so only an "
                     "architecture transformers has built in loads")
    if isinstance(config.get("quantization_config"), dict):
        notes.append("quantised weights: training needs the matching quantisation library")
    return notes


def _read_adapter(folder: Path, name: str, source: str, size: int) -> CatalogEntry:
    adapter = loads_json((folder / "adapter_config.json").read_text(encoding="utf-8"), "adapter_config.json")
    base = adapter.get("base_model_name_or_path") or "?"
    base_entry = read_folder(Path(base), base, source) if Path(base).is_dir() else None
    usable_base = base_entry is not None and base_entry.usable
    return CatalogEntry(
        name=name, source=source, path=str(folder), format="adapter",
        family=base_entry.family if usable_base else None,
        parameters=base_entry.parameters if usable_base else None,
        precision=f"LoRA r={adapter.get('r', '?')}", size_bytes=size,
        chat_template=has_chat_template(folder) or (base_entry.chat_template if usable_base else None),
        notes=(f"a LoRA adapter on {base}",), shape=base_entry.shape if usable_base else None)


# --------------------------------------------------------------------------- GGUF files


@functools.cache
def _gguf_architectures() -> set[str] | None:
    """The GGUF architectures transformers can read (None if it cannot say)."""
    try:
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    except Exception:  # an older or newer transformers: no note rather than a wrong one
        return None
    return set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}


def read_gguf_file(path: Path, name: str | None, source: str) -> CatalogEntry:
    """A .gguf file (or an Ollama blob): header only. Whatever is wrong with it is this entry's error."""
    path = Path(path)
    name = name or path.name
    try:
        return _read_gguf_file(path, name, source)
    except Exception as exc:  # e.g. metadata of the wrong type: one model's damage is its own row
        return broken(name, source, str(path), f"cannot be read: {exc}", fmt="gguf")


def _read_gguf_file(path: Path, name: str, source: str) -> CatalogEntry:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return broken(name, source, str(path), f"cannot read the file: {exc.strerror or exc}", fmt="gguf")
    if size == 0:
        return broken(name, source, str(path), "the file is empty", 0, "gguf")
    try:
        info = read_gguf_cached(path)
    except Exception as exc:  # the reader raises ValueError, KeyError, IndexError... on a damaged file
        reason = str(exc) or exc.__class__.__name__
        if "magic" in reason.lower():
            reason = "not a GGUF file (it does not start with the GGUF magic bytes)"
        return broken(name, source, str(path), f"unreadable GGUF: {reason}", size, "gguf")
    meta, arch = info.metadata, str(info.metadata.get("general.architecture") or "")

    def key(k):
        return meta.get(f"{arch}.{k}") or 0

    vocab = info.array_lengths.get("tokenizer.ggml.tokens") or len(meta.get("tokenizer.ggml.tokens") or [])
    heads, kv_heads = int(key("attention.head_count")), int(key("attention.head_count_kv"))
    hidden = int(key("embedding_length"))
    head_dim = int(key("attention.key_length")) or (hidden // heads if heads else 0)
    shape = ModelShape(info.parameters, hidden, int(key("block_count")), int(key("feed_forward_length")),
                       int(vocab), (kv_heads or heads) * head_dim)
    notes = []
    known = _gguf_architectures()
    if known is not None and arch and arch.replace("-", "_") not in known:
        notes.append(f"transformers cannot read GGUF files of architecture {arch!r}, so it cannot be trained here")
    chat = bool(meta.get("tokenizer.chat_template"))
    if not chat:
        notes.append("no chat template: a base model, used in plain-text mode (prompt + continuation)")
    return CatalogEntry(name=name, source=source, path=str(path), format="gguf", family=arch or None,
                        parameters=info.parameters, precision=info.quantisation, size_bytes=size,
                        chat_template=chat, license=meta.get("general.license"), notes=tuple(notes), shape=shape)
