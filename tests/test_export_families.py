"""GGUF export of every family we train, each a tiny random model with the kind of tokenizer its
released models ship (SentencePiece-style for Llama 2, Mistral, Gemma and Phi-3; byte-level BPE with
Llama 3's split for Llama 3.x; Qwen2/3: tests/test_export.py), read back by code we did not write:

- `gguf.GGUFReader`: the architecture, the metadata llama.cpp reads for it, every tensor's name and
  shape, and what the writer changes on the way (Gemma's norms as 1 + w, Llama 3's rope factors,
  checked against the formula worked by hand below);
- transformers' GGUF loader: the tokenizer it rebuilds gives the same ids, the model it rebuilds (its
  tensors dequantised, un-permuted and un-shifted by transformers) gives the logits of the source
  rounded to f16 and the same greedy tokens. Its config reader lacks what these families add (rope
  scaling for Llama, Qwen and Phi-3.5, Gemma's attention scalar, soft-capping and local rope base, Phi-3's
  pad id), so
  the model is rebuilt with the source's config and the GGUF's tensors; the metadata that carries
  those settings to llama.cpp is checked with GGUFReader instead.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo_engine.export import export_model
from tests.export_cases import CASES, case_model

PROMPTS = ["Give me a tip for staying focused while studying.", "What is 12 + 30? The quick brown fox!",
           "Two  spaces,   three, and    four."]


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(case name, source model, its tokenizer, the folder holding m.gguf), exported as f16."""
    name = request.param
    model, tok = case_model(name)
    with torch.no_grad():  # norms away from their neutral value: a norm written wrong shows in the logits
        for pname, param in model.named_parameters():
            if param.ndim == 1:
                param.normal_(0.0 if "gemma" in name else 1.0, 0.3)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    export_model(str(folder / "model"), "gguf", folder / "m.gguf")
    return name, model, tok, folder


def _field(reader, key):
    return reader.fields[key].contents()


def test_gguf_reader_sees_the_architecture_its_metadata_and_every_tensor(exported):
    from gguf import GGUFReader

    name, model, tok, folder = exported
    reader = GGUFReader(str(folder / "m.gguf"))
    arch = CASES[name][3]
    config = model.config
    assert _field(reader, "general.architecture") == arch
    assert _field(reader, f"{arch}.block_count") == config.num_hidden_layers
    assert _field(reader, f"{arch}.attention.head_count_kv") == config.num_key_value_heads
    assert _field(reader, "tokenizer.ggml.model") == ("gpt2" if CASES[name][1].startswith("bpe") else "llama")
    assert _field(reader, "tokenizer.chat_template") == tok.chat_template
    tensors = {t.name: t for t in reader.tensors}
    n_matrices = sum(1 for k, v in model.state_dict().items() if v.ndim == 2 and not
                     (k == "lm_head.weight" and config.tie_word_embeddings))
    assert sum(1 for t in tensors.values() if len(t.shape) == 2) == n_matrices
    embd = tensors["token_embd.weight"]
    assert list(embd.shape) == [config.hidden_size, config.vocab_size]  # GGUF lists dimensions innermost first
    if arch.startswith("gemma"):
        assert _field(reader, f"{arch}.attention.sliding_window") == config.sliding_window
        runs = {t: kind for t, kind in zip(_field(reader, "tokenizer.ggml.tokens"),
                                             _field(reader, "tokenizer.ggml.token_type")) if t in ("  ", "   ")}
        assert runs == {"  ": 4, "   ": 4}  # user-defined, spelled with spaces, as Gemma's own GGUF files have them
        norm = torch.from_numpy(tensors["blk.0.attn_norm.weight"].data.copy())
        assert torch.allclose(norm, model.model.layers[0].input_layernorm.weight + 1)  # llama.cpp reads x * w
    if arch == "gemma2":
        assert _field(reader, "gemma2.final_logit_softcapping") == 30.0
    if name == "phi3":
        assert "blk.0.attn_qkv.weight" in tensors and _field(reader, "phi3.attention.sliding_window") == 128
        assert "rope_factors_long.weight" not in tensors
    if name == "phi3.5":  # context 256 over the original 64: attention factor sqrt(1 + ln 4 / ln 64) = sqrt(4/3)
        assert _field(reader, "phi3.attention.sliding_window") == 0  # none
        assert _field(reader, "phi3.rope.scaling.original_context_length") == 64
        assert _field(reader, "phi3.rope.scaling.attn_factor") == pytest.approx(math.sqrt(4 / 3), rel=1e-6)
        assert tensors["rope_factors_long.weight"].data.tolist() == [1.0 + i / 2 for i in range(8)]
        assert tensors["rope_factors_short.weight"].data.tolist() == pytest.approx([1.0 + i / 10 for i in range(8)])
    if name == "qwen2.5-yarn":
        assert _field(reader, "qwen2.rope.scaling.type") == "yarn"
        assert _field(reader, "qwen2.rope.scaling.factor") == 4.0
        assert _field(reader, "qwen2.rope.scaling.original_context_length") == 256
    if name == "phi3.5":
        assert _field(reader, "phi3.rope.scaling.type") == "longrope"
    if name == "llama2":
        assert _field(reader, "tokenizer.ggml.add_space_prefix") is True
        byte_a = tok.convert_tokens_to_ids("<0x41>")
        assert _field(reader, "tokenizer.ggml.token_type")[byte_a] == 6  # BYTE


@pytest.mark.parametrize("exported", ["llama3.2"], indirect=True)
def test_llama3_rope_factors_as_llama_cpp_reads_them(exported):
    """Llama 3.1/3.2 rope scaling, worked by hand: head_dim 16, theta 500000, so 8 frequencies
    f_i = 500000^(-2i/16), wavelengths 2*pi/f_i. With original context 512, low_freq_factor 1 and
    high_freq_factor 4: wavelength < 512/4 = 128 keeps f (factor 1), > 512/1 = 512 divides by 32, and
    between the factor is 1 / ((1 - s) / 32 + s) with s = (512 / wavelength - 1) / (4 - 1)."""
    from gguf import GGUFReader

    _, _, _, folder = exported
    got = GGUFReader(str(folder / "m.gguf")).get_tensor(0)
    assert got.name == "rope_freqs.weight"
    expected = []
    for i in range(8):
        wavelength = 2 * math.pi / 500000 ** (-2 * i / 16)
        if wavelength < 128:
            expected.append(1.0)
        elif wavelength > 512:
            expected.append(32.0)
        else:
            s = (512 / wavelength - 1) / 3
            expected.append(1 / ((1 - s) / 32 + s))
    assert expected[:2] == [1.0, 1.0] and expected[-1] == 32.0  # the table spans all three cases
    assert torch.allclose(torch.from_numpy(got.data.copy()), torch.tensor(expected), rtol=1e-5)


def _f16_rounded(model):
    from transformers import AutoModelForCausalLM

    rounded = AutoModelForCausalLM.from_config(model.config)
    rounded.load_state_dict({k: v.half().float() if v.ndim > 1 else v for k, v in model.state_dict().items()})
    return rounded.eval()


@torch.no_grad()
def _greedy(model, ids, n: int = 12) -> list[int]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_transformers_reads_back_the_tokenizer_and_the_logits(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, model, tok, folder = exported
    gguf_tok = AutoTokenizer.from_pretrained(str(folder), gguf_file="m.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="m.gguf",
                                                  **({} if name == "mistral" else {"config": model.config})).eval()
    rounded = _f16_rounded(model)
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        assert gguf_tok.encode(text, add_special_tokens=False) == ids
        ids = torch.tensor([ids])
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logits, rounded(ids).logits, atol=1e-4)
        assert _greedy(loaded, ids) == _greedy(rounded, ids)


_SHAPE = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=64)
# name: (model type, class, a config llama.cpp runs as written, the setting its architecture lacks, the refusal)
REFUSALS = {
    "qwen2 with Llama 3's rope": ("qwen2", "Qwen2ForCausalLM", {}, dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), "'llama3'; llama.cpp's qwen2 reads default, linear, yarn only"),
    "llama with Phi-3's longrope": ("llama", "LlamaForCausalLM", {}, dict(rope_scaling={
        "rope_type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8,
        "original_max_position_embeddings": 64}), "llama reads default, linear, llama3, yarn only"),
    "gemma2 scaled by another scalar": ("gemma2", "Gemma2ForCausalLM", _GEMMA, dict(query_pre_attn_scalar=32),
                                        r"1/sqrt\(32\); llama.cpp's gemma2 uses the head size"),
    "gemma2 with its global layers elsewhere": ("gemma2", "Gemma2ForCausalLM", _GEMMA,
                                                dict(layer_types=["full_attention"] * 6), "every 2th layer global"),
    "gemma3 with a scaled local rope": ("gemma3_text", "Gemma3ForCausalLM", _GEMMA, dict(rope_parameters={
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}), "gemma3 does not"),
    "qwen2 with a sliding window": ("qwen2", "Qwen2ForCausalLM", {}, dict(sliding_window=64, use_sliding_window=True,
                                                                         max_window_layers=0), "qwen2 architecture"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_setting_the_family_lacks_in_llama_cpp_is_refused_by_name(name):
    """Each refusal comes from the family's row (`ArchSpec`): the same config without the setting passes."""
    from transformers import AutoConfig

    from dpo_engine.errors import ModelError
    from dpo_engine.export.gguf_file import check_supported

    model_type, arch, runs, lacks, says = REFUSALS[name]

    def config(**extra):
        made = AutoConfig.for_model(model_type, **{**_SHAPE, **runs, **extra})
        made.architectures = [arch]
        return made

    check_supported(config())
    with pytest.raises(ModelError, match=says):
        check_supported(config(**lacks))

