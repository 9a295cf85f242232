"""Where the engine keeps what it can recompute: converted models, reference log-probs,
this machine's precision measurement."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """The user's cache folder for DPO Studio. DPO_STUDIO_CACHE overrides the platform default."""
    override = os.environ.get("DPO_STUDIO_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("dpo-studio"))
