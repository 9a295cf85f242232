"""The models already on this machine, and whether each fits for training here.

Listing reads configs, safetensors headers and GGUF headers only: no weights are loaded,
so it takes well under a second for dozens of models, and a broken model is an entry
with `error` set (shown greyed with the reason), never an exception.

    list_models(project=None, folders=(), device="auto") -> Catalog
    iter_models(...) -> ListingProgress per source, returns the Catalog   (the window's worker)
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
from typing import Callable, Generator, Sequence

from dpo_engine.catalog.entry import CatalogEntry, broken
from dpo_engine.catalog.fit import fit_verdict, memory_budget
from dpo_engine.iters import drain
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


def with_fit(entry: CatalogEntry, free_bytes: int, device: str, choice=None) -> CatalogEntry:
    """The entry with its verdict for `device` (none for a broken entry or an unknown size): the
    run plan of the cheapest mode that fits, decided without measuring anything here. `choice`:
    the device and precision already picked for a whole listing (`catalog_choice`), so that the
    CPU's flags and the precision record are read once, not once a model."""
    if not entry.usable or entry.shape is None or not entry.shape.parameters:
        return entry
    from dpo_engine import quant
    from dpo_engine.run_plan import PlanRequest, plan_run

    where = device.split(" ", 1)[0]  # "cuda:0 (NVIDIA H200)" names the device "cuda:0"
    plan = plan_run(PlanRequest(where), entry.shape.parameters, free_bytes, measure=False,
                    choice=choice or catalog_choice(device))
    return entry.with_fit(fit_verdict(entry.shape, free_bytes, device, plan=plan, four_bit=quant.catalog_reason(where)))


def catalog_choice(device: str):
    """The device and precision the fit verdicts of a listing on `device` plan for (never measured)."""
    from dpo_engine.devices import pick_device

    return pick_device(device.split(" ", 1)[0], measure=False)


def _dedupe(entries: list[CatalogEntry]) -> list[CatalogEntry]:
    """One entry per model file or folder (the first source to find it names it)."""
    seen, out = set(), []
    for e in entries:
        key = e.path if e.path == "default" else str(Path(e.path).resolve())
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


@dataclass(frozen=True)
class ListingProgress:
    """One source read while listing (`iter_models`)."""

    source: str  # what was just read: "default", "hf-cache", "ollama", "lm-studio", "folder", "paths"
    done: int  # sources read so far
    total: int  # sources to read
    found: int  # entries found so far

    @property
    def message(self) -> str:
        return f"Looking for models: {self.source} ({self.done} of {self.total} places, {self.found} found)"


def iter_models(project: str | Path | None = None, folders: Sequence[str | Path] = (), device: str = "auto",
                locations: Locations | None = None, free_bytes: int | None = None,
                include_default: bool = True, paths: Sequence[str | Path] = ()
                ) -> Generator[ListingProgress, None, Catalog]:
    """`list_models` as a generator: a ListingProgress after each source, then the Catalog is
    returned (the window lists on its worker with this; a store on a slow disk never freezes it)."""
    start = time.perf_counter()
    loc = locations or Locations.from_environment()
    readers = _readers(project, folders, loc, include_default, paths)
    found: list[CatalogEntry] = []
    for done, (source, read) in enumerate(readers, 1):
        found += read()
        yield ListingProgress(source, done, len(readers), len(found))
    seconds = time.perf_counter() - start
    if free_bytes is None:
        free_bytes, label = memory_budget(device)
    else:
        label = device if device != "auto" else "cpu"
    choice = catalog_choice(label)
    entries = [with_fit(e, free_bytes, label, choice) for e in _dedupe(found)]
    return Catalog(entries, label, free_bytes, seconds)


def _readers(project, folders, loc: Locations, include_default: bool, paths) -> list[tuple[str, Callable]]:
    """(source, a function listing its entries) in listing order; a failing source lists as one broken entry."""
    readers: list[tuple[str, Callable[[], list[CatalogEntry]]]] = []
    if include_default:
        readers.append(("default", lambda: _guarded("default", "default", default_entries)))
    if project:
        readers.append(("checkpoint", lambda: _guarded("checkpoint", project, lambda: checkpoint_entries(project))))
    if loc.hf_cache:
        readers.append(("hf-cache", lambda: _guarded("hf-cache", loc.hf_cache, lambda: hf_cache_entries(loc.hf_cache))))
    if loc.ollama:
        readers.append(("ollama", lambda: _guarded("ollama", loc.ollama, lambda: ollama_entries(loc.ollama))))
    for root in loc.lm_studio:
        readers.append(("lm-studio", lambda root=root: _guarded("lm-studio", root,
                                                                lambda: folder_entries(root, "lm-studio"))))
    for root in folders:
        readers.append(("folder", lambda root=Path(root).expanduser(): _folder(root)))
    if paths:
        readers.append(("paths", lambda: [inspect_path(p) for p in paths]))
    return readers


def _folder(root: Path) -> list[CatalogEntry]:
    if not root.is_dir():
        return [broken(root.name or str(root), "folder", str(root), "no such folder")]
    return _guarded("folder", root, lambda: folder_entries(root, "folder"))


def list_models(project: str | Path | None = None, folders: Sequence[str | Path] = (), device: str = "auto",
                locations: Locations | None = None, free_bytes: int | None = None,
                include_default: bool = True, paths: Sequence[str | Path] = ()) -> Catalog:
    """Every model found, with fit verdicts for `device` ("auto", "cpu", "cuda", ...).

    `paths`: files or folders chosen by hand, listed last (once, if a source found them already).

    `free_bytes` overrides the measured free memory (tests; a person planning for another machine).
    """
    return drain(iter_models(project, folders, device, locations, free_bytes, include_default, paths))


def inspect_with_fit(path: str | Path, device: str = "auto", free_bytes: int | None = None) -> CatalogEntry:
    """`inspect_path` plus the fit verdict: what the picker shows for a file chosen by hand."""
    entry = inspect_path(path)
    if free_bytes is None:
        free_bytes, device = memory_budget(device)
    return with_fit(entry, free_bytes, device)

