"""Sampling from a model with its chat template: a streaming generator, and blocking
helpers built on top (nanoGPT style). The generator yields after every token, so a caller
(a GUI worker) can show text as it arrives and stop at any yield."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from dpo_engine._compat import forward_with_cache
from dpo_engine.encoding import plain_prompt
from dpo_engine.errors import ConfigError
from dpo_engine.iters import drain, mapped


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 200  # long enough for a useful answer, short enough to read at labeling speed
    temperature: float = 0.8  # some diversity, so two samples of one prompt differ
    top_p: float = 0.95  # nucleus sampling trims the unlikely tail that produces garbage
    seed: int | None = None  # None: a fresh random seed per call

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1.")
        if self.temperature < 0:
            raise ConfigError("temperature must be >= 0 (0 means greedy decoding).")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p must be in (0, 1].")


@dataclass(frozen=True)
class TokenEvent:
    """New text for one of the samples being generated."""

    index: int  # which sample (0..n-1)
    delta: str  # text appended since the last event for this sample
    tokens: int  # tokens generated so far for this sample


@dataclass(frozen=True)
class GenerationResult:
    texts: list[str]
    token_counts: list[int]
    finished: list[bool] = field(default_factory=list)  # True where the model ended the answer itself


def as_messages(prompt: str | Sequence[dict]) -> list[dict]:
    """A plain prompt becomes one user message; a message list is used as is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def encode_prompt(tokenizer, prompt: str | Sequence[dict]) -> list[int]:
    """Token ids of the prompt rendered with the chat template and the generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = prompt if isinstance(prompt, str) else plain_prompt(prompt)  # a base model: plain-text mode
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def context_length(model) -> int | None:
    """The most positions the model reads (prompt + answer), from its config; None if unknown."""
    value = getattr(model.config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def _stop_ids(tokenizer, model) -> set[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


def _sample(logits: torch.Tensor, settings: GenerationSettings, gen: torch.Generator) -> torch.Tensor:
    """Next token per row from the last-position logits. Shape: (n, vocab) -> (n,)."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p > settings.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.inference_mode()
def stream_generate(
    model, tokenizer, prompt: str | Sequence[dict], n: int = 1, settings: GenerationSettings | None = None
) -> Iterator[TokenEvent]:
    """Sample `n` answers to one prompt in one batch, yielding text as it is produced.

    The n rows share the prompt, so no padding is needed; a KV cache makes each new token
    one forward of n positions. Returns the GenerationResult as the generator's value.
    """
    settings = settings or GenerationSettings()
    if n < 1:
        raise ConfigError("n must be at least 1.")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(settings.seed if settings.seed is not None else torch.seed())

    encoded = encode_prompt(tokenizer, prompt)
    context = context_length(model)
    if context and len(encoded) >= context:
        raise ConfigError(f"The prompt is {len(encoded):,} tokens, but this model reads at most {context:,} "
                          "(its context length), leaving no room for an answer. Shorten the prompt.")
    prompt_ids = torch.tensor([encoded] * n, device=device)
    stop = _stop_ids(tokenizer, model)
    out: list[list[int]] = [[] for _ in range(n)]
    texts = [""] * n
    done = [False] * n
    past, inputs = None, prompt_ids
    attention = torch.ones_like(prompt_ids)
    budget = settings.max_new_tokens if not context else min(settings.max_new_tokens, context - len(encoded))
    for _ in range(budget):  # an answer that reaches the context's end is cut off there, like at the cap
        result, past = forward_with_cache(model, past, input_ids=inputs, attention_mask=attention, logits_to_keep=1)
        next_ids = _sample(result.logits[:, -1, :], settings, gen)
        for i, tok in enumerate(next_ids.tolist()):
            if done[i]:
                continue
            if tok in stop:
                done[i] = True
                continue
            out[i].append(tok)
            text = tokenizer.decode(out[i], skip_special_tokens=True)
            # hold back a trailing replacement char: it is half of a multi-byte character
            if text.endswith("\ufffd"):
                continue
            # a decode that rewrote earlier text (rare) streams nothing; the final text is exact
            delta = text[len(texts[i]):] if text.startswith(texts[i]) else ""
            texts[i] = text
            if delta:
                yield TokenEvent(i, delta, len(out[i]))
        if all(done):
            break
        inputs = next_ids.unsqueeze(-1)
        attention = torch.cat([attention, torch.ones_like(inputs)], dim=-1)
    final = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]
    return GenerationResult(final, [len(ids) for ids in out], done)


def relabeled(stream: Iterator[TokenEvent], sides: Sequence[int]):
    """Re-index a stream's events (row i becomes sides[i], e.g. the pane it fills) and return
    the stream's GenerationResult, so `result = yield from relabeled(...)` works."""
    return (yield from mapped(stream, lambda ev: TokenEvent(sides[ev.index], ev.delta, ev.tokens)))


def generate(model, tokenizer, prompt, n: int = 1, settings: GenerationSettings | None = None) -> GenerationResult:
    """Blocking wrapper over `stream_generate`."""
    return drain(stream_generate(model, tokenizer, prompt, n, settings))
