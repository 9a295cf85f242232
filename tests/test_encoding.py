"""Pair encoding: the prompt/response boundary token by token, truncation, and the collator.

The tiny tokenizer is byte-level with no merges, so every character is one token and the
expected tokens can be written out by hand ('Ċ' is the byte-level newline).
"""

import pytest
import torch

from dpo_engine.encoding import EncodedPair, collate, common_prefix_length, encode_pair, encode_pairs, length_batches
from dpo_engine.errors import DataError
from dpo_engine.pairs import PreferencePair, conversation
from tests.tiny_model import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(list(ids))


def test_conversational_response_is_answer_end_of_turn_and_newline(tok):
    enc = encode_pair(tok, conversation("Hi", "Yo", "No!"))
    assert tokens(tok, enc.chosen_ids) == ["Y", "o", "<|im_end|>", "Ċ"]
    assert tokens(tok, enc.rejected_ids) == ["N", "o", "!", "<|im_end|>", "Ċ"]
    prompt = tok.decode(list(enc.prompt_ids))
    assert prompt == (
        "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    full = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tokenize=True, return_dict=True
    )["input_ids"]
    assert list(enc.prompt_ids + enc.chosen_ids) == list(full)  # nothing lost or added at the seam
    assert not enc.truncated


def test_plain_pair_has_no_template_and_ends_with_eos(tok):
    enc = encode_pair(tok, PreferencePair("2+2=", " 4", " 5<|im_end|>"))
    assert tokens(tok, enc.prompt_ids) == ["2", "+", "2", "="]
    assert tokens(tok, enc.chosen_ids) == ["Ġ", "4", "<|im_end|>"]
    assert tokens(tok, enc.rejected_ids) == ["Ġ", "5", "<|im_end|>"]  # eos already there: not doubled


def test_answer_cut_off_at_the_cap_is_encoded_without_its_end(tok):
    """A cut-off answer did not end: no end-of-turn (chat) and no eos (plain) is scored, so a
    cut-off loser does not teach "ending here is bad". The other side keeps its end."""
    pair = conversation("Hi", "Yo", "No!")
    cut_loser = encode_pair(tok, PreferencePair(pair.prompt, "Yo", "No!", rejected_finished=False))
    assert tokens(tok, cut_loser.chosen_ids) == ["Y", "o", "<|im_end|>", "Ċ"]
    assert tokens(tok, cut_loser.rejected_ids) == ["N", "o", "!"]
    cut_winner = encode_pair(tok, PreferencePair(pair.prompt, "Yo", "No!", chosen_finished=False))
    assert tokens(tok, cut_winner.chosen_ids) == ["Y", "o"]
    assert cut_winner.prompt_ids == cut_loser.prompt_ids == encode_pair(tok, pair).prompt_ids
    plain = encode_pair(tok, PreferencePair("2+2=", " 4", " 5", rejected_finished=False))
    assert tokens(tok, plain.chosen_ids) == ["Ġ", "4", "<|im_end|>"]
    assert tokens(tok, plain.rejected_ids) == ["Ġ", "5"]


def test_boundary_is_the_common_prefix_when_the_template_renders_the_prompt_differently(tok):
    """A template whose generation prompt adds '<think>' that the full conversation lacks
    (as Gemma/Qwen3 templates do): the response starts where the two diverge."""
    odd = build_tokenizer()
    odd.chat_template = (
        "{% for m in messages %}{{ m['role'] + ':' + m['content'] + '|' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:<think>' }}{% endif %}"
    )
    enc = encode_pair(odd, conversation("q", "ab", "cd"))
    assert tokens(odd, enc.prompt_ids) == list("user:q|assistant:")
    assert tokens(odd, enc.chosen_ids) == ["a", "b", "|"]
    assert tokens(odd, enc.rejected_ids) == ["c", "d", "|"]


def test_shared_prompt_is_the_shorter_common_prefix(tok):
    """The prompt renders 'p>'; the chosen conversation 'p>x' shares 2 tokens with it, the
    rejected 'py' only 1: both responses start after the shorter prefix, so they share one prompt."""
    odd = build_tokenizer()
    odd.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}{{ '>' }}{% endif %}"
    )
    enc = encode_pair(odd, conversation("p", ">x", "y"))
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert tokens(odd, enc.prompt_ids) == ["p"]
    assert tokens(odd, enc.chosen_ids) == [">", "x"]
    assert tokens(odd, enc.rejected_ids) == ["y"]


def test_truncation_keeps_the_prompt_and_cuts_responses(tok):
    pair = conversation("Hi", "Yo", "No!")
    n = len(encode_pair(tok, pair).prompt_ids)
    enc = encode_pair(tok, pair, max_length=n + 2)
    assert len(enc.prompt_ids) == n
    assert tokens(tok, enc.chosen_ids) == ["Y", "o"]
    assert tokens(tok, enc.rejected_ids) == ["N", "o"]
    assert enc.truncated
    assert not encode_pair(tok, pair, max_length=n + 5).truncated  # the longest row fits exactly


def test_a_pair_left_without_response_tokens_is_rejected_with_a_reason(tok):
    pair = conversation("Hi", "Yo", "No!")
    n = len(encode_pair(tok, pair).prompt_ids)
    with pytest.raises(DataError, match=f"prompt alone is {n} tokens.*max_length {n}"):
        encode_pair(tok, pair, max_length=n)
    kept, skipped = encode_pairs(tok, [conversation("a", "b", "c"), pair], max_length=n)
    assert [i for i, _ in kept] == [0]
    assert [i for i, _ in skipped] == [1] and "max_length" in skipped[0][1]


def test_collate_exact_tensors():
    pairs = [
        EncodedPair((1, 2, 3), (4, 5), (6,)),
        EncodedPair((7, 8), (9,), (10, 11)),
    ]
    batch = collate(pairs, pad_id=0)
    assert torch.equal(batch.input_ids, torch.tensor([
        [1, 2, 3, 4, 5],
        [7, 8, 9, 0, 0],
        [1, 2, 3, 6, 0],
        [7, 8, 10, 11, 0],
    ]))
    assert torch.equal(batch.attention_mask, torch.tensor([
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ]))
    assert torch.equal(batch.response_mask.long(), torch.tensor([
        [0, 0, 0, 1, 1],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 1, 1, 0],
    ]))
    assert batch.response_mask.dtype == torch.bool and batch.num_pairs == 2


def test_collate_pads_to_multiple_and_only_as_wide_as_needed():
    short = collate([EncodedPair((5,), (6,), (7,))], pad_id=9)
    assert torch.equal(short.input_ids, torch.tensor([[5, 6], [5, 7]]))  # no padding to a fixed width
    padded = collate([EncodedPair((5,), (6,), (7,))], pad_id=9, pad_to_multiple_of=4)
    assert torch.equal(padded.input_ids, torch.tensor([[5, 6, 9, 9], [5, 7, 9, 9]]))
    assert torch.equal(padded.response_mask, torch.tensor([[False, True, False, False]] * 2))


def test_length_batches_group_similar_lengths_longest_first():
    lens = [3, 10, 4, 9, 2]
    pairs = [EncodedPair((1,), (2,) * (n - 1), (3,)) for n in lens]
    assert length_batches(pairs, 2) == [[1, 3], [2, 0], [4]]


def test_a_base_model_without_a_chat_template_trains_in_plain_text_mode(tiny_loaded):
    """The Label page stores prompts as user messages; a base model samples them as plain text
    (generate.encode_prompt), and its pairs encode the same way instead of being refused."""
    import copy

    from dpo_engine.encoding import encode_pair
    from dpo_engine.generate import encode_prompt
    from dpo_engine.pairs import PreferencePair

    tok = copy.deepcopy(tiny_loaded.tokenizer)
    tok.chat_template = None
    pair = PreferencePair((("user", "Name a colour."),), "Blue.", "Seven.")
    encoded = encode_pair(tok, pair)
    assert list(encoded.prompt_ids) == encode_prompt(tok, [{"role": "user", "content": "Name a colour."}])
    assert tok.decode(encoded.chosen_ids).startswith("Blue.")
