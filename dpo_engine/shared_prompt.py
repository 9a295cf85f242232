"""Response log-probs with each prompt run once, its keys/values reused by all its answers.

Chosen and rejected share their prompt, so the concatenated forward of `logps.batch_logps`
computes the prompt twice. `answer_logps` is the general pass: P prompts and A answers,
answer a continuing prompt owners[a] (a ranking's k answers run over one prompt pass);
`shared_prompt_logps`, the pairwise pass, is its case of two answers per prompt (A = 2P,
chosen and rejected interleaved). The P prompt rows run once with a KV cache; its rows are
gathered per answer (`batch_select_indices` by owner, a differentiable index, so every
answer's gradient flows back into its one prompt pass); then the A answers run on top of it:

    prompt pass      (P, T)   ->  hidden h_p, cache K/V          once per prompt
    answer pass      (A, L)   over cache rows owners  ->  h_a    pairwise: rows 2i = chosen_i, 2i+1 = rejected_i
    log π(y|x) = log softmax(head(h_p[t-1]))[y_0] + Σ_{j≥1} log softmax(head(h_a[j-1]))[y_j]   (t: real prompt length)

Prompts are right-padded, so the padding sits between a prompt and its answer: the
attention mask hides it and the answers' position ids continue from the real prompt
length, so every real token sees exactly the context and positions it has unpadded.
As in `logps`, the LM head and log-softmax run only where the next token is scored
(`logps.label_logps`, chunked past HEAD_WHOLE_BYTES).

Not usable with gradient checkpointing (transformers turns the KV cache off under it);
the trainer then falls back to `logps.batch_logps`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dpo_engine._compat import forward_with_cache
from dpo_engine.encoding import EncodedPair
from dpo_engine.logps import BatchLogps, _causal_lm, label_logps


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (len(rows), longest row), padded on the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def shared_prompt_logps(model, pairs: Sequence[EncodedPair], pad_id: int, device=None) -> BatchLogps:
    """Chosen and rejected log-probs and token counts, each (B,), prompt computed once.

    Matches `logps.batch_logps` on the same pairs up to float rounding.
    """
    assert pairs and all(p.prompt_ids and p.chosen_ids and p.rejected_ids for p in pairs)
    answers = [a for p in pairs for a in (p.chosen_ids, p.rejected_ids)]  # interleaved: c0, r0, c1, r1, ...
    owners = [i for i in range(len(pairs)) for _ in range(2)]
    logps, tokens = answer_logps(model, [p.prompt_ids for p in pairs], owners, answers, pad_id, device)
    return BatchLogps(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])


def answer_logps(model, prompts: Sequence[Sequence[int]], owners: Sequence[int], answers: Sequence[Sequence[int]],
                 pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of A answers, each (A,), every prompt run once.

    Args:
        prompts: P prompts' token ids.
        owners: A indices into `prompts`: answer a continues prompts[owners[a]].
        answers: A answers' token ids (the scored tokens).

    The pairwise pass is the case of two answers per prompt; a ranking of k answers runs its
    prompt once and each of its answers once (the cache rows are gathered per answer, a
    differentiable index, so every answer's gradient flows back into its one prompt pass).
    """
    assert prompts and answers and len(owners) == len(answers)
    assert all(prompts) and all(answers)
    device = device or next(model.parameters()).device
    lm = _causal_lm(model)
    prompt_ids, prompt_mask = (t.to(device) for t in _right_pad(prompts, pad_id))
    answer_ids, answer_mask = (t.to(device) for t in _right_pad(answers, pad_id))
    owner = torch.tensor(owners, dtype=torch.long, device=device)  # (A,)
    prompt_len = prompt_mask.sum(dim=1)  # (P,)

    out, cache = forward_with_cache(lm.base_model, None, input_ids=prompt_ids, attention_mask=prompt_mask)
    prompt_hidden = out.last_hidden_state  # (P, T, H)
    if owners != list(range(len(prompts))):
        cache.batch_select_indices(owner)  # (P, ...) -> (A, ...): row a serves answer a
    rows_len = prompt_len[owner]  # (A,)
    positions = rows_len[:, None] + torch.arange(answer_ids.shape[1], device=device)[None, :]
    full_mask = torch.cat([prompt_mask[owner], answer_mask], dim=1)
    out, _ = forward_with_cache(lm.base_model, cache, input_ids=answer_ids, attention_mask=full_mask,
                                position_ids=positions)
    answer_hidden = out.last_hidden_state  # (A, L, H)

    # The first answer token is predicted by the last real prompt position; the others by
    # the answer position before them.
    first = prompt_hidden[owner, prompt_len[owner] - 1]  # (A, H)
    scored = answer_mask[:, 1:].bool()  # (A, L-1)
    hidden = torch.cat([first, answer_hidden[:, :-1][scored]])  # (A + N, H)
    targets = torch.cat([answer_ids[:, 0], answer_ids[:, 1:][scored]])
    rows = torch.cat([torch.arange(len(answers), device=device), scored.nonzero(as_tuple=True)[0]])
    scores = label_logps(lm, hidden, targets)  # (A + N,) fp32, the head in chunks
    logps = torch.zeros(len(answers), dtype=torch.float32, device=device).index_add(0, rows, scores)
    return logps, answer_mask.sum(dim=1)
