"""The models already on this machine, and whether each fits for training here.

Listing reads configs, safetensors headers and GGUF headers only: no weights are loaded,
so it takes well under a second for dozens of models, and a broken model is an entry
with `error` set (shown greyed with the reason), never an exception.

    list_models(project=None, folders=(), device="auto") -> Catalog
    inspect_with_fit(path) -> CatalogEntry       a file or folder chosen by hand, with its verdict
    sources.inspect_path(path) -> CatalogEntry   the same without the verdict
    fit.fit_verdict(shape, free_bytes, device)   the pure memory estimate; with a plan
                                                 (`run_plan.plan_run`), its .plan is the mode that fits

Sources, in listing order: the default model, the project's checkpoints, the Hugging Face
cache, Ollama's store, LM Studio's folders, then the folders given (catalog.sources).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dpo_engine.catalog.entry import CatalogEntry, broken
from dpo_engine.catalog.fit import fit_verdict, memory_budget
from dpo_engine.catalog.sources import (Locations, checkpoint_entries, default_entries, folder_entries,
                                        hf_cache_entries, inspect_path, ollama_entries)


@dataclass(frozen=True)
class Catalog:
    entries: list[CatalogEntry]
    device: str  # the device the verdicts are for
    free_bytes: int  # free memory there when listed
    seconds: float  # how long listing took (headers only)

    def to_dict(self) -> dict:
        return {"device": self.device, "free_bytes": self.free_bytes, "seconds": round(self.seconds, 3),
                "models": [e.to_dict() for e in self.entries]}


def _guarded(source: str, where: object, read: Callable[[], list[CatalogEntry]]) -> list[CatalogEntry]:
    """A whole source that fails (permissions, a damaged project file) becomes one broken entry."""
    try:
        return read()
    except Exception as exc:  # listing must never fail on what it finds on disk
        return [broken(f"{source}: {where}", source, str(where), f"cannot be listed: {exc}")]


def with_fit(entry: CatalogEntry, free_bytes: int, device: str) -> CatalogEntry:
    """The entry with its verdict for `device` (none for a broken entry or an unknown size): the
    run plan of the cheapest mode that fits, decided without measuring anything here."""
    if not entry.usable or entry.shape is None or not entry.shape.parameters:
        return entry
    from dpo_engine import quant
    from dpo_engine.run_plan import PlanRequest, plan_run

    where = device.split(" ", 1)[0]  # "cuda:0 (NVIDIA H200)" names the device "cuda:0"
    plan = plan_run(PlanRequest(where), entry.shape, free_bytes, measure=False)
    return entry.with_fit(fit_verdict(entry.shape, free_bytes, device, plan=plan, four_bit=quant.catalog_reason(where)))


def _dedupe(entries: list[CatalogEntry]) -> list[CatalogEntry]:
    """One entry per model file or folder (the first source to find it names it)."""
    seen, out = set(), []
    for e in entries:
        key = e.path if e.path == "default" else str(Path(e.path).resolve())
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def list_models(project: str | Path | None = None, folders: Sequence[str | Path] = (), device: str = "auto",
                locations: Locations | None = None, free_bytes: int | None = None,
                include_default: bool = True, paths: Sequence[str | Path] = ()) -> Catalog:
    """Every model found, with fit verdicts for `device` ("auto", "cpu", "cuda", ...).

    `paths`: files or folders chosen by hand, listed last (once, if a source found them already).

    `free_bytes` overrides the measured free memory (tests; a person planning for another machine).
    """
    start = time.perf_counter()
    loc = locations or Locations.from_environment()
    found: list[CatalogEntry] = []
    if include_default:
        found += _guarded("default", "default", default_entries)
    if project:
        found += _guarded("checkpoint", project, lambda: checkpoint_entries(project))
    if loc.hf_cache:
        found += _guarded("hf-cache", loc.hf_cache, lambda: hf_cache_entries(loc.hf_cache))
    if loc.ollama:
        found += _guarded("ollama", loc.ollama, lambda: ollama_entries(loc.ollama))
    for root in loc.lm_studio:
        found += _guarded("lm-studio", root, lambda root=root: folder_entries(root, "lm-studio"))
    for root in folders:
        root = Path(root).expanduser()
        if not root.is_dir():
            found.append(broken(root.name or str(root), "folder", str(root), "no such folder"))
            continue
        found += _guarded("folder", root, lambda root=root: folder_entries(root, "folder"))
    found += [inspect_path(p) for p in paths]
    seconds = time.perf_counter() - start
    if free_bytes is None:
        free_bytes, label = memory_budget(device)
    else:
        label = device if device != "auto" else "cpu"
    entries = [with_fit(e, free_bytes, label) for e in _dedupe(found)]
    return Catalog(entries, label, free_bytes, seconds)


def inspect_with_fit(path: str | Path, device: str = "auto", free_bytes: int | None = None) -> CatalogEntry:
    """`inspect_path` plus the fit verdict: what the picker shows for a file chosen by hand."""
    entry = inspect_path(path)
    if free_bytes is None:
        free_bytes, device = memory_budget(device)
    return with_fit(entry, free_bytes, device)

