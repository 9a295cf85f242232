"""A scripted sampler and a wait for the next pair, shared by the Label page and ranking tests."""

from __future__ import annotations

import time

from dpo_engine.generate import GenerationResult, TokenEvent


def scripted_stream(texts_by_call, delay=0.0, ended=None):
    """A stand-in for stream_generate that writes given answers word by word; `ended[i]`
    False reports answer i as cut off at the token cap."""
    calls = iter(texts_by_call)

    def fake(model, tokenizer, prompt, n=1, settings=None):
        texts = next(calls, None) or [f"answer {time.monotonic_ns()} {i}" for i in range(n)]
        words = [t.split(" ") for t in texts[:n]]
        for step in range(max(len(w) for w in words)):
            for i, w in enumerate(words):
                if step < len(w):
                    time.sleep(delay)
                    yield TokenEvent(i, (" " if step else "") + w[step], step + 1)
        return GenerationResult([t for t in texts[:n]], [len(w) for w in words], list(ended or [True] * n)[:n])

    return fake


def wait_ready(qtbot, page, timeout=30_000):
    """Wait until the Label page shows a pair whose answers have both finished."""
    qtbot.waitUntil(lambda: page.controller.current is not None and page.controller.current.done, timeout=timeout)
