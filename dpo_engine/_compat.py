"""Small shims over transformers versions (the KV-cache argument was renamed in 5.x)."""

from __future__ import annotations

import functools
import inspect


@functools.lru_cache(maxsize=None)
def _cache_arg_name(model_cls: type) -> str:
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_with_cache(model, cache, **kwargs):
    """Call `model(**kwargs)` passing `cache` under whichever name this transformers uses.

    Returns (output, new_cache)."""
    name = _cache_arg_name(type(model))
    out = model(**{name: cache}, use_cache=True, **kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    return out, new_cache


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and advisory warnings on the terminal.

    Through the environment, so nothing heavy is imported: a data command that never
    touches a model starts at once. Call before transformers is first imported."""
    import os
    import sys

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: tell it directly
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
