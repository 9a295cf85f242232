"""Tiny random models of the common chat families, each with a byte tokenizer and a chat
template written here to produce that family's documented turn format (nothing downloaded).

    family   turn format (model card / tokenizer_config of the released chat models)
    llama3   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{s}<|eot_id|>
             <|start_header_id|>user<|end_header_id|>\n\n{u}<|eot_id|>
             <|start_header_id|>assistant<|end_header_id|>\n\n{a}<|eot_id|>
    qwen2    <|im_start|>system\\n{s}<|im_end|>\\n<|im_start|>user\\n{u}<|im_end|>\\n
             <|im_start|>assistant\\n{a}<|im_end|>\\n    (ChatML; Qwen2.5 adds a default system turn)
    gemma2   <bos><start_of_turn>user\\n{u}<end_of_turn>\\n<start_of_turn>model\\n{a}<end_of_turn>\\n
             (no system role: the template raises, as Google's does)
    mistral  <s>[INST] {u}[/INST] {a}</s>    (Mistral-7B-Instruct-v0.3: the system prompt goes
             before the user message only while that message is the last one, so a finished
             conversation renders without it)
    phi3     <|system|>\\n{s}<|end|>\\n<|user|>\\n{u}<|end|>\\n<|assistant|>\\n{a}<|end|>\\n

Each FAMILIES entry also says which tokens follow a finished answer (`end`) and what goes
before it (`lead`), so the label-mask tests can spell out the expected response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    specials: tuple[str, ...]  # special tokens, ids 0..n-1
    bos: str | None
    eos: str  # the tokenizer's eos (plain-text pairs end with it)
    pad: str
    end_of_turn: str  # what ends an assistant turn (generation stops on it too)
    template: str
    lead: str  # text the template puts between the prompt and the answer ("" or " ")
    end: tuple[str, ...]  # tokens after a finished answer: end of turn and what follows it
    system: bool  # whether the template accepts a system message


LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA2_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for m in turns %}"
    "{% if m['role'] == 'user' %}"
    "{% if system and loop.last %}{{ '[INST] ' + system + '\n\n' + m['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + m['content'] + '[/INST]' }}{% endif %}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported after the system message') }}"
    "{% endif %}{% endfor %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

FAMILIES = {
    "llama3": Family("llama3", ("<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                "<|eot_id|>"), "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", "<|eot_id|>",
                     LLAMA3_TEMPLATE, "", ("<|eot_id|>",), True),
    "qwen2": Family("qwen2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>",
                    "<|endoftext|>", "<|im_end|>", QWEN2_TEMPLATE, "", ("<|im_end|>", "Ċ"), True),
    "gemma2": Family("gemma2", ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
                     "<pad>", "<end_of_turn>", GEMMA2_TEMPLATE, "", ("<end_of_turn>", "Ċ"), False),
    "mistral": Family("mistral", ("<unk>", "<s>", "</s>"), "<s>", "</s>", "</s>", "</s>", MISTRAL_TEMPLATE,
                      " ", ("</s>",), True),
    "phi3": Family("phi3", ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), None,
                   "<|endoftext|>", "<|endoftext|>", "<|end|>", PHI3_TEMPLATE, "",
                   ("<|end|>", "Ċ", "<|endoftext|>"), True),  # the template ends a conversation with eos
}


def build_family_tokenizer(family: Family):
    """One token per byte plus the family's special tokens; its chat template set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(family.specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=family.bos, eos_token=family.eos,
                                  pad_token=family.pad, unk_token=family.specials[0],
                                  additional_special_tokens=list(family.specials))
    tok.chat_template = family.template
    return tok


def _config(family: Family, tok, hidden: int, layers: int):
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=4, max_position_embeddings=1024, **ids)
    if family.name == "llama3":
        return LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **common)
    if family.name == "qwen2":
        return Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **common)
    if family.name == "gemma2":  # soft-capped logits and alternating sliding-window layers, as the real ones
        return Gemma2Config(num_key_value_heads=2, head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4,
                            sliding_window=64, final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **common)
    if family.name == "mistral":
        return MistralConfig(num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False, **common)
    return Phi3Config(num_key_value_heads=4, tie_word_embeddings=False, **common)  # fused qkv_proj, gate_up_proj


def build_family_model(name: str, folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a random tiny model of family `name` + its tokenizer as safetensors into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    family = FAMILIES[name]
    tok = build_family_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, tok, hidden, layers))
    stop = sorted({tok.eos_token_id, tok.convert_tokens_to_ids(family.end_of_turn)})
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=stop,
                                               pad_token_id=tok.pad_token_id)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
