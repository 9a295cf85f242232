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


@dataclass(frozen=True)
class RowEnded:
    """One row of a batched call is complete (its later tokens are never shown)."""

    index: int  # which row
    text: str  # the whole answer, stripped: what GenerationResult will hold
    tokens: int  # tokens generated for it
    finished: bool  # True: the model ended it itself; False: cut off at the token cap or the context's end


def stream_generate(
    model, tokenizer, prompt: str | Sequence[dict], n: int = 1, settings: GenerationSettings | None = None
) -> Iterator[TokenEvent]:
    """Sample `n` answers to one prompt in one batch, yielding text as it is produced.

    Returns the GenerationResult as the generator's value."""
    if n < 1:
        raise ConfigError("n must be at least 1.")
    stream = stream_generate_batch(model, tokenizer, [prompt] * n, settings)
    while True:
        try:
            ev = next(stream)
        except StopIteration as stop:
            return stop.value
        if isinstance(ev, TokenEvent):
            yield ev


@torch.inference_mode()
def stream_generate_batch(
    model, tokenizer, prompts: Sequence[str | Sequence[dict]], settings: GenerationSettings | None = None
) -> Iterator[TokenEvent | RowEnded]:
    """Sample one answer per prompt, all rows in one batch (a prompt listed k times gets
    k answers), yielding TokenEvents labelled by row and a RowEnded as each row completes.

    Decoding reads every weight once per token step whatever the batch, so on a CPU a
    batch of 8 rows costs about what 2 do. Each distinct prompt runs through the model once;
    its keys/values are copied to the rows that share it. Rows are left-padded: the
    attention mask hides the padding and the position ids count each row's own tokens,
    so a row's answer is the one it gets alone (up to float rounding). A row that ends
    (end-of-turn, token cap, or its own context end) stops streaming and leaves the batch
    (its keys/values are dropped, so the later steps compute only the rows still writing);
    the others go on.
    Returns the GenerationResult of all rows as the generator's value.
    """
    settings = settings or GenerationSettings()
    if not prompts:
        raise ConfigError("Give at least one prompt.")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(settings.seed if settings.seed is not None else torch.seed())

    rows = _Rows(model, tokenizer, prompts, settings)
    logits, attention, positions, past = _prefill(model, tokenizer, rows, device)
    active = list(range(len(prompts)))  # the rows still being written, in the batch's order
    while True:  # every step a row does not end adds a token to it: max(budget) steps at most
        next_ids = _sample(logits, settings, gen)
        for i, tok in zip(active, next_ids.tolist()):
            ev, ended = rows.take(i, tok)
            if ev is not None:
                yield ev
            if ended:
                yield RowEnded(i, rows.final(i), len(rows.out[i]), rows.finished[i])
        if all(rows.done):
            break
        keep = [j for j, i in enumerate(active) if not rows.done[i]]
        if len(keep) < len(active):  # finished rows leave the batch: the next steps compute the others only
            index = torch.tensor(keep, device=device)
            past.reorder_cache(index)
            next_ids, attention, positions = (t.index_select(0, index) for t in (next_ids, attention, positions))
            active = [active[j] for j in keep]
        step_ids = next_ids.unsqueeze(-1)
        attention = torch.cat([attention, torch.ones_like(step_ids)], dim=-1)
        positions = positions + 1
        result, past = forward_with_cache(model, past, input_ids=step_ids, attention_mask=attention,
                                          position_ids=positions, logits_to_keep=1)
        logits = result.logits[:, -1, :]
    return GenerationResult([rows.final(i) for i in range(len(prompts))], [len(ids) for ids in rows.out],
                            rows.finished)


class _Rows:
    """Per-row state of a batched call: encoded prompts, the tokens and text so far, and
    why each row ended."""

    def __init__(self, model, tokenizer, prompts, settings: GenerationSettings):
        self.tokenizer = tokenizer
        self.encoded = [encode_prompt(tokenizer, p) for p in prompts]
        context = context_length(model)
        for ids in self.encoded:
            if context and len(ids) >= context:
                raise ConfigError(f"The prompt is {len(ids):,} tokens, but this model reads at most {context:,} "
                                  "(its context length), leaving no room for an answer. Shorten the prompt.")
        # an answer that reaches its context's end is cut off there, like at the cap
        self.budget = [settings.max_new_tokens if not context else min(settings.max_new_tokens, context - len(ids))
                       for ids in self.encoded]
        self.stop = _stop_ids(tokenizer, model)
        n = len(prompts)
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.texts = [""] * n
        self.done = [False] * n
        self.finished = [False] * n

    def take(self, i: int, tok: int) -> tuple[TokenEvent | None, bool]:
        """Row i's next token: (the text it adds if any, whether the row ended just now: at
        a stop token or at its budget). A row that ended takes nothing more."""
        if self.done[i]:
            return None, False
        if tok in self.stop:
            self.done[i] = self.finished[i] = True
            return None, True
        self.out[i].append(tok)
        self.done[i] = len(self.out[i]) >= self.budget[i]
        text = self.tokenizer.decode(self.out[i], skip_special_tokens=True)
        # hold back a trailing replacement char: it is half of a multi-byte character
        if text.endswith("\ufffd"):
            return None, self.done[i]
        # a decode that rewrote earlier text (rare) streams nothing; the final text is exact
        delta = text[len(self.texts[i]):] if text.startswith(self.texts[i]) else ""
        self.texts[i] = text
        return (TokenEvent(i, delta, len(self.out[i])) if delta else None), self.done[i]

    def final(self, i: int) -> str:
        return self.tokenizer.decode(self.out[i], skip_special_tokens=True).strip()


def _prefill(model, tokenizer, rows: _Rows, device):
    """Run each distinct prompt once (left-padded to the longest), then give every row its
    prompt's keys/values. Returns the rows' last-position logits, attention mask, position
    ids of their last token, and the cache."""
    distinct: dict[tuple[int, ...], int] = {}
    for ids in rows.encoded:
        distinct.setdefault(tuple(ids), len(distinct))
    width = max(len(ids) for ids in distinct)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in distinct], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in distinct], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its own first token
    result, past = forward_with_cache(model, None, input_ids=ids, attention_mask=mask, position_ids=positions,
                                      logits_to_keep=1)
    index = torch.tensor([distinct[tuple(p)] for p in rows.encoded], device=device)
    if len(distinct) != len(rows.encoded) or index.tolist() != list(range(len(distinct))):
        past.reorder_cache(index)  # rows sharing a prompt share its forward
    logits = result.logits[:, -1, :].index_select(0, index)
    return logits, mask.index_select(0, index), positions[:, -1:].index_select(0, index), past


def relabeled(stream: Iterator[TokenEvent], sides: Sequence[int]):
    """Re-index a stream's events (row i becomes sides[i], e.g. the pane it fills) and return
    the stream's GenerationResult, so `result = yield from relabeled(...)` works."""
    return (yield from mapped(stream, lambda ev: TokenEvent(sides[ev.index], ev.delta, ev.tokens)))


def generate(model, tokenizer, prompt, n: int = 1, settings: GenerationSettings | None = None) -> GenerationResult:
    """Blocking wrapper over `stream_generate`."""
    return drain(stream_generate(model, tokenizer, prompt, n, settings))
