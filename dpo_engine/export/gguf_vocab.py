"""A transformers (tokenizers) tokenizer as GGUF tokenizer metadata, in the two kinds llama.cpp runs
for the families we train:

    gpt2    byte-level BPE (Llama 3, Qwen2/2.5/3, SmolLM): every token, its type, the merges and the
            name of the split regex (`tokenizer.ggml.pre`), read from the pre-tokenizer itself
    llama   SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma 2/3, Phi-3): every
            piece as spelled (with U+2581 for a space), byte pieces <0xNN> typed BYTE, scores that
            rank each merged piece by its merge (llama.cpp's SPM merges the highest score first), the
            merges themselves (transformers' reader prefers them), and whether a space is prefixed

Both add the special ids, whether BOS/EOS are added and the chat template (`gguf.SpecialVocab`).
llama.cpp's own converter names the pre-tokenizer by hashing the tokens of a test text and looking
the hash up in a list of released models; that refuses every tokenizer not in its list, including a
released one rebuilt by transformers from a GGUF. Reading the pre-tokenizer's definition instead works
for any tokenizer whose split llama.cpp implements, and refuses the rest by name.
"""

from __future__ import annotations

import json
import tempfile

from dpo_engine.errors import ModelError

SPACE = "\u2581"  # SentencePiece's visible space
# the split regexes llama.cpp knows by name (tokenizer.ggml.pre), as tokenizer.json spells them
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLIT_REGEXES = {
    _WORDS + r"|\p{N}" + _REST: "qwen2",  # digits one by one
    _WORDS + r"|\p{N}{1,3}" + _REST: "llama-bpe",  # digits in threes (Llama 3)
}


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers) tokenizer; this model has a slow one.")
    return json.loads(backend.to_str())


def check_tokenizer(tokenizer) -> str:
    """'gpt2' or 'llama' (llama.cpp's tokenizer.ggml.model), or a refusal naming what is missing."""
    tj = _tokenizer_json(tokenizer)
    model, decoder = tj.get("model", {}), tj.get("decoder") or {}
    if model.get("type") == "BPE" and decoder.get("type") == "ByteLevel":
        _pre_tokenizer_name(tj)  # refuses a split llama.cpp does not implement
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    raise ModelError(f"GGUF export writes byte-level BPE and SentencePiece-style (byte-fallback BPE) tokenizers, "
                     f"the kinds llama.cpp runs for Llama, Qwen, Mistral, Gemma and Phi-3; this one is "
                     f"{model.get('type')} with a {decoder.get('type')} decoder. Export with --format hf.")



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


def _token_types(tokenizer, vocab_size: int, spm: bool,
                 literal_space_runs: bool = False) -> tuple[list[str], list[int]]:
    """Every id's token as the vocabulary spells it, and its llama.cpp type (what
    `convert_hf_to_gguf.py`'s get_vocab_base writes; byte pieces are BYTE in a SentencePiece vocabulary).

    `literal_space_runs` (Gemma): runs of 2-31 spaces are user-defined pieces spelled with real spaces in
    its GGUF files (transformers spells them with U+2581 when it rebuilds the tokenizer): written back as
    the file had them, the 262,144 tokens and types of Gemma 3 270M's GGUF come out identical
    (bench/README.md)."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ModelError(f"The tokenizer has ids up to {max(vocab.values())} but the model only "
                         f"{vocab_size} embeddings: they do not belong together.")
    by_id = {i: tok for tok, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")  # embeddings past the vocabulary (padding to a round size)
            types.append(gguf.TokenType.UNUSED)
            continue
        if literal_space_runs and len(text) > 1 and text == SPACE * len(text):
            tokens.append(" " * len(text))
            types.append(gguf.TokenType.USER_DEFINED)
            continue
        tokens.append(text)
        if i in added:
            looks_special = text.startswith("<|") and text.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        elif spm and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _spm_scores(tokens: list[str], merges: list) -> list[float]:
    """Each merged piece scores minus the rank of the merge that makes it, so llama.cpp's SentencePiece
    tokenizer (highest score first) merges in the order the BPE merges are listed; other pieces 0."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    return [-float(rank[t] + 1) if t in rank else 0.0 for t in tokens]


def _adds(tokenizer) -> tuple[bool, bool]:
    """Whether encoding plain text adds BOS / EOS (what the tokenizer does, not what a flag says)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    add_bos = tokenizer.bos_token_id is not None and len(full) > len(plain) and full[0] == tokenizer.bos_token_id
    add_eos = tokenizer.eos_token_id is not None and len(full) > len(plain) and full[-1] == tokenizer.eos_token_id
    return add_bos, add_eos


def write_tokenizer(writer, tokenizer, vocab_size: int, literal_space_runs: bool = False) -> None:
    """The tokenizer's GGUF keys (tokenizer.ggml.*, tokenizer.chat_template) into `writer`;
    `literal_space_runs`: the family's GGUF files spell its pieces of 2-31 spaces with real spaces
    (`ArchSpec.literal_space_runs`: Gemma)."""
    import gguf

    kind = check_tokenizer(tokenizer)
    tokens, types = _token_types(tokenizer, vocab_size, spm=kind == "llama",
                                 literal_space_runs=literal_space_runs and kind == "llama")
    with tempfile.TemporaryDirectory(prefix="dpo-studio-tok-") as work:
        tokenizer.save_pretrained(work)  # SpecialVocab reads merges, special ids and the template from files
        special = gguf.SpecialVocab(work, load_merges=True, n_vocab=vocab_size)
    writer.add_tokenizer_model(kind)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer_name(_tokenizer_json(tokenizer)))
        if not special.merges and len(tokens) > 256 + len(tokenizer.added_tokens_decoder):
            raise ModelError("The tokenizer lists no BPE merges; llama.cpp could not rebuild its tokens.")
    else:
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(_spm_scores(tokens, special.merges))
        first = tokenizer.convert_ids_to_tokens(tokenizer.encode("a", add_special_tokens=False))[0]
        writer.add_add_space_prefix(first.startswith(SPACE))  # Llama 2, Mistral, Phi-3 yes; Gemma no
    add_bos, add_eos = _adds(tokenizer)
    special.add_special_token = {"bos": add_bos, "eos": add_eos}
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
