"""A PEFT LoRA adapter as a GGUF LoRA file: what llama.cpp loads with `--lora` and Ollama with `ADAPTER`.

What llama.cpp's `convert_lora_to_gguf.py` writes, for the families `gguf_file` knows:

- `general.type` = "adapter", `adapter.type` = "lora", `adapter.lora.alpha`, and the base's
  `general.architecture` (llama.cpp refuses an adapter of another architecture);
- for each adapted weight W (GGUF name N): `N.lora_a` = A (r x in) and `N.lora_b` = B (out x r), in
  f32 (megabytes; no rounding); llama.cpp adds (alpha / r) * B @ A, with r read from the tensors;
- B's rows permuted as W's are (Llama's Q and K: llama.cpp's rope pairs), so B @ A lands where W does.

llama.cpp has one alpha per adapter and takes r from each tensor; a module whose PEFT scale differs
from lora_alpha / r (rsLoRA's alpha / sqrt(r), per-module alpha_pattern) has the ratio folded into
its B, so every module adds exactly what PEFT adds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dpo_engine.errors import ModelError
from dpo_engine.export.gguf_file import permute_qk, arch_spec, check_supported


def _pairs(adapter: Path) -> tuple[dict[str, tuple], float]:
    """({base weight name: (A, B, PEFT's scale)}, lora_alpha) of a plain LoRA adapter folder."""
    from dpo_engine.export.tensors import read_adapter

    config = json.loads((adapter / "adapter_config.json").read_text())
    return read_adapter(adapter), float(config["lora_alpha"])


def adapter_tensors(adapter: Path, config) -> list[tuple[str, np.ndarray]]:
    """[(GGUF name, f32 array)] for every lora_a / lora_b, in the order a reader expects (a, then b)."""
    import gguf

    spec = check_supported(config)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[spec.gguf_arch], config.num_hidden_layers)
    pairs, alpha = _pairs(adapter)
    out = []
    for base, (a, b, scale) in sorted(pairs.items()):
        gguf_name = name_map.get_name(base, try_suffixes=(".weight",))
        if gguf_name is None or base == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            raise ModelError(f"The adapter changes {base!r}, which a GGUF of this model does not hold as its own "
                             "tensor; export the merged model (--format gguf) instead.")
        a, b = a.float().numpy(), b.float().numpy()
        rank = a.shape[0]
        if scale != alpha / rank:
            b = b * np.float32(scale / (alpha / rank))
        if spec.permute_qk and base.endswith("q_proj.weight"):
            b = permute_qk(b, config.num_attention_heads)
        elif spec.permute_qk and base.endswith("k_proj.weight"):
            b = permute_qk(b, config.num_key_value_heads)
        out += [(gguf_name + ".lora_a", np.ascontiguousarray(a, np.float32)),
                (gguf_name + ".lora_b", np.ascontiguousarray(b, np.float32))]
    return out


def write_gguf_lora(adapter: Path, config, path: Path, name: str = "adapter") -> int:
    """Write the LoRA adapter in `adapter` (for a base with `config`) as a GGUF LoRA file; return its size."""
    import gguf

    spec = arch_spec(config)
    tensors = adapter_tensors(adapter, config)
    _, alpha = _pairs(adapter)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]])
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for tensor_name, data in tensors:
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return Path(path).stat().st_size
