"""Where the engine keeps what it can recompute: converted models, reference log-probs,
this machine's precision measurement, the Label page's remembered pace."""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """The user's cache folder for DPO Studio. DPO_STUDIO_CACHE overrides the platform default."""
    override = os.environ.get("DPO_STUDIO_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("dpo-studio"))


def write_cache_json(path: Path, record: dict) -> None:
    """Write a small cache record atomically (readers never see half a file); a cache that
    cannot be written is skipped, never an error: what it held is measured again next time."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, path)  # two processes writing at once: one of them wins, whole
    except OSError:
        pass
