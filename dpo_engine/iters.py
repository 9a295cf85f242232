"""Generators that yield progress and *return* a result: the engine's long jobs (sampling,
the reference pass, scoring) are written this way so a caller can show progress or cancel
between items. These two helpers replace the hand-written `StopIteration` loops."""

from __future__ import annotations

from typing import Callable, Generator, TypeVar

Y = TypeVar("Y")
Z = TypeVar("Z")
R = TypeVar("R")


def drain(gen: Generator[Y, None, R], each: Callable[[Y], None] | None = None) -> R:
    """Run `gen` to its end (calling `each` on every yielded item) and return its return value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if each is not None:
            each(item)


def mapped(gen: Generator[Y, None, R], fn: Callable[[Y], Z | None]) -> Generator[Z, None, R]:
    """`gen` with every yielded item passed through `fn` (an item it maps to None is not yielded),
    returning what `gen` returns, so `result = yield from mapped(gen, fn)` works. Closing it (or an
    exception thrown in) closes `gen`: a stop reaches the generator doing the work, and its files close."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        out = fn(item)
        if out is None:
            continue
        try:
            yield out
        except BaseException:
            gen.close()
            raise
