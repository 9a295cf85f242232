"""Screenshot of the model picker over stores shaped like a person's: `shoot_model_picker(path)`.

The models are headers only: real configs, safetensors headers and GGUF tensor infos of
well-known models, with their weights as sparse (unwritten) file space, so the catalog
reads what it would read from the real files while the disk holds a few kilobytes.
Verdicts are for a CPU with 16 GiB free, a common laptop.

Run offscreen: QT_QPA_PLATFORM=offscreen python scripts/screenshots_models.py [out.png]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA32_CARD = """---
license: llama3.2
extra_gated_prompt: "### LLAMA 3.2 COMMUNITY LICENSE AGREEMENT"
---
"""
GEMMA_CARD = """---
license: gemma
extra_gated_heading: Access Gemma on Hugging Face
extra_gated_prompt: To access Gemma on Hugging Face, you're required to review and agree to Google's usage license.
---
"""
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
# name, model_type, hidden, layers, ffn, vocab, heads, kv heads, head dim, tied, card, chat
HF_MODELS = [
    ("Qwen/Qwen2.5-0.5B-Instruct", "qwen2", 896, 24, 4864, 151936, 14, 2, 64, True, None, True),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", "llama", 960, 32, 2560, 49152, 15, 5, 64, True, None, True),
    ("meta-llama/Llama-3.2-1B-Instruct", "llama", 2048, 16, 8192, 128256, 32, 8, 64, True, LLAMA32_CARD, True),
    ("google/gemma-2-2b", "gemma2", 2304, 26, 9216, 256000, 8, 4, 256, True, GEMMA_CARD, False),
]
# name, where, arch, hidden, layers, ffn, vocab, heads, kv heads, tied, quant
GGUF_MODELS = [
    ("llama3.2:3b", "ollama", "llama", 3072, 28, 8192, 128256, 24, 8, True, "Q4_K"),
    ("phi3:mini", "ollama", "phi3", 3072, 32, 8192, 32064, 32, 32, False, "Q4_0"),
    ("lmstudio-community/Mistral-7B-Instruct-v0.3-GGUF/Mistral-7B-Instruct-v0.3-Q4_K_M.gguf", "lmstudio",
     "llama", 4096, 32, 14336, 32768, 32, 8, False, "Q4_K"),
    ("bartowski/Qwen2.5-7B-Instruct-GGUF/Qwen2.5-7B-Instruct-Q4_K_M.gguf", "lmstudio-cut",
     "qwen2", 3584, 28, 18944, 152064, 28, 4, False, "Q4_K"),
]


def _layer_shapes(h, layers, ffn, vocab, kv, tied, names):
    """{tensor name: shape} of a Llama-style decoder in the given naming scheme."""
    emb, q, k, v, o, gate, up, down, n1, n2, norm, head = names
    shapes = {emb: (vocab, h), norm: (h,)}
    if not tied:
        shapes[head] = (vocab, h)
    for i in range(layers):
        for name, shape in ((q, (h, h)), (k, (kv, h)), (v, (kv, h)), (o, (h, h)), (gate, (ffn, h)),
                            (up, (ffn, h)), (down, (h, ffn)), (n1, (h,)), (n2, (h,))):
            shapes[name.format(i=i)] = shape
    return shapes


HF_NAMES = ("model.embed_tokens.weight", "model.layers.{i}.self_attn.q_proj.weight",
            "model.layers.{i}.self_attn.k_proj.weight", "model.layers.{i}.self_attn.v_proj.weight",
            "model.layers.{i}.self_attn.o_proj.weight", "model.layers.{i}.mlp.gate_proj.weight",
            "model.layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.down_proj.weight",
            "model.layers.{i}.input_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight",
            "model.norm.weight", "lm_head.weight")
GGUF_NAMES = ("token_embd.weight", "blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight", "blk.{i}.attn_v.weight",
              "blk.{i}.attn_output.weight", "blk.{i}.ffn_gate.weight", "blk.{i}.ffn_up.weight",
              "blk.{i}.ffn_down.weight", "blk.{i}.attn_norm.weight", "blk.{i}.ffn_norm.weight",
              "output_norm.weight", "output.weight")


def sparse_safetensors(path: Path, shapes: dict) -> None:
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + offset)  # sparse: the weights take no disk space


def hf_repo(cache: Path, spec) -> None:
    from tests.model_stores import write_hf_repo

    name, mtype, h, layers, ffn, vocab, heads, kv_heads, head_dim, tied, card, chat = spec
    config = {"model_type": mtype, "hidden_size": h, "num_hidden_layers": layers, "intermediate_size": ffn,
              "vocab_size": vocab, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "head_dim": head_dim, "tie_word_embeddings": tied, "torch_dtype": "bfloat16"}
    files = {"config.json": json.dumps(config).encode(),
             "tokenizer_config.json": json.dumps({"chat_template": CHATML} if chat else {}).encode()}
    if card:
        files["README.md"] = card.encode()
    snapshot = write_hf_repo(cache, name, files)
    target = snapshot.parent.parent / "blobs" / "weights"
    sparse_safetensors(target, _layer_shapes(h, layers, ffn, vocab, kv_heads * head_dim, tied, HF_NAMES))
    (snapshot / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / "weights")


def sparse_gguf(path: Path, spec, cut: bool = False) -> None:
    import gguf
    import numpy as np

    _, _, arch, h, layers, ffn, vocab, heads, kv_heads, tied, quant = spec
    qtype = gguf.GGMLQuantizationType[quant]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(Path(spec[0]).stem)
    w.add_block_count(layers)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_chat_template(CHATML)
    total = 0
    for name, shape in _layer_shapes(h, layers, ffn, vocab, kv_heads * (h // heads), tied, GGUF_NAMES).items():
        block, size = gguf.GGML_QUANT_SIZES[qtype if len(shape) == 2 else gguf.GGMLQuantizationType.F32]
        nbytes = int(np.prod(shape)) // block * size
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes,
                          raw_dtype=qtype if len(shape) == 2 else gguf.GGMLQuantizationType.F32)
        total += nbytes + (-nbytes % 32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = path.stat().st_size + (-path.stat().st_size % 32)
    with open(path, "r+b") as fh:
        fh.truncate(start + (total // 3 if cut else total))


def build(root: Path):
    from dpo_engine.catalog.sources import Locations

    for spec in HF_MODELS:
        hf_repo(root / "hf", spec)
    for spec in GGUF_MODELS:
        name, where = spec[0], spec[1]
        if where == "ollama":
            import hashlib

            from tests.model_stores import write_ollama_manifest

            blob = root / "ollama" / "blobs" / "tmp"
            blob.parent.mkdir(parents=True, exist_ok=True)
            sparse_gguf(blob, spec)
            digest = hashlib.sha256(name.encode()).hexdigest()  # stands in for the content hash
            blob.rename(blob.parent / f"sha256-{digest}")
            model, tag = name.split(":")
            write_ollama_manifest(root / "ollama", model, tag, [
                {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 0}])
        else:
            path = root / "lmstudio" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sparse_gguf(path, spec, cut=where == "lmstudio-cut")
    return Locations(root / "hf", root / "ollama", (root / "lmstudio",))


def shoot_model_picker(path: Path) -> None:
    from PySide6.QtWidgets import QApplication

    from app.widgets.model_picker import ModelPickerDialog
    from dpo_engine.catalog import list_models

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        catalog = list_models(locations=build(Path(tmp)), device="cpu", free_bytes=16 * 2**30)
        dialog = ModelPickerDialog(catalog)
        dialog.resize(1280, 560)
        dialog.show()
        dialog.select_path(next(e.path for e in catalog.entries if e.name == "meta-llama/Llama-3.2-1B-Instruct"))
        for _ in range(5):
            app.processEvents()
        dialog.grab().save(str(path))
        dialog.close()


if __name__ == "__main__":
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    shoot_model_picker(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots" / "model_picker.png")
