"""A transformers model + tokenizer as one GGUF file (llama.cpp, LM Studio, Ollama).

The file is written with the `gguf` package's GGUFWriter, its tensor-name maps
(`gguf.get_tensor_name_map`) and its Q8_0 quantiser, following what llama.cpp's own
`convert_hf_to_gguf.py` does for the Llama family (and for Qwen2 / Qwen3, which differ only in
what `ARCHITECTURES` records):

- hyperparameters under `<arch>.*` (context, widths, heads, rope, RMS-norm epsilon, vocab size);
- for Llama, Q and K projections permuted from transformers' rotate-half layout to the
  interleaved pairs llama.cpp's rope reads (`_permute_qk`; every reader un-permutes them the
  same way); Qwen's rope reads the halves as transformers stores them;
- 1-D tensors (norms) in f32, matrices in f16 or Q8_0 (a row that is not a multiple of 32 stays f16);
- a tied `lm_head` is not written: a file without `output.weight` ties the output to the embedding;
- the tokenizer as a byte-level BPE ("gpt2"): every token, its type, the merges, the special ids,
  whether BOS/EOS are added, the pre-tokenizer's name, and the chat template.

Anything else is refused with a message before a byte is written.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dpo_engine.errors import ConfigError, ModelError

QUANTS = ("f16", "q8_0")


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # the gguf.MODEL_ARCH member
    permute_qk: bool  # llama.cpp's rope for it pairs dimensions (i, i+1), not (i, i + d/2) as transformers


ARCHITECTURES = {
    "LlamaForCausalLM": ArchSpec("LLAMA", True),  # Llama 2/3, SmolLM, SmolLM2, TinyLlama
    "Qwen2ForCausalLM": ArchSpec("QWEN2", False),  # Qwen2, Qwen2.5 (q/k/v biases)
    "Qwen3ForCausalLM": ArchSpec("QWEN3", False),  # Qwen3 dense (q/k norms)
}
# the split regexes llama.cpp knows by name (tokenizer.ggml.pre), as tokenizer.json spells them
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLIT_REGEXES = {
    _WORDS + r"|\p{N}" + _REST: "qwen2",  # digits one by one
    _WORDS + r"|\p{N}{1,3}" + _REST: "llama-bpe",  # digits in threes (Llama 3)
}


@dataclass(frozen=True)
class TensorPlan:
    name: str  # the GGUF name, e.g. blk.0.attn_q.weight
    source: str  # the transformers name
    qtype: object  # gguf.GGMLQuantizationType


# --------------------------------------------------------------------------- checks


def arch_spec(config) -> ArchSpec:
    """The architecture's entry, or a refusal naming what is supported."""
    archs = list(getattr(config, "architectures", None) or [])
    spec = ARCHITECTURES.get(archs[0]) if len(archs) == 1 else None
    if spec is None:
        raise ModelError(
            f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is "
            f"{', '.join(archs) or config.model_type}. Export it with --format hf and convert that folder with "
            "llama.cpp's convert_hf_to_gguf.py."
        )
    return spec


def check_supported(config) -> ArchSpec:
    """Refuse, with the reason, a model this writer cannot convert faithfully."""
    spec = arch_spec(config)
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", None):
        raise ModelError(f"GGUF export does not support rope scaling {rope.get('rope_type')!r} yet; export with "
                         "--format hf and convert with llama.cpp's convert_hf_to_gguf.py.")
    if getattr(config, "use_sliding_window", False):
        raise ModelError("GGUF export does not support sliding-window attention yet; export with --format hf.")
    return spec


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    params = dict(params)
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# --------------------------------------------------------------------------- tensors


def _permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' Q/K rows (per head: all real halves, then all imaginary halves) to llama.cpp's
    interleaved (real, imaginary) pairs; `n_head` is the number of heads these rows hold."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def plan_tensors(state_dict: dict, config, quant: str) -> list[TensorPlan]:
    """Which transformers tensor becomes which GGUF tensor, in which type."""
    import gguf

    if quant not in QUANTS:
        raise ConfigError(f"Unknown GGUF quantisation {quant!r}: use one of {', '.join(QUANTS)}.")
    arch = gguf.MODEL_ARCH[arch_spec(config).gguf_arch]
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    matrix_type = gguf.GGMLQuantizationType.Q8_0 if quant == "q8_0" else gguf.GGMLQuantizationType.F16
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    plans = []
    for source, tensor in state_dict.items():
        if source.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope.freq_base
        if source == "lm_head.weight" and config.tie_word_embeddings:
            continue  # no output.weight: the reader ties the output to token_embd
        name = name_map.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"GGUF export does not know where the tensor {source!r} goes; this model has "
                             f"parts the {arch.name.lower()} layout lacks. Export it with --format hf instead.")
        if tensor.ndim < 2:
            qtype = gguf.GGMLQuantizationType.F32
        elif matrix_type == gguf.GGMLQuantizationType.Q8_0 and tensor.shape[-1] % block:
            qtype = gguf.GGMLQuantizationType.F16  # Q8_0 blocks are rows of 32
        else:
            qtype = matrix_type
        plans.append(TensorPlan(name, source, qtype))
    return plans


def _tensor_data(plan: TensorPlan, tensor, config) -> np.ndarray:
    import gguf

    data = tensor.detach().to("cpu").float().numpy()
    if arch_spec(config).permute_qk and plan.source.endswith(("q_proj.weight", "q_proj.bias")):
        data = _permute_qk(data, config.num_attention_heads)
    elif arch_spec(config).permute_qk and plan.source.endswith(("k_proj.weight", "k_proj.bias")):
        data = _permute_qk(data, config.num_key_value_heads)
    return gguf.quants.quantize(np.ascontiguousarray(data), plan.qtype)


# --------------------------------------------------------------------------- metadata


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for how text is split before BPE (`tokenizer.ggml.pre`), read from the
    pre-tokenizer the tokenizer declares; one llama.cpp does not reproduce is refused."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("use_regex"), s.get("individual_digits")) for s in steps]
    if kinds == [("ByteLevel", True, None)]:
        return "gpt-2"  # GPT-2's split regex
    if kinds == [("Digits", None, True), ("ByteLevel", True, None)]:
        return "smollm"  # each digit alone, then GPT-2's regex (SmolLM, StarCoder)
    if [k[:2] for k in kinds] == [("Split", None), ("ByteLevel", False)]:
        split = steps[0]
        name = SPLIT_REGEXES.get((split.get("pattern") or {}).get("Regex"))
        if name is not None and split.get("behavior") == "Isolated" and not split.get("invert"):
            return name  # a named split regex, then bytes (Qwen2, Llama 3)
    raise ModelError(f"GGUF export does not know this tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}); "
                     "llama.cpp would split text differently from the model. Export with --format hf.")


def _token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token as the vocabulary spells it, and its llama.cpp type (what
    `convert_hf_to_gguf.py`'s get_vocab_base writes)."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ModelError(f"The tokenizer has ids up to {max(vocab.values())} but the model only "
                         f"{vocab_size} embeddings: they do not belong together.")
    by_id = {i: tok for tok, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # embeddings past the vocabulary (padding to a round size)
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            text = by_id[i]
            looks_special = text.startswith("<|") and text.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _adds(tokenizer) -> tuple[bool, bool]:
    """Whether encoding plain text adds BOS / EOS (what the tokenizer does, not what a flag says)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    add_bos = tokenizer.bos_token_id is not None and len(full) > len(plain) and full[0] == tokenizer.bos_token_id
    add_eos = tokenizer.eos_token_id is not None and len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
    return add_bos, add_eos


def check_tokenizer(tokenizer) -> str:
    """Refuse a tokenizer llama.cpp would not reproduce; return its pre-tokenizer name."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers) tokenizer; this model has a slow one.")
    tokenizer_json = json.loads(backend.to_str())
    model = tokenizer_json.get("model", {})
    decoder = tokenizer_json.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ModelError(f"GGUF export supports byte-level BPE tokenizers (GPT-2 style); this one is "
                         f"{model.get('type')} with a {decoder.get('type')} decoder. Export with --format hf.")
    return _pre_tokenizer_name(tokenizer_json)


def _write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    import gguf

    pre = check_tokenizer(tokenizer)
    tokens, types = _token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="dpo-studio-tok-") as work:
        tokenizer.save_pretrained(work)  # SpecialVocab reads merges, special ids and the template from files
        special = gguf.SpecialVocab(work, load_merges=True, n_vocab=vocab_size)
    if not special.merges and len(tokens) > 256 + len(tokenizer.added_tokens_decoder):
        raise ModelError("The tokenizer lists no BPE merges; llama.cpp could not rebuild its tokens.")
    add_bos, add_eos = _adds(tokenizer)
    special.add_special_token = {"bos": add_bos, "eos": add_eos}
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


def _write_hparams(writer, config, quant: str, name: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_rope_freq_base(float(_rope_parameters(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))


# --------------------------------------------------------------------------- the file


def write_gguf(model, tokenizer, path: Path, quant: str = "f16", name: str = "model",
               on_tensor: Callable[[int, int], None] | None = None) -> int:
    """Write `model` + `tokenizer` as a GGUF file at `path`; return its size in bytes.

    `on_tensor(done, total)` is called after each tensor is written (progress, and a place to cancel).
    """
    import gguf

    config = model.config
    spec = check_supported(config)
    state_dict = model.state_dict()
    plans = plan_tensors(state_dict, config, quant)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]])
    try:
        _write_hparams(writer, config, quant, name)
        _write_tokenizer(writer, tokenizer, config.vocab_size)
        for plan in plans:  # announce every tensor first: the header lists them all
            shape = tuple(state_dict[plan.source].shape)
            if plan.qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor_info(plan.name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
            elif plan.qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor_info(plan.name, shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, plan.qtype)
                writer.add_tensor_info(plan.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                       raw_dtype=plan.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, plan in enumerate(plans, 1):  # then the data, one tensor at a time
            writer.write_tensor_data(_tensor_data(plan, state_dict[plan.source], config))
            if on_tensor is not None:
                on_tensor(done, len(plans))
        writer.flush()
    finally:
        writer.close()
    return Path(path).stat().st_size
