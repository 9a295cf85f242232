"""A LoRA run's adapter alone: as a GGUF LoRA file (llama.cpp `--lora`, Ollama `ADAPTER`), and as an
Ollama folder over the Ollama model the run started from (no copy of the base).

Read back with code we did not write: `gguf.GGUFReader` for the file's tensors and metadata, and
transformers' own un-permutation of Q/K rows (the one its GGUF loader uses) for Llama's B matrices.
The adapter applied as llama.cpp applies it (W + alpha / r * B @ A, in the GGUF's layout) onto the
base's GGUF gives the merged model's GGUF, which transformers reads back (tests/test_export.py)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.errors import ConfigError
from dpo_engine.export import export_model
from tests.model_stores import write_ollama_manifest
from tests.tiny_model import build_bpe_tokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]
RANK, ALPHA = 4, 8


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny Llama (4 heads, 2 KV heads: Q and K permute differently) with a byte-level BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("base")
    tok = build_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_lora_run(base_dir: Path, folder: Path, base_ref: str, **lora) -> Path:
    """A LoRA run's checkpoint as the trainer leaves it: adapter (B away from zero), tokenizer, run file."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, task_type="CAUSAL_LM", **lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    run = {"base_model": base_ref, "lora": True, "merged": False, "step": 4, "total_steps": 4, "status": "finished",
           "config": {"loss": "sigmoid", "beta": 0.1, "lr": 5e-5,
                      "lora": {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS}}}
    (folder / "dpo_studio_run.json").write_text(json.dumps(run))
    return folder


@pytest.fixture(scope="module")
def lora_run(base_dir, tmp_path_factory) -> Path:
    return make_lora_run(base_dir, tmp_path_factory.mktemp("runs") / "lora", str(base_dir))


def _peft_pairs(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'model.layers.0.self_attn.q_proj': (A, B)} as PEFT saved them."""
    from safetensors.numpy import load_file

    weights = load_file(str(run / "adapter_model.safetensors"))
    return {k.removeprefix("base_model.model.").split(".lora_A.")[0]: (v, weights[k.replace("lora_A", "lora_B")])
            for k, v in weights.items() if ".lora_A." in k}


def _gguf_name(module: str) -> str:
    layer = module.split(".")[2]
    short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "up_proj": "ffn_up"}[module.split(".")[-1]]
    return f"blk.{layer}.{short}.weight"


def _unpermute(b: np.ndarray, module: str) -> np.ndarray:
    """transformers' GGUF loader's own inverse of llama.cpp's Q/K row order (4 heads, 2 KV heads)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    return processor.process(b, _gguf_name(module)).weights


def test_gguf_lora_holds_the_peft_adapter_as_llama_cpp_reads_it(lora_run, base_dir, tmp_path):
    from gguf import GGUFReader

    out = tmp_path / "adapter.gguf"
    result = export_model(str(lora_run), "gguf-lora", out)
    reader = GGUFReader(str(out))
    fields = {k: reader.fields[k].contents() for k in ("general.architecture", "general.type", "adapter.type",
                                                       "adapter.lora.alpha")}
    assert fields == {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora",
                      "adapter.lora.alpha": float(ALPHA)}
    tensors = {t.name: t for t in reader.tensors}
    pairs = _peft_pairs(lora_run)
    assert len(pairs) == 2 * len(TARGETS) and len(tensors) == 2 * len(pairs)  # two layers; an A and a B each
    for module, (a, b) in pairs.items():
        got_a, got_b = (np.array(tensors[_gguf_name(module) + s].data) for s in (".lora_a", ".lora_b"))
        assert np.array_equal(got_a, a)  # f32: exactly what PEFT saved
        if module.endswith(("q_proj", "k_proj")):
            assert not np.array_equal(got_b, b)  # rows in llama.cpp's rope order...
            got_b = _unpermute(got_b, module)  # ...which transformers' loader undoes
        assert np.array_equal(got_b, b)
    assert result.size_bytes == out.stat().st_size
    assert result.size_bytes < 0.2 * (base_dir / "model.safetensors").stat().st_size
    assert "applies to" in result.note


def test_the_adapter_over_the_base_gguf_is_the_merged_models_gguf(lora_run, base_dir, tmp_path):
    """llama.cpp adds alpha / r * lora_b @ lora_a to each base tensor (ggml's shapes: a is r x in, b out x r)."""
    from gguf import GGUFReader

    export_model(str(lora_run), "gguf-lora", tmp_path / "adapter.gguf")
    export_model(str(base_dir), "gguf", tmp_path / "base.gguf")
    export_model(str(lora_run), "gguf", tmp_path / "merged.gguf")
    adapter, base, merged = ({t.name: np.array(t.data, dtype=np.float32) for t in GGUFReader(str(tmp_path / n)).tensors}
                             for n in ("adapter.gguf", "base.gguf", "merged.gguf"))
    changed = 0
    for name, weight in base.items():
        if name + ".lora_a" in adapter:
            weight = weight + ALPHA / RANK * adapter[name + ".lora_b"] @ adapter[name + ".lora_a"]
            changed += 1
        assert np.allclose(weight, merged[name], atol=2e-3), name  # both files rounded to f16
    assert changed == 2 * len(TARGETS)


def test_rslora_and_per_module_alpha_are_folded_into_b(base_dir, tmp_path):
    """llama.cpp has one alpha and scales by alpha / r; PEFT's rsLoRA scales by alpha / sqrt(r) = 8 / 2 = 4,
    twice 8 / 4, and alpha_pattern gives v_proj alpha 2 (scale 2 / 2 = 1 under rsLoRA): B carries the ratio."""
    from gguf import GGUFReader

    run = make_lora_run(base_dir, tmp_path / "rs", str(base_dir), use_rslora=True, alpha_pattern={"v_proj": 2})
    export_model(str(run), "gguf-lora", tmp_path / "rs.gguf")
    tensors = {t.name: np.array(t.data) for t in GGUFReader(str(tmp_path / "rs.gguf")).tensors}
    for module, (_, b) in _peft_pairs(run).items():
        got = tensors[_gguf_name(module) + ".lora_b"]
        got = _unpermute(got, module) if module.endswith(("q_proj", "k_proj")) else got
        peft_scale = (2 if module.endswith("v_proj") else ALPHA) / math.sqrt(RANK)
        assert np.allclose(got, b * peft_scale / (ALPHA / RANK), rtol=1e-6)


def test_gguf_lora_of_a_full_model_is_refused(base_dir, tmp_path):
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        export_model(str(base_dir), "gguf-lora", tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_ollama_export_over_an_ollama_base_is_the_adapter_and_a_modelfile(base_dir, tmp_path, monkeypatch):
    """The run started from `tiny:latest` in Ollama's store (its GGUF blob): the export is a Modelfile
    naming that model, the adapter, a card; no copy of the base, and the sizes are stated."""
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))  # the blob is converted once, here
    export_model(str(base_dir), "gguf", tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    store = tmp_path / "ollama"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True)
    blob = store / "blobs" / digest.replace(":", "-")
    blob.write_bytes(data)
    write_ollama_manifest(store, "tiny", "latest", [{"mediaType": "application/vnd.ollama.image.model",
                                                     "digest": digest, "size": len(data)}])
    run = make_lora_run(base_dir, tmp_path / "run", str(blob))
    out = tmp_path / "tuned"
    result = export_model(str(run), "ollama", out)
    assert set(result.files) == {"Modelfile", "README.md", "tuned-adapter.gguf"}
    assert (out / "Modelfile").read_text() == "FROM tiny:latest\nADAPTER ./tuned-adapter.gguf\n"
    assert result.command == f"ollama create tuned -f {out / 'Modelfile'}"
    assert result.size_bytes < len(data) / 3  # megabytes beside gigabytes, for a real model
    assert "trained on exactly that file's weights, dequantised" in result.note
    card = (out / "README.md").read_text()
    assert "| base model | tiny:latest |" in card and "LoRA adapter alone (rank 4)" in card
    assert "ollama create tuned -f Modelfile" in card and "--lora tuned-adapter.gguf" in card
    assert "trained on exactly that model's weights" in card
    cli = CliRunner().invoke(main, ["export-model", str(run), "--format", "ollama", "--output", str(tmp_path / "c")])
    assert cli.exit_code == 0, cli.output
    assert " MB) in " in cli.stdout and "dequantised" in cli.stdout


def test_export_options_of_a_lora_run_before_writing(lora_run, base_dir, tmp_path):
    """Sizes from headers only, each within 10% of what the export then writes; nothing refused."""
    from dpo_engine.export.options import export_options

    options = {(o.format, o.quant): o for o in export_options(str(lora_run))}
    assert all(o.allowed for o in options.values())
    for fmt, quant, out in (("gguf-lora", None, "a.gguf"), ("gguf", "q8_0", "m.gguf"), ("hf", None, "hf")):
        written = export_model(str(lora_run), fmt, tmp_path / out, quant=quant or "f16").size_bytes
        estimate = options[(fmt, quant)].size_bytes
        assert 0.9 * estimate < written < 1.1 * estimate, (fmt, written, estimate)


def test_a_merged_lora_run_still_exports_its_adapter_alone(lora_run, base_dir, tmp_path):
    """A run saved merged (full weights at the top, the adapter in adapter/): gguf-lora writes the same
    adapter file as from the unmerged run."""
    import shutil

    from gguf import GGUFReader

    merged = tmp_path / "merged"
    shutil.copytree(base_dir, merged)  # stands in for the merged weights: only their config is read
    shutil.copytree(lora_run, merged / "adapter")
    shutil.copy2(lora_run / "dpo_studio_run.json", merged / "dpo_studio_run.json")
    export_model(str(merged), "gguf-lora", tmp_path / "a.gguf")
    export_model(str(lora_run), "gguf-lora", tmp_path / "b.gguf")
    a, b = ({t.name: t.data.tobytes() for t in GGUFReader(str(tmp_path / n)).tensors} for n in ("a.gguf", "b.gguf"))
    assert a == b and len(a) == 4 * len(TARGETS)
