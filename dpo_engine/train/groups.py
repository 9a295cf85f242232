"""Rankings cost their answers, not their pairs.

A ranking of k answers becomes up to k(k-1)/2 pairs (fewer with ties), all on one prompt.
Scored pair by pair, each answer runs k-1 times and its prompt once per pair. Here the
pairs of a micro-batch (or of a scoring batch) are grouped by prompt token ids; each
prompt runs once and each *distinct* answer once, and every pair's chosen/rejected
log-probs are gathered from those per-answer log-probs:

    pairs (B)  ->  prompts (P <= B), distinct answers (A <= 2B), chosen/rejected index per pair
    log π(answer | prompt)  once per distinct answer   ->   gathered to (B,) chosen, (B,) rejected

The loss is then exactly the pairwise one on the same numbers (the gradient of an answer
shared by several pairs is the sum over those pairs, as pair by pair).

An answer is keyed by its token ids under its prompt's ids, never by its text: a cut-off
answer (no end-of-turn) encodes to other ids than the same text finished, and a response
cut by max_length to fewer; equal ids are the same computation whatever produced them.

Public API:
    answer_groups(pairs) -> AnswerGroups                   the distinct prompts and answers
    grouped_logps(model, pairs, pad_id, device, share_prompt) -> BatchLogps   (B,) each
    prompt_groups(pairs) -> list[list[int]]               pair indices by prompt, in a sharing order
    scoring_batches(pairs, batch_size) -> list[list[int]]  no-grad batches of whole groups
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from dpo_engine.encoding import EncodedPair, pad_rows
from dpo_engine.logps import BatchLogps, sequence_logps
from dpo_engine.shared_prompt import answer_logps


@dataclass(frozen=True)
class AnswerGroups:
    """The distinct prompts and answers of B pairs, and where each pair's two answers are."""

    prompts: list[tuple[int, ...]]  # P distinct prompts, first-appearance order
    owners: list[int]  # A: the prompt each distinct answer continues
    answers: list[tuple[int, ...]]  # A distinct answers (per prompt), first-appearance order
    chosen: list[int]  # B: index of each pair's chosen answer in `answers`
    rejected: list[int]  # B: index of each pair's rejected answer


def answer_groups(pairs: Sequence[EncodedPair]) -> AnswerGroups:
    prompt_index: dict[tuple[int, ...], int] = {}
    answer_index: dict[tuple[int, tuple[int, ...]], int] = {}
    owners: list[int] = []
    answers: list[tuple[int, ...]] = []

    def index(prompt: int, answer: tuple[int, ...]) -> int:
        key = (prompt, answer)
        if key not in answer_index:
            answer_index[key] = len(answers)
            owners.append(prompt)
            answers.append(answer)
        return answer_index[key]

    chosen, rejected = [], []
    for p in pairs:
        prompt = prompt_index.setdefault(p.prompt_ids, len(prompt_index))
        chosen.append(index(prompt, p.chosen_ids))
        rejected.append(index(prompt, p.rejected_ids))
    return AnswerGroups(list(prompt_index), owners, answers, chosen, rejected)


def _rows_logps(model, groups: AnswerGroups, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each distinct answer as one prompt + answer row (`logps.sequence_logps`): the path
    without the KV cache (gradient checkpointing turns it off)."""
    batch = pad_rows([(groups.prompts[o], a) for o, a in zip(groups.owners, groups.answers)], pad_id).to(device)
    return sequence_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask)


def grouped_logps(model, pairs: Sequence[EncodedPair], pad_id: int, device=None,
                  share_prompt: bool = True) -> BatchLogps:
    """Chosen/rejected log-probs and token counts of B pairs, each (B,), every distinct
    prompt and answer computed once. Matches `logps.batch_logps` up to float rounding."""
    assert pairs
    device = device or next(model.parameters()).device
    groups = answer_groups(pairs)
    if share_prompt:
        logps, tokens = answer_logps(model, groups.prompts, groups.owners, groups.answers, pad_id, device)
    else:
        logps, tokens = _rows_logps(model, groups, pad_id, device)
    c = torch.tensor(groups.chosen, dtype=torch.long, device=logps.device)
    r = torch.tensor(groups.rejected, dtype=torch.long, device=logps.device)
    return BatchLogps(logps[c], logps[r], tokens[c], tokens[r])


def _sharing_order(indices: list[int], pairs: Sequence[EncodedPair]) -> list[int]:
    """One prompt's pairs ordered so that consecutive pairs share answers: answers numbered
    by first appearance, pairs by (the later answer, the earlier one) — (0,1), (0,2), (1,2),
    (0,3), ... — so any run of consecutive pairs touches few distinct answers."""
    number: dict[tuple[int, ...], int] = {}
    keys = {}
    for i in indices:
        a = number.setdefault(pairs[i].chosen_ids, len(number))
        b = number.setdefault(pairs[i].rejected_ids, len(number))
        keys[i] = (max(a, b), min(a, b))
    return sorted(indices, key=lambda i: keys[i])  # stable: repeated pairs keep their order


def prompt_groups(pairs: Sequence[EncodedPair]) -> list[list[int]]:
    """Pair indices grouped by identical prompt token ids (groups in first-appearance order),
    each group in a sharing order. Pairs with distinct prompts are singletons, in order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.prompt_ids, []).append(i)
    return [_sharing_order(g, pairs) if len(g) > 2 else g for g in groups.values()]


def scoring_batches(pairs: Sequence[EncodedPair], batch_size: int) -> list[list[int]]:
    """No-grad scoring batches (the reference pass, eval): groups longest first, packed in
    their sharing order so that a batch holds at most 2 x batch_size distinct answers (the
    rows a pairwise batch of batch_size pairs runs), whole groups wherever they fit."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    budget = 2 * batch_size
    groups = sorted(prompt_groups(pairs), key=lambda g: (-max(pairs[i].length for i in g), g[0]))
    batches: list[list[int]] = []
    batch: list[int] = []
    seen: set = set()
    for group in groups:
        for i in group:
            p = pairs[i]
            new = {(p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids)} - seen
            if batch and len(seen) + len(new) > budget:
                batches.append(batch)
                batch, seen = [], set()
                new = {(p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids)}
            batch.append(i)
            seen |= new
    if batch:
        batches.append(batch)
    return batches
