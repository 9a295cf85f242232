"""Per-sequence response log-probs: one forward over chosen + rejected concatenated.

    log π(y|x) = Σ_t log softmax(lm_head(h_{t-1}))[y_t]   over response tokens t only

The backbone runs once over the 2B rows of a `Batch`; then only the hidden states whose
*next* token is a response token are gathered, and the LM head and the log-softmax run
on those alone (on SmolLM2 the vocabulary is 49,152 wide, so skipping prompt and padding
positions is most of the head's cost on long prompts). Past HEAD_WHOLE_BYTES of logits
those run in chunks (`label_logps`): at most one chunk's [tokens x vocab] logits exist at a
time, and the backward recomputes them. The log-softmax and the sums are fp32 even under bf16 autocast
(only the head's matmul runs in bf16 there: it is most of the head's cost). The result
keeps the autograd graph, so the trainer calls the same function with gradients on; wrap
it in `torch.no_grad()` for the reference or for eval.

Public API:
    label_logps(lm, hidden, targets) -> (N,)   the LM head + fp32 log-softmax + gather, chunked
    batch_logps(model, batch) -> BatchLogps(chosen_logps, rejected_logps, chosen_tokens, rejected_tokens)
    sequence_logps(model, input_ids, attention_mask, response_mask) -> (logps, tokens)   all rows
    score_pairs(forward, pairs, batch_size, batches=None) -> generator: pairs done; returns the tensors in input order
        the one no-grad scoring loop: the trainer's reference pass and eval, held-out summaries and
        `dpo-engine eval` each give it their `forward(batch)` (which model(s), which precision)
"""

from __future__ import annotations

from typing import Callable, Generator, NamedTuple, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from dpo_engine.encoding import Batch, EncodedPair, length_batches


HEAD_WHOLE_BYTES = 256 * 2**20  # up to this many bytes of fp32 logits the head runs at once, no recompute: the
# default model's Train page batch (4 pairs, answers <= ~170 tokens) stays as fast as before; chunking costs
# a third matmul of the head (1.58x a head-bound step, bench/README.md "Log-probs without the full logits")
HEAD_CHUNK_BYTES = 64 * 2**20  # above it, fp32 logits per chunk: chunk size changes no FLOPs, only memory


class BatchLogps(NamedTuple):
    """Shapes: all (B,). Log-probs fp32 (with grad if the model had it); counts long."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def _causal_lm(model):
    """The transformers model under a PEFT wrapper (its LoRA layers stay in place and
    `disable_adapter()` still applies), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _head_logits(lm, hidden: torch.Tensor) -> torch.Tensor:
    """LM head on selected hidden states (N, H) -> fp32 logits (N, V), with the scaling
    and soft-capping some architectures (Gemma 2, Cohere) apply after the head."""
    logits = lm.get_output_embeddings()(hidden).float()
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    scale = getattr(config, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, in fp32 whatever autocast is active.

    Args:
        logits: (N, V), any float dtype.
        targets: (N,) long.

    Returns:
        (N,) fp32.
    """
    with torch.autocast(logits.device.type, enabled=False):  # a bf16 logsumexp over 49k logits loses digits
        logits = logits.float()
        return logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(dim=-1)


def _chunk_logps(lm, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return token_logps(_head_logits(lm, hidden), targets)


def head_chunk_tokens(vocab: int, budget: int | None = None) -> int:
    """Tokens per chunk of the head so that one chunk's fp32 logits take about `budget` bytes
    (HEAD_CHUNK_BYTES when None)."""
    return max(1, (budget or HEAD_CHUNK_BYTES) // (4 * max(1, vocab)))


def label_logps(lm, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """log softmax(head(h))[label] per token, never holding more than one chunk's logits.

        out[i] = log softmax(cap·tanh(scale·h_i Wᵀ / cap))[targets[i]]   (scale, cap where the config has them)

    The tokens run through the LM head `chunk_tokens` at a time when given; otherwise all at
    once while their fp32 logits fit in HEAD_WHOLE_BYTES, else ~HEAD_CHUNK_BYTES of logits a
    chunk. With gradients on, each chunk of several is a non-reentrant
    `torch.utils.checkpoint`: only its hidden states are kept, and the backward recomputes the
    chunk's logits instead of storing [tokens x vocab] fp32 logits and their softmax (the
    idea of Cut Cross-Entropy, torchtune's chunked output loss and Liger's fused linear
    losses; at a 128k vocabulary 1,200 answer tokens would otherwise hold ~1.9 GB). Whatever
    the head is (tied to the embedding or not, with a LoRA layer or a bias) the gradients
    reach it through autograd, and the recomputation runs under the autocast state of the
    forward. The log-softmax is fp32 (`token_logps`).

    Args:
        lm: the causal LM (`_causal_lm(model)`), for its output embeddings and config.
        hidden: (N, H) hidden states whose next tokens are scored.
        targets: (N,) long, those next tokens.

    Returns:
        (N,) fp32.
    """
    assert hidden.dim() == 2 and targets.shape == hidden.shape[:1], (hidden.shape, targets.shape)
    vocab = lm.get_output_embeddings().weight.shape[0]
    whole = hidden.shape[0] * vocab * 4 <= HEAD_WHOLE_BYTES
    step = chunk_tokens or (hidden.shape[0] if whole else head_chunk_tokens(vocab))
    if hidden.shape[0] <= step:
        return _chunk_logps(lm, hidden, targets)  # one chunk: storing it costs no more than recomputing
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(
        p.requires_grad for p in lm.get_output_embeddings().parameters()))
    parts = []
    for start in range(0, hidden.shape[0], step):
        h, t = hidden[start:start + step], targets[start:start + step]
        parts.append(checkpoint(_chunk_logps, lm, h, t, use_reentrant=False) if grad else _chunk_logps(lm, h, t))
    return torch.cat(parts)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response-token log-probs and response token counts, per row.

    Args:
        input_ids: (R, T) long.
        attention_mask: (R, T), 1 on real tokens.
        response_mask: (R, T) bool, True on the tokens to score (never on position 0,
            which has no context).

    Returns:
        logps: (R,) fp32, Σ log p(token | tokens before it) over the response tokens.
        tokens: (R,) long, how many tokens each sum covers.
    """
    assert input_ids.shape == attention_mask.shape == response_mask.shape, (
        input_ids.shape, attention_mask.shape, response_mask.shape)
    assert input_ids.dim() == 2
    response_mask = response_mask.bool()
    assert not response_mask[:, 0].any(), "the first token has no context and cannot be scored"
    lm = _causal_lm(model)
    hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    # Position t predicts token t+1: score position t where token t+1 is a response token.
    scored = response_mask[:, 1:]  # (R, T-1)
    rows = scored.nonzero(as_tuple=True)[0]  # (N,) which row each scored token belongs to
    targets = input_ids[:, 1:][scored]  # (N,)
    scores = label_logps(lm, hidden[:, :-1][scored], targets)  # (N,) fp32
    logps = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=scores.device)
    logps = logps.index_add(0, rows, scores)
    return logps, response_mask.sum(dim=1)


def batch_logps(model, batch: Batch) -> BatchLogps:
    """One forward over a Batch's 2B rows -> chosen and rejected log-probs and counts, each (B,)."""
    logps, tokens = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    b = batch.num_pairs
    assert logps.shape == (2 * b,)
    return BatchLogps(logps[:b], logps[b:], tokens[:b], tokens[b:])


@torch.no_grad()  # on a generator function torch re-enters no-grad at each resume, never leaking it
def score_pairs(forward: Callable[[Sequence[EncodedPair]], Sequence[torch.Tensor]], pairs: Sequence[EncodedPair],
                batch_size: int, batches: Sequence[Sequence[int]] | None = None
                ) -> Generator[int, None, tuple[torch.Tensor, ...]]:
    """Run `forward` over `pairs` without gradients, pairs of similar length batched together
    (`encoding.length_batches`: little padding); yields the number of pairs done after each
    batch (a safe point to report progress or cancel) and returns each tensor `forward`
    gives, (N,) per field, in input order on the CPU (floating ones as fp32). `batches` (pair
    indices covering every pair once) replaces the length batches: the trainer's grouped
    scoring packs whole rankings (`train.groups.scoring_batches`)."""
    out: list[torch.Tensor] = []
    done = 0
    for idx in (length_batches(pairs, batch_size) if batches is None else batches):
        result = forward([pairs[i] for i in idx])
        if not out:
            out = [torch.empty(len(pairs), dtype=torch.float32 if t.is_floating_point() else t.dtype)
                   for t in result]
        for dest, src in zip(out, result):
            dest[idx] = src.detach().cpu().to(dest.dtype)
        done += len(idx)
        yield done
    return tuple(out)
