"""Model stores on disk, built from tiny files (nothing downloaded): a Hugging Face hub cache,
an Ollama store and a folder of .gguf files, as the catalog finds them on a person's machine.

Every parameter count is known by construction, so tests compare against exact numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
VOCAB = 100  # > the reader's 64-element cut, so the long-array path is exercised


def gguf_param_count(vocab: int = VOCAB, hidden: int = 16, layers: int = 2, ffn: int = 32) -> int:
    """What write_gguf writes: embeddings, per layer q/k/v/o + gate/up/down + 2 norms, final norm."""
    return vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden) + hidden


def write_gguf(path: Path, arch: str = "llama", name: str = "Tiny", chat_template: str | None = CHATML,
               quantised: bool = False, license: str | None = None, vocab: int = VOCAB, hidden: int = 16,
               layers: int = 2, ffn: int = 32) -> Path:
    """A valid little GGUF with a real-looking header (architecture keys, a vocabulary) and
    llama.cpp tensor names; Q8_0 tensors when `quantised` (and no file-type key, so the
    catalog must find the quantisation from the tensors)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(layers)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_context_length(256)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    if chat_template:
        w.add_chat_template(chat_template)
    if license:
        w.add_license(license)
    if not quantised:
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)

    def tensor(tname, *shape):
        data = rng.standard_normal(shape).astype(np.float32)
        if quantised and len(shape) == 2 and shape[-1] % 32 == 0:  # Q8_0 blocks are 32 wide
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(tname, data)

    tensor("token_embd.weight", vocab, hidden)
    for i in range(layers):
        for proj in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{proj}.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
    tensor("output_norm.weight", hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------- Hugging Face cache


def _blob_link(repo: Path, snapshot: Path, rel: str, data: bytes) -> None:
    """Store `data` as a blob named by its hash and link snapshots/<rev>/<rel> to it, as the hub client does."""
    digest = hashlib.sha256(data).hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = snapshot / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def safetensors_bytes(shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> bytes:
    """A valid .safetensors file of zeros with the given tensor shapes."""
    itemsize = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)


def hf_model_files(model_type: str = "qwen2", hidden: int = 16, layers: int = 2, ffn: int = 32, vocab: int = 64,
                   chat_template: str | None = CHATML, card: str | None = None,
                   dtype: str = "BF16") -> tuple[dict[str, bytes], int]:
    """({relative path: bytes}, parameter count) of a tiny model folder: config.json, one
    safetensors file, tokenizer_config.json (with the chat template) and an optional README."""
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"model.layers.{i}.self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"model.layers.{i}.mlp.gate_proj.weight"] = (ffn, hidden)
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (ffn, hidden)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, ffn)
    config = {"model_type": model_type, "architectures": ["Qwen2ForCausalLM"], "hidden_size": hidden,
              "num_hidden_layers": layers, "intermediate_size": ffn, "vocab_size": vocab,
              "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": True}
    tok = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"}
    if chat_template:
        tok["chat_template"] = chat_template
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": safetensors_bytes(shapes, dtype),
             "tokenizer_config.json": json.dumps(tok).encode()}
    if card:
        files["README.md"] = card.encode()
    return files, int(sum(np.prod(s) for s in shapes.values()))


GATED_CARD = """---
license: other
license_name: tiny-community-license
extra_gated_prompt: You agree to the Tiny Community License before using this model.
extra_gated_fields:
  Name: text
---
# Tiny gated model
"""


def write_hf_repo(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "a" * 40) -> Path:
    """models--org--name/{blobs, refs/main, snapshots/<revision>} with the files linked into the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for rel, data in files.items():
        _blob_link(repo, snapshot, rel, data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def build_hf_cache(cache: Path) -> dict[str, int]:
    """Three usable models (chat, gated base, GGUF-only) and one damaged repo; returns {name: parameters}."""
    cache.mkdir(parents=True, exist_ok=True)
    chat, n_chat = hf_model_files("qwen2")
    write_hf_repo(cache, "tiny-org/tiny-qwen2-chat", chat)
    base, n_base = hf_model_files("gemma2", hidden=8, chat_template=None, card=GATED_CARD, dtype="F32")
    write_hf_repo(cache, "tiny-org/tiny-gemma2-base", base, revision="b" * 40)
    gguf_repo = cache / "gguf-src"
    gguf_repo.mkdir()
    data = write_gguf(gguf_repo / "tiny-q8.gguf", arch="qwen2", quantised=True, hidden=32).read_bytes()
    write_hf_repo(cache, "tiny-org/tiny-GGUF", {"tiny-q8.gguf": data}, revision="c" * 40)
    (gguf_repo / "tiny-q8.gguf").unlink()
    gguf_repo.rmdir()
    damaged = cache / "models--tiny-org--damaged"  # refs/main names a snapshot that is not there
    (damaged / "snapshots").mkdir(parents=True)
    (damaged / "refs").mkdir()
    (damaged / "refs" / "main").write_text("d" * 40)
    return {"tiny-org/tiny-qwen2-chat": n_chat, "tiny-org/tiny-gemma2-base": n_base,
            "tiny-org/tiny-GGUF/tiny-q8.gguf": gguf_param_count(hidden=32)}


# --------------------------------------------------------------------------- Ollama


def _ollama_blob(root: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / digest.replace(":", "-")).write_bytes(data)
    return digest


def write_ollama_manifest(root: Path, model: str, tag: str, layers: list[dict],
                          namespace: str = "library") -> Path:
    path = root / "manifests" / "registry.ollama.ai" / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                           "digest": "sha256:" + "0" * 64, "size": 2},
                                "layers": layers}))
    return path


def build_ollama_store(root: Path, scratch: Path) -> dict[str, int]:
    """tiny:latest (GGUF blob + license layer), someone/tiny-base:q8 (no chat template),
    and gone:latest whose model blob is missing; returns {name: parameters} of the usable ones."""
    model = "application/vnd.ollama.image.model"
    scratch.mkdir(parents=True, exist_ok=True)
    chat = write_gguf(scratch / "a.gguf", arch="llama").read_bytes()
    base = write_gguf(scratch / "b.gguf", arch="qwen2", chat_template=None, quantised=True, hidden=32).read_bytes()
    lic = _ollama_blob(root, b"TINY LICENSE 1.0\nYou may use this tiny model.\n")
    write_ollama_manifest(root, "tiny", "latest", [
        {"mediaType": model, "digest": _ollama_blob(root, chat), "size": len(chat)},
        {"mediaType": "application/vnd.ollama.image.license", "digest": lic, "size": 40}])
    write_ollama_manifest(root, "tiny-base", "q8", [
        {"mediaType": model, "digest": _ollama_blob(root, base), "size": len(base)}], namespace="someone")
    write_ollama_manifest(root, "gone", "latest", [
        {"mediaType": model, "digest": "sha256:" + "e" * 64, "size": 10}])
    return {"tiny:latest": gguf_param_count(), "someone/tiny-base:q8": gguf_param_count(hidden=32)}


# --------------------------------------------------------------------------- a folder of .gguf files


def build_gguf_folder(folder: Path) -> dict[str, int]:
    """good.gguf, nested/deeper.gguf, a projector (skipped), a truncated and a random file."""
    folder.mkdir(parents=True, exist_ok=True)
    write_gguf(folder / "good.gguf", arch="mistral", name="Good")
    (folder / "nested").mkdir()
    write_gguf(folder / "nested" / "deeper.gguf", arch="phi3", chat_template=None)
    write_gguf(folder / "mmproj-vision.gguf")
    whole = write_gguf(folder / "cut.gguf").read_bytes()
    (folder / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    (folder / "random.gguf").write_bytes(np.random.default_rng(1).bytes(4096))
    (folder / "empty.gguf").write_bytes(b"")
    return {"good.gguf": gguf_param_count(), "nested/deeper.gguf": gguf_param_count()}
