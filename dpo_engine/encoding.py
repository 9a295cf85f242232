"""Preference pair -> token ids and a label mask; padded batches of chosen + rejected.

The boundary between prompt and response is where most DPO bugs live, so it is drawn
the way TRL's DPOTrainer draws it (trl 1.16, `DPOTrainer._prepare_dataset`):

- conversational pair: prompt = chat template of the prompt messages with the generation
  prompt; full = chat template of the prompt messages + the assistant answer. The
  response is everything of `full` after the longest common prefix of the two, so it
  holds the answer, the end-of-turn token and whatever the template puts after it
  (ChatML's trailing newline: TRL keeps it, and so do we).
- plain-text pair: no template; prompt = tokenizer(prompt), full = tokenizer(prompt +
  answer + eos) (eos added unless the answer already ends with it, as TRL does).

Chosen and rejected share one prompt: the shorter of the two common prefixes.

An answer the model did not finish (cut off at the token cap: `PreferencePair.chosen_finished`
or `rejected_finished` False) is encoded without its end: no eos for a plain pair, and no
end-of-turn suffix of the chat template (the tokens the template puts after an empty
assistant message). Appending it would train a cut-off loser as "ending here is bad" and
push against shorter answers.

Truncation keeps the whole prompt and cuts each response so that prompt + response fits
`max_length` (TRL's "keep_start"). A pair whose prompt leaves no room for a single
response token is rejected with a DataError that says why; it is never trained on.

Public API:
    encode_pair(tokenizer, pair, max_length=None) -> EncodedPair     (DataError if rejected)
    encode_pairs(tokenizer, pairs, max_length=None) -> (kept, skipped)
    collate(encoded_pairs, pad_id, pad_to_multiple_of=None) -> Batch
    length_batches(encoded_pairs, batch_size) -> list[list[int]]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from dpo_engine.errors import DataError
from dpo_engine.pairs import PreferencePair


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair: a shared prompt and two responses (labels = response tokens)."""

    prompt_ids: tuple[int, ...]  # context only: never scored
    chosen_ids: tuple[int, ...]  # scored tokens of the preferred response (after truncation)
    rejected_ids: tuple[int, ...]  # scored tokens of the dispreferred response (after truncation)
    truncated: bool = False  # True when a response was cut to fit max_length

    @property
    def length(self) -> int:
        """Longest of the two sequences: what this pair costs in a padded batch."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass(frozen=True)
class Batch:
    """B pairs as 2B right-padded rows: rows [0, B) chosen, rows [B, 2B) rejected.

    Shapes: all (2B, T), T = the longest row (times pad_to_multiple_of).
    """

    input_ids: torch.Tensor  # long; padding = pad_id
    attention_mask: torch.Tensor  # long; 1 on real tokens
    response_mask: torch.Tensor  # bool; True exactly on response tokens (the labels)

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(result) -> list[int]:
    """input_ids from whatever a tokenizer call returned (dict, BatchEncoding or list)."""
    if isinstance(result, dict) or hasattr(result, "keys"):
        result = result["input_ids"]
    return list(result)


PROBES = ("\x01", "\x02")  # two one-character answers that differ at both ends and merge with nothing


def _template_error(exc: Exception) -> DataError:
    return DataError(f"the model's chat template refused the conversation: {exc}")


def _tokenize_pair(tokenizer, pair: PreferencePair) -> tuple[list[list[int]], list[int], list[int]]:
    """(candidate prompts, full chosen ids, full rejected ids), untruncated.

    Conversational pairs have two candidate prompts: the prompt with the generation prompt
    (TRL's), and the template's own prompt for a finished conversation, the common prefix of
    the conversation rendered with two probe answers. They differ where a template renders
    earlier turns differently once an answer follows (Mistral v0.3 renders the system prompt
    only inside the last user turn, which an answer makes not last; Qwen3 drops thinking).
    """
    if pair.conversational and not getattr(tokenizer, "chat_template", None):
        # A base model (no chat template) runs in plain-text mode: the turns' texts joined by
        # newlines and the answer continuing them, exactly as generate.encode_prompt sampled it.
        pair = replace(pair, prompt=plain_prompt(pair.messages))
    if pair.conversational:
        messages = pair.messages

        def render(extra: list[dict], gen: bool) -> list[int]:
            try:
                return _ids(tokenizer.apply_chat_template(
                    messages + extra, add_generation_prompt=gen, tokenize=True, return_dict=True))
            except Exception as exc:  # jinja's TemplateError: e.g. "System role not supported" (Gemma)
                if type(exc).__module__.startswith("jinja2"):
                    raise _template_error(exc) from None
                raise

        def answer(text: str) -> list[dict]:
            return [{"role": "assistant", "content": text}]

        prompt = render([], True)
        chosen, rejected = render(answer(pair.chosen), False), render(answer(pair.rejected), False)
        probes = [render(answer(p), False) for p in PROBES]
        own_prompt = probes[0][:common_prefix_length(*probes)]
        if not (pair.chosen_finished and pair.rejected_finished):
            # what a finished answer ends with: the probes' common suffix (end of turn, newline, eos)
            suffix = probes[0][len(probes[0]) - common_suffix_length(*probes):]
            chosen = chosen if pair.chosen_finished else _without_suffix(chosen, suffix)
            rejected = rejected if pair.rejected_finished else _without_suffix(rejected, suffix)
        return [prompt, own_prompt], chosen, rejected
    eos = tokenizer.eos_token or ""

    def with_eos(text: str, finished: bool) -> str:  # so the model learns where an answer ends (TRL's add_eos)
        return text if text.endswith(eos) or not finished else text + eos

    prompt = _ids(tokenizer(text=pair.prompt))
    chosen = _ids(tokenizer(text=pair.prompt + with_eos(pair.chosen, pair.chosen_finished)))
    rejected = _ids(tokenizer(text=pair.prompt + with_eos(pair.rejected, pair.rejected_finished)))
    return [prompt], chosen, rejected


def plain_prompt(messages: Sequence[dict]) -> str:
    """A conversation as plain text for a model without a chat template (generate's rendering)."""
    return "\n".join(m["content"] for m in messages)


def common_suffix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of trailing tokens `a` and `b` share."""
    return common_prefix_length(a[::-1], b[::-1])


def _without_suffix(ids: list[int], suffix: list[int]) -> list[int]:
    """`ids` less a trailing `suffix` (a template whose end differs is left as it is)."""
    if suffix and len(ids) > len(suffix) and ids[-len(suffix):] == suffix:
        return ids[:-len(suffix)]
    return ids


def encode_pair(tokenizer, pair: PreferencePair, max_length: int | None = None) -> EncodedPair:
    """Encode one pair; raise DataError (with the reason) if it must not be trained on."""
    prompts, chosen, rejected = _tokenize_pair(tokenizer, pair)
    # TRL's boundary (after the generation prompt) when both conversations start with it; else
    # the finished conversation's own prompt. A candidate is shared by chosen and rejected only
    # up to where the answers begin, so no answer token ever lands in the prompt.
    shares = [min(common_prefix_length(p, chosen), common_prefix_length(p, rejected)) for p in prompts]
    cut = shares[0] if shares[0] == len(prompts[0]) else max(shares)
    prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
    if not prompt:
        raise DataError("the prompt encodes to no token, so the first response token has no context")
    if not chosen or not rejected:
        raise DataError(f"the {'chosen' if not chosen else 'rejected'} response encodes to no token")
    truncated = False
    if max_length is not None:
        room = max_length - len(prompt)
        if room < 1:
            raise DataError(
                f"the prompt alone is {len(prompt)} tokens, so max_length {max_length} leaves no response "
                "token to learn from: raise max_length or shorten the prompt"
            )
        truncated = len(chosen) > room or len(rejected) > room
        chosen, rejected = chosen[:room], rejected[:room]
    return EncodedPair(tuple(prompt), tuple(chosen), tuple(rejected), truncated)


def encode_pairs(
    tokenizer, pairs: Sequence[PreferencePair], max_length: int | None = None
) -> tuple[list[tuple[int, EncodedPair]], list[tuple[int, str]]]:
    """Encode many pairs: ([(index, encoded)...], [(index, reason)...]) in input order."""
    kept, skipped = [], []
    for i, pair in enumerate(pairs):
        try:
            kept.append((i, encode_pair(tokenizer, pair, max_length)))
        except DataError as exc:
            skipped.append((i, str(exc)))
    return kept, skipped


def collate(encoded: Sequence[EncodedPair], pad_id: int, pad_to_multiple_of: int | None = None) -> Batch:
    """Right-pad B pairs into 2B rows (chosen rows first), as wide as the longest row only.

    Right padding keeps every real token's position id and causal context the same as
    unpadded, which is why a pair scores the same alone or in any batch.
    """
    if not encoded:
        raise ValueError("collate needs at least one pair")
    rows = [(e.prompt_ids, e.chosen_ids) for e in encoded] + [(e.prompt_ids, e.rejected_ids) for e in encoded]
    return pad_rows(rows, pad_id, pad_to_multiple_of)


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
             pad_to_multiple_of: int | None = None) -> Batch:
    """(prompt ids, response ids) rows right-padded into one Batch; the response mask marks the
    response tokens. Used for pairs (`collate`) and for a group's distinct answers."""
    width = max(len(p) + len(r) for p, r in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, response) in enumerate(rows):
        n, m = len(prompt), len(response)
        input_ids[i, : n + m] = torch.tensor(list(prompt) + list(response), dtype=torch.long)
        attention_mask[i, : n + m] = 1
        response_mask[i, n : n + m] = True
    return Batch(input_ids, attention_mask, response_mask)


def length_batches(encoded: Sequence[EncodedPair], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little is padding.

    The caller restores input order from the indices.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = sorted(range(len(encoded)), key=lambda i: (-encoded[i].length, i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
