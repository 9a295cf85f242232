"""A tiny random Llama and a byte-level tokenizer with a ChatML template, built offline.

Nothing is downloaded: the tokenizer has one token per byte plus the chat special tokens
(like nanoGPT's byte tokenizer), and the model has a few thousand parameters.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# a few sentences to learn BPE merges from (the real tokenizers below are trained on them offline)
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Give me a tip for staying focused while studying.",
          "Write a short poem about the sea.", "What is the capital of France? Paris is the capital.",
          "Numbers like 12, 30 and 2024 appear in text too."] * 4


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=SPECIALS,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a random tiny Llama + tokenizer as safetensors into `folder`; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def build_bpe_tokenizer(split: str | None = None):
    """A real byte-level BPE (learned merges) with the ChatML specials, trained offline on a few
    sentences: unlike the byte tokenizer of tests/tiny_model.py, one a GGUF can carry. Text is split
    by GPT-2's regex, or by `split` (a regex, as Qwen2 and Llama 3 do) before the bytes."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split is not None:
        core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                               use_regex=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                  additional_special_tokens=SPECIALS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


PADDED = 3  # embeddings past the tokenizer's vocabulary: the GGUF must carry them as unused tokens


def build_bpe_model(folder: Path) -> Path:
    """A tiny random Llama with grouped-query attention (4 heads, 2 KV heads: the Q and K
    permutations differ) and rows of 64 (Q8_0 blocks are 32), saved with the BPE tokenizer
    and PADDED embedding rows past its vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok) + PADDED, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    folder = Path(folder)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def build_spm_tokenizer(kind: str = "llama", specials: tuple[str, ...] = ()):
    """A SentencePiece-style tokenizer as Llama 2, Mistral, Phi-3 (kind "llama" or "phi3") and Gemma
    ("gemma") ship it in tokenizer.json: BPE with byte fallback (<0x00>..<0xFF> pieces), U+2581 for a
    space, merges learned offline on CORPUS; `specials` become special added tokens."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer, LlamaTokenizer

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learned = json.loads(core.to_str())["model"]
    base = ["<pad>", "<eos>", "<bos>", "<unk>"] if kind == "gemma" else ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(base)}
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    for tok in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    if kind == "gemma":  # Gemma has pieces for runs of spaces (its GGUF files spell them with real spaces)
        for run in ("\u2581\u2581", "\u2581\u2581\u2581"):
            vocab.setdefault(run, len(vocab))
        merges = [("\u2581", "\u2581"), ("\u2581\u2581", "\u2581")] + merges
        tok = GemmaTokenizer(vocab=vocab, merges=merges)
    else:
        tok = LlamaTokenizer(vocab=vocab, merges=merges)
    if kind == "phi3":  # Phi-3's tokenizer.json prefixes the space with a normalizer, not Metaspace
        tok.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                                                 normalizers.Replace(" ", "\u2581")])
        tok.backend_tokenizer.pre_tokenizer = None
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok
