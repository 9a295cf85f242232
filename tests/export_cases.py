"""The tiny random model of each family the GGUF export is tested on (tests/test_export_families.py)
and checked against llama.cpp with (bench/export_llama_cpp.py): its transformers class, the kind of
tokenizer its released models ship, its chat family (tests/tiny_families.py), its GGUF architecture
and the config that sets it apart (rope scaling, sliding window, soft-capping ...).
"""

from __future__ import annotations

from tests.tiny_families import FAMILIES
from tests.tiny_model import build_bpe_tokenizer, build_spm_tokenizer

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# name: (transformers class, tokenizer kind, chat family of tests/tiny_families.py, GGUF arch, extra config)
CASES = {
    "llama2": ("LlamaForCausalLM", "llama", "mistral", "llama", {}),
    "llama3.2": ("LlamaForCausalLM", "bpe", "llama3", "llama",
                 dict(rope_theta=500000.0, max_position_embeddings=1024,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 512})),
    "mistral": ("MistralForCausalLM", "llama", "mistral", "llama", dict(sliding_window=None)),
    "qwen2.5-yarn": ("Qwen2ForCausalLM", "bpe-qwen", "qwen2", "qwen2",  # Qwen2.5's long-context setting
                     dict(max_position_embeddings=1024, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                      "original_max_position_embeddings": 256})),
    "gemma2": ("Gemma2ForCausalLM", "gemma", "gemma2", "gemma2",
               dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=64, final_logit_softcapping=30.0,
                    attn_logit_softcapping=50.0)),
    "gemma3": ("Gemma3ForCausalLM", "gemma", "gemma2", "gemma3",
               dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=64, num_hidden_layers=6)),
    "phi3": ("Phi3ForCausalLM", "phi3", "phi3", "phi3", dict(pad_token_id=0, sliding_window=128)),
    "phi3.5": ("Phi3ForCausalLM", "phi3", "phi3", "phi3",  # the 128k / Phi-3.5 long-context rope, in small
               dict(pad_token_id=0, sliding_window=None, max_position_embeddings=256,
                    original_max_position_embeddings=64,
                    rope_scaling={"rope_type": "longrope", "long_factor": [1.0 + i / 2 for i in range(8)],
                                  "short_factor": [1.0 + i / 10 for i in range(8)]})),
}


def case_tokenizer(kind: str, family):
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    if kind.startswith("bpe"):
        tok = build_bpe_tokenizer(split=PRETOKENIZE_REGEX if kind == "bpe-qwen" else LLAMA3_SPLIT)
    else:
        tok = build_spm_tokenizer(kind, tuple(s for s in family.specials if s not in ("<unk>", "<s>", "</s>",
                                                                                     "<pad>", "<eos>", "<bos>")))
    tok.chat_template = family.template
    return tok


def case_config(arch: str, tok, extra: dict):
    from transformers import AutoConfig

    model_type = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                  "Gemma2ForCausalLM": "gemma2",
                  "Gemma3ForCausalLM": "gemma3_text", "Phi3ForCausalLM": "phi3"}[arch]
    shape = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = AutoConfig.for_model(model_type, **{**shape, **extra})
    config.architectures = [arch]
    return config


def case_model(name: str):
    """(model, tokenizer) of case `name`: random weights drawn from seed 3, the model in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    arch, kind, chat, _, extra = CASES[name]
    tok = case_tokenizer(kind, FAMILIES[chat])
    torch.manual_seed(3)
    return AutoModelForCausalLM.from_config(case_config(arch, tok, extra)).eval(), tok
