"""Exporting a model: every format on a tiny random Llama, read back with code we did not write
(transformers' loaders, PEFT, the `gguf` package's reader), refusals, and atomic writes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.errors import ConfigError, DataError, ModelError
from dpo_engine.export import export_events, export_model
from dpo_engine.export.ollama import CHATML_TEMPLATE, chatml_default_system
from tests.tiny_model import CHAT_TEMPLATE, PADDED, SPECIALS, build_bpe_tokenizer

PROMPTS = ["Give me a tip for staying focused while studying.", "Write a short poem about the sea!",
           "What is 12 + 30? The answer is 42."]


def _load(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs).eval()


def _tokenizer(folder, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), **kwargs)


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return torch.tensor([tokenizer.encode(text, add_special_tokens=False)])


@torch.no_grad()
def _logits(model, ids) -> torch.Tensor:
    return model(ids).logits[0]


@torch.no_grad()
def _greedy(model, ids, n: int = 16) -> list[int]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def _f16_rounded(model):
    """The model as an f16 GGUF holds it: matrices rounded to f16, 1-D tensors (norms, biases) in f32."""
    from transformers import AutoModelForCausalLM

    rounded = AutoModelForCausalLM.from_config(model.config)
    rounded.load_state_dict({k: v.half().float() if v.ndim > 1 else v for k, v in model.state_dict().items()})
    return rounded.eval()


def _nothing_left(output: Path) -> None:
    assert not output.exists()
    assert not [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]


# --------------------------------------------------------------------------- hf


def test_hf_export_of_a_full_run_is_clean_and_computes_the_same(full_run_dir, tmp_path):
    out = tmp_path / "clean"
    result = export_model(str(full_run_dir), "hf", out)
    assert set(result.files) == {"README.md", "chat_template.jinja", "config.json", "generation_config.json",
                                 "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    source, exported = _load(full_run_dir), _load(out)
    tok = _tokenizer(out)
    for prompt in PROMPTS:
        ids = _ids(tok, prompt)
        assert torch.equal(_logits(exported, ids), _logits(source, ids))
    assert tok.chat_template == CHAT_TEMPLATE
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in front
    assert "library_name: transformers" in front and "- dpo" in front
    assert "| beta | 0.1 |" in card and "| steps done | 12 of 12 (finished) |" in card


def test_hf_export_of_a_lora_run_merges_the_adapter(lora_run_dir, bpe_model_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "merged"
    result = export_model(str(lora_run_dir), "hf", out)
    assert "model.safetensors" in result.files
    assert not [f for f in result.files if f.startswith("adapter") or f == "dpo_studio_run.json"]
    with_adapter = PeftModel.from_pretrained(_load(bpe_model_dir), str(lora_run_dir)).eval()
    merged, base = _load(out), _load(bpe_model_dir)
    ids = _ids(_tokenizer(out), PROMPTS[0])
    assert torch.allclose(_logits(merged, ids), _logits(with_adapter, ids), atol=1e-5)
    assert (_logits(merged, ids) - _logits(base, ids)).abs().max() > 1e-2  # the adapter is in the weights


def test_a_real_lora_run_exports_as_the_trainer_saved_it(bpe_model_dir, tmp_path, monkeypatch):
    """The trainer's own LoRA checkpoint layout (not a hand-made one): hf merges it, peft carries it,
    and both compute what the run's model computes."""
    from peft import PeftModel

    from dpo_engine.pairs import conversation
    from dpo_engine.train.config import LoraSettings, TrainConfig
    from dpo_engine.train.loop import train

    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    pairs = [conversation(f"Question {i}: agree?", "yes " * (1 + i % 3), "no " * (1 + i % 2)) for i in range(8)]
    run = tmp_path / "run"
    config = TrainConfig(output_dir=str(run), model=str(bpe_model_dir), lr=1e-2, batch_size=4, grad_accum=1,
                         warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3, max_steps=2,
                         lora=LoraSettings(rank=4, alpha=8, dropout=0.0))
    list(train(config, pairs))
    export_model(str(run), "hf", tmp_path / "merged")
    export_model(str(run), "peft", tmp_path / "adapter")
    trained = PeftModel.from_pretrained(_load(bpe_model_dir), str(run)).eval()
    ids = _ids(_tokenizer(run), PROMPTS[0])
    assert torch.allclose(_logits(_load(tmp_path / "merged"), ids), _logits(trained, ids), atol=1e-5)
    assert not torch.equal(_logits(trained, ids), _logits(_load(bpe_model_dir), ids))  # the run moved the model
    adapter = PeftModel.from_pretrained(_load(bpe_model_dir), str(tmp_path / "adapter")).eval()
    assert torch.equal(_logits(adapter, ids), _logits(trained, ids))
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "| LoRA | rank 4, alpha 8" in card and "- lora" in card


# --------------------------------------------------------------------------- peft


def test_peft_export_is_the_adapter_and_peft_loads_it(lora_run_dir, bpe_model_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    result = export_model(str(lora_run_dir), "peft", out)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= set(result.files)
    assert not [f for f in result.files if f.startswith(("trainer_state", "checkpoint", "dpo_studio"))]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(bpe_model_dir)
    assert "library_name: peft" in (out / "README.md").read_text()
    exported = PeftModel.from_pretrained(_load(bpe_model_dir), str(out)).eval()
    original = PeftModel.from_pretrained(_load(bpe_model_dir), str(lora_run_dir)).eval()
    ids = _ids(_tokenizer(out), PROMPTS[1])
    assert torch.equal(_logits(exported, ids), _logits(original, ids))


def test_peft_export_of_a_full_run_is_refused(full_run_dir, tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(ConfigError, match="full fine-tune"):
        export_model(str(full_run_dir), "peft", out)
    _nothing_left(out)


# --------------------------------------------------------------------------- gguf


def _field(reader, key):
    return reader.fields[key].contents()


def test_gguf_metadata_as_the_gguf_reader_sees_it(bpe_model_dir, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader, TokenType

    out = tmp_path / "model.gguf"
    export_model(str(bpe_model_dir), "gguf", out)
    reader = GGUFReader(str(out))
    tok = _tokenizer(bpe_model_dir)
    config = json.loads((bpe_model_dir / "config.json").read_text())
    expected = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
                "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": 2, "llama.context_length": 256, "llama.rope.dimension_count": 16,
                "llama.vocab_size": config["vocab_size"], "general.file_type": 1,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                "tokenizer.ggml.bos_token_id": tok.bos_token_id, "tokenizer.ggml.eos_token_id": tok.eos_token_id,
                "tokenizer.ggml.padding_token_id": tok.pad_token_id, "tokenizer.ggml.add_bos_token": False,
                "tokenizer.chat_template": CHAT_TEMPLATE}
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    assert tokens == [by_id[i] for i in range(len(tok))] + [f"[PAD{i}]" for i in range(len(tok), len(tok) + PADDED)]
    types = _field(reader, "tokenizer.ggml.token_type")
    assert [types[tok.convert_tokens_to_ids(s)] for s in SPECIALS] == [TokenType.CONTROL] * 3
    assert types[-PADDED:] == [TokenType.UNUSED] * PADDED
    assert set(types[len(SPECIALS):len(tok)]) == {TokenType.NORMAL}
    merges = json.loads((bpe_model_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in merges]
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in kinds  # tied embeddings: the reader ties output to token_embd
    assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == GGMLQuantizationType.F32
    assert kinds["blk.1.attn_q.weight"] == kinds["token_embd.weight"] == GGMLQuantizationType.F16
    assert len(kinds) == 2 + 2 * 9


def test_gguf_f16_read_by_transformers_computes_the_same(bpe_model_dir, tmp_path):
    """transformers' GGUF loader (its own Q/K un-permutation, tokenizer and config rebuild) gives the
    source model's logits to f16 rounding, and the same greedy continuation."""
    out = tmp_path / "model.gguf"
    export_model(str(bpe_model_dir), "gguf", out)
    source = _load(bpe_model_dir)
    rounded = _f16_rounded(source)
    loaded = _load(tmp_path, gguf_file=out.name)
    src_tok, gguf_tok = _tokenizer(bpe_model_dir), _tokenizer(tmp_path, gguf_file=out.name)
    for prompt in PROMPTS:
        ids = _ids(src_tok, prompt)
        assert torch.equal(_ids(gguf_tok, prompt), ids)  # same template, same tokens
        got = _logits(loaded, ids)
        assert torch.allclose(got, _logits(rounded, ids), atol=1e-5)
        assert torch.allclose(got, _logits(source, ids), atol=2e-3)  # f16 rounding of ~1.0 logits
        assert _greedy(loaded, ids) == _greedy(rounded, ids)


def test_gguf_q8_0_is_smaller_and_close(bpe_model_dir, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    export_model(str(bpe_model_dir), "gguf", tmp_path / "f16.gguf")
    export_model(str(bpe_model_dir), "gguf", tmp_path / "q8.gguf", quant="q8_0")
    kinds = {t.name: t.tensor_type for t in GGUFReader(str(tmp_path / "q8.gguf")).tensors}
    assert kinds["blk.0.ffn_down.weight"] == kinds["token_embd.weight"] == GGMLQuantizationType.Q8_0
    assert kinds["blk.0.ffn_norm.weight"] == GGMLQuantizationType.F32
    assert (tmp_path / "q8.gguf").stat().st_size < 0.75 * (tmp_path / "f16.gguf").stat().st_size
    source, loaded = _load(bpe_model_dir), _load(tmp_path, gguf_file="q8.gguf")
    ids = _ids(_tokenizer(bpe_model_dir), PROMPTS[0])
    assert torch.allclose(_logits(loaded, ids), _logits(source, ids), atol=0.05)  # measured 0.007


@pytest.mark.parametrize("quant", ["q4_0", "q4_1"])
def test_gguf_4_bit_reads_back_within_its_rounding(bpe_model_dir, tmp_path, quant):
    """Every 32-value block of a row, as transformers' loader dequantises it, is within the type's rounding
    of the source. Q4_0 stores d = m / -8 (m the block's value of largest magnitude) and q in 0..15 for
    round(x / d) + 8: the value -m lands on q = 16, clipped to 15, so the error is at most |d| = max|x| / 8.
    Q4_1 stores d = (max - min) / 15 and the min: rounding to the nearest step errs by at most d / 2.
    Both scales are f16, which adds at most 2^-11 of each stored number per step (the 1.01 and |min| terms)."""
    from gguf import GGMLQuantizationType, GGUFReader

    out = tmp_path / f"{quant}.gguf"
    export_model(str(bpe_model_dir), "gguf", out, quant=quant)
    kinds = {t.name: t.tensor_type for t in GGUFReader(str(out)).tensors}
    assert kinds["blk.0.attn_q.weight"] == GGMLQuantizationType[quant.upper()]
    assert kinds["token_embd.weight"] == GGMLQuantizationType.Q8_0  # kept at 8 bits, as llama.cpp keeps its output
    assert kinds["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    assert out.stat().st_size < 0.45 * export_model(str(bpe_model_dir), "gguf", tmp_path / "f16.gguf").size_bytes
    source, loaded = _load(bpe_model_dir).state_dict(), _load(tmp_path, gguf_file=out.name).state_dict()
    checked = 0
    for name, weight in source.items():
        if weight.ndim < 2 or "embed" in name or name == "lm_head.weight":  # the tied embedding: Q8_0
            continue
        blocks, got = weight.reshape(-1, 32), loaded[name].reshape(-1, 32)
        err = (got - blocks).abs().amax(dim=1)
        if quant == "q4_0":
            bound = blocks.abs().amax(dim=1) / 8 * 1.01
        else:
            low, high = blocks.amin(dim=1), blocks.amax(dim=1)
            bound = (high - low) / 30 * 1.01 + low.abs() * 2 ** -10
        assert bool((err <= bound).all()), name
        assert float(err.max()) > 0  # 4 bits do round: this compares the quantised file, not a copy
        checked += 1
    assert checked == 2 * 7  # q, k, v, o, gate, up, down in both layers


def test_gguf_reads_the_weights_transformers_reads(bpe_model_dir, tmp_path):
    """Mistral's repositories carry consolidated.safetensors (its own layout) beside the transformers
    shards: the export takes the shards the index names, as from_pretrained does."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    shutil.copytree(bpe_model_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    save_file({"layers.0.attention.wq.weight": torch.zeros(4, 4)}, str(folder / "consolidated.safetensors"))
    from gguf import GGUFReader

    export_model(str(folder), "gguf", tmp_path / "a.gguf")
    export_model(str(bpe_model_dir), "gguf", tmp_path / "b.gguf")
    a, b = ({t.name: t.data.tobytes() for t in GGUFReader(str(tmp_path / n)).tensors} for n in ("a.gguf", "b.gguf"))
    assert a == b


def test_gguf_of_a_lora_run_holds_the_merged_model(lora_run_dir, tmp_path):
    export_model(str(lora_run_dir), "hf", tmp_path / "merged")
    export_model(str(lora_run_dir), "gguf", tmp_path / "lora.gguf")
    rounded = _f16_rounded(_load(tmp_path / "merged"))
    ids = _ids(_tokenizer(lora_run_dir), PROMPTS[2])
    assert torch.allclose(_logits(_load(tmp_path, gguf_file="lora.gguf"), ids), _logits(rounded, ids), atol=1e-5)


def test_gguf_refuses_what_it_cannot_convert(tiny_model_dir, bpe_model_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    out = tmp_path / "x.gguf"
    with pytest.raises(ModelError, match="pre-tokenizer"):  # byte tokenizer without GPT-2's split
        export_model(str(tiny_model_dir), "gguf", out)
    _nothing_left(out)
    mistral = tmp_path / "mistral"  # Mistral v0.1: a 4096-token window llama.cpp's llama does not have
    MistralForCausalLM(MistralConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, sliding_window=4096,
                                     max_position_embeddings=32768)).save_pretrained(mistral)
    _tokenizer(bpe_model_dir).save_pretrained(mistral)
    with pytest.raises(ModelError, match="sliding window of 4096 tokens"):
        export_model(str(mistral), "ollama", tmp_path / "q")
    _nothing_left(tmp_path / "q")
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=1, n_head=4)).save_pretrained(gpt2)
    _tokenizer(bpe_model_dir).save_pretrained(gpt2)
    with pytest.raises(ModelError, match="supports LlamaForCausalLM.*this model is GPT2LMHeadModel"):
        export_model(str(gpt2), "gguf", out)
    _nothing_left(out)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_gguf_of_qwen_models_read_by_transformers_computes_the_same(arch, tmp_path):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k norms, head_dim 128): no Q/K permutation, their own split regex."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from gguf import GGUFReader

    tok = build_bpe_tokenizer(split=PRETOKENIZE_REGEX)
    shape = dict(vocab_size=len(tok), intermediate_size=128, num_hidden_layers=2, max_position_embeddings=256,
                 tie_word_embeddings=arch == "qwen2", bos_token_id=None, eos_token_id=tok.eos_token_id)
    torch.manual_seed(2)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **shape))
    else:  # transformers' GGUF loader assumes Qwen3's head_dim of 128
        model = Qwen3ForCausalLM(Qwen3Config(hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                                             head_dim=128, **shape))
    with torch.no_grad():  # norms away from 1, biases away from 0: a misplaced one shows in the logits
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.normal_(1.0 if "norm" in name else 0.0, 0.3)
    folder = tmp_path / arch
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    export_model(str(folder), "gguf", tmp_path / "m.gguf")
    reader = GGUFReader(str(tmp_path / "m.gguf"))
    assert _field(reader, "general.architecture") == arch and _field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert ("output.weight" in {t.name for t in reader.tensors}) == (arch == "qwen3")
    rounded, loaded = _f16_rounded(model.eval()), _load(tmp_path, gguf_file="m.gguf")
    gguf_tok = _tokenizer(tmp_path, gguf_file="m.gguf")
    for prompt in PROMPTS:
        ids = _ids(tok, prompt)
        assert torch.equal(_ids(gguf_tok, prompt), ids)
        assert torch.allclose(_logits(loaded, ids), _logits(rounded, ids), atol=1e-5)
        assert _greedy(loaded, ids) == _greedy(rounded, ids)


# --------------------------------------------------------------------------- ollama


def test_ollama_folder_has_gguf_modelfile_and_the_command(full_run_dir, tmp_path):
    from gguf import GGUFReader

    out = tmp_path / "My Model"
    result = export_model(str(full_run_dir), "ollama", out, quant="q8_0")
    assert set(result.files) == {"Modelfile", "README.md", "My Model.gguf"}
    assert result.command == f"ollama create my-model -f '{out / 'Modelfile'}'"
    assert (out / "Modelfile").read_text() == (
        "FROM ./My Model.gguf\n\n"
        f'TEMPLATE """{CHATML_TEMPLATE}"""\n\n'
        'SYSTEM """You are a tiny test model."""\n\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\n'
    )
    assert GGUFReader(str(out / "My Model.gguf")).fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    assert "ollama create my-model -f Modelfile" in (out / "README.md").read_text()


def test_chat_template_translation_refuses_non_chatml(bpe_model_dir):
    tok = _tokenizer(bpe_model_dir)
    assert chatml_default_system(tok) == "You are a tiny test model."
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}{% endif %}"
    with pytest.raises(ModelError, match="ChatML"):
        chatml_default_system(tok)
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                         "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                         "{% endif %}")
    assert chatml_default_system(tok) is None  # ChatML without a default system prompt


# --------------------------------------------------------------------------- where it writes


def test_export_never_writes_onto_a_project_or_the_model(full_run_dir, tmp_path):
    project = tmp_path / "my.sqlite"
    sqlite3.connect(project).execute("create table t (x)").connection.commit()
    before = project.read_bytes()
    with pytest.raises(DataError, match="SQLite"):
        export_model(str(full_run_dir), "gguf", project, overwrite=True)
    assert project.read_bytes() == before
    with pytest.raises(DataError, match="SQLite"):  # a folder with a project in it is not replaced either
        export_model(str(full_run_dir), "hf", tmp_path, overwrite=True)
    assert project.read_bytes() == before
    with pytest.raises(DataError, match="model being exported"):
        export_model(str(full_run_dir), "hf", full_run_dir, overwrite=True)
    assert (full_run_dir / "dpo_studio_run.json").is_file()


def test_an_existing_export_is_replaced_only_with_overwrite(bpe_model_dir, tmp_path):
    out = tmp_path / "clean"
    export_model(str(bpe_model_dir), "hf", out)
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="--overwrite"):
        export_model(str(bpe_model_dir), "hf", out)
    assert (out / "mine.txt").is_file()
    export_model(str(bpe_model_dir), "hf", out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]  # no temporary or old sibling left


@pytest.mark.parametrize("fmt,name", [("gguf", "m.gguf"), ("ollama", "m"), ("hf", "m")])
def test_a_failure_mid_write_leaves_nothing(bpe_model_dir, tmp_path, monkeypatch, fmt, name):
    """A full disk after the third tensor (or while saving safetensors): no file or folder under the
    chosen name, no temporary sibling, and the error says why."""
    import dpo_engine.export.formats as formats
    import dpo_engine.export.gguf_file as gguf_file

    written = []
    real = gguf_file.tensor_data

    def failing_tensor_data(*args):
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(1)
        return real(*args)

    def failing_hf(model, tokenizer, folder):
        (folder / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_file, "tensor_data", failing_tensor_data)
    monkeypatch.setattr(formats, "write_hf_folder", failing_hf)
    out = tmp_path / name
    with pytest.raises(DataError, match="No space left"):
        export_model(str(bpe_model_dir), fmt, out)
    _nothing_left(out)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_overwrite_keeps_the_old_export(bpe_model_dir, tmp_path):
    out = tmp_path / "m.gguf"
    export_model(str(bpe_model_dir), "gguf", out)
    before = out.read_bytes()
    events = export_events(str(bpe_model_dir), "gguf", out, quant="q8_0", overwrite=True)
    with pytest.raises(KeyboardInterrupt):  # the person pressed Ctrl-C mid-write
        for event in events:
            if event.stage == "write" and "tensor" in event.message:
                events.throw(KeyboardInterrupt)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_an_export_stopped_at_a_yield_leaves_nothing_and_keeps_the_old_one(bpe_model_dir, tmp_path):
    """Cancel is closing the generator at a yield (what the window's worker does): mid-write, the
    temporary file goes and the earlier export stays; every yield before the last is a stop point."""
    out = tmp_path / "m.gguf"
    export_model(str(bpe_model_dir), "gguf", out)
    before = out.read_bytes()
    stages = [event.stage for event in export_events(str(bpe_model_dir), "gguf", tmp_path / "all.gguf")]
    assert stages[0] == "prepare" and stages[-1] == "done" and stages.count("write") > 2
    (tmp_path / "all.gguf").unlink()
    for stop_at in range(len(stages) - 1):
        events = export_events(str(bpe_model_dir), "gguf", out, quant="q8_0", overwrite=True)
        for _ in range(stop_at + 1):
            next(events)
        events.close()
        assert out.read_bytes() == before, stages[stop_at]
        assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"], stages[stop_at]


@pytest.mark.parametrize("fmt", ["peft", "gguf-lora"])
def test_the_options_refuse_with_the_exports_own_message(full_run_dir, tmp_path, fmt):
    """One check per format (export.formats): the reason the dialog shows for a format is the message
    the export itself refuses with, and a refused export writes nothing."""
    from dpo_engine.export.options import export_options

    reasons = {o.format: o.reason for o in export_options(str(full_run_dir))}
    assert reasons["hf"] is None and reasons["gguf"] is None
    with pytest.raises(ConfigError) as refused:
        export_model(str(full_run_dir), fmt, tmp_path / "out")
    assert reasons[fmt] == str(refused.value) and "full fine-tune" in reasons[fmt]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the command


def test_cli_exports_and_prints_the_ollama_command(full_run_dir, tmp_path):
    result = CliRunner().invoke(main, ["export-model", str(full_run_dir), "--format", "ollama",
                                       "--output", str(tmp_path / "smol")])
    assert result.exit_code == 0, result.output
    assert f"ollama create smol -f {tmp_path / 'smol' / 'Modelfile'}" in result.stdout
    assert "[100%]" in result.stderr


def test_cli_errors_are_messages_not_tracebacks(full_run_dir, tmp_path):
    result = CliRunner().invoke(main, ["export-model", str(full_run_dir), "--format", "peft",
                                       "--output", str(tmp_path / "a")])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "full fine-tune" in result.stderr
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["export-model", str(tmp_path / "nothing"), "--format", "hf",
                                       "--output", str(tmp_path / "b")])
    assert result.exit_code == 1 and "Error: No model at" in result.stderr


# --------------------------------------------------------------------------- the default model


@pytest.mark.integration
@pytest.mark.slow
def test_default_model_gguf_read_by_transformers_computes_the_same(tmp_path):
    """SmolLM2-135M-Instruct (30 layers, 9 heads, 3 KV heads, 49152 tokens) through the f16 GGUF."""
    from dpo_engine.models import default_model_dir

    folder = default_model_dir()
    out = tmp_path / "smollm2.gguf"
    export_model("default", "gguf", out)
    source = _load(folder)
    rounded = _f16_rounded(source)
    loaded = _load(tmp_path, gguf_file=out.name)
    tok = _tokenizer(folder)
    assert _tokenizer(tmp_path, gguf_file=out.name).chat_template == tok.chat_template
    for prompt in PROMPTS[:2]:
        ids = _ids(tok, prompt)
        got = _logits(loaded, ids)
        assert torch.allclose(got, _logits(rounded, ids), atol=1e-3)
        assert (got - _logits(source, ids)).abs().max() < 0.1  # f16 rounding over 30 layers
        assert _greedy(loaded, ids, 32) == _greedy(source, ids, 32)  # the 32 greedy tokens


def test_export_loads_weights_in_fp32_whatever_the_machines_auto_precision(full_run_dir, monkeypatch):
    """On a CPU where precision auto picks bf16 (this one), loading for an export must not: the
    GGUF f16 / hf files would carry bf16-rounded weights."""
    from dpo_engine.export.source import find_source, load_merged_model

    monkeypatch.setenv("DPO_STUDIO_DTYPE", "bfloat16")
    model = load_merged_model(find_source(str(full_run_dir)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
