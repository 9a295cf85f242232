"""What is being exported: a model reference turned into files on disk and, when asked, a model.

A reference is anything the model picker accepts ('default', a model folder, a .gguf, a hub id)
or a DPO Studio run's checkpoint folder, which comes in three shapes:

    full run            config.json + *.safetensors (+ our dpo_studio_run.json, trainer_state/, ...)
    LoRA run            adapter_config.json + adapter_model.safetensors: the base is named in
                        dpo_studio_run.json ("base_model"), or in the adapter's config
    LoRA run, merged    full weights at the top and the adapter in adapter/
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator

from dpo_engine.devices import pick_device
from dpo_engine.errors import ModelError, ModelNotFoundError
from dpo_engine.iters import drain
from dpo_engine.models import (DEFAULT_MODEL_NAME, DEFAULT_MODEL_REF, PrepareProgress, default_model_dir,
                               load_model_events, load_tokenizer, resolve_model_events, resolve_model_ref)
from dpo_engine.train.checkpoints import read_run_file
from dpo_engine.train.model import adapter_folder

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # where the default model lives on the hub (model cards)
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class ExportSource:
    """Where the weights of the model to export are, and what is known of how they were made."""

    ref: str  # what the person gave
    folder: Path | None  # the local folder with the files; None for a hub id
    has_weights: bool  # config.json + full *.safetensors in `folder`
    adapter: Path | None  # the LoRA adapter folder, where the model is (or carries) one
    base_ref: str | None  # the model the adapter applies to ('default', a folder, a hub id)
    run: dict = field(default_factory=dict)  # dpo_studio_run.json; {} for a model that is not a run
    name: str = ""  # a short name for files and cards

    @property
    def inputs(self) -> list[Path]:
        """The paths an export must never be written onto or into."""
        return [p for p in (self.folder, self.adapter) if p is not None]

    @property
    def base_inputs(self) -> list[Path]:
        """Where the base model a LoRA adapter applies to is on this disk (nothing is converted to find it)."""
        return base_paths(self.base_ref) if self.adapter is not None else []


def base_paths(ref: str | None) -> list[Path]:
    """Every local path that holds the model `ref` names: the default model's converted folder in the user
    cache, a model folder, a .gguf (or Ollama blob) and its converted copy, a hub id's folder in the
    Hugging Face cache. None of them may be replaced by an export."""
    from dpo_engine.models import _gguf_cache_dir

    if not ref:
        return []
    if ref == DEFAULT_MODEL_REF:
        return [default_model_dir()]
    path = Path(ref).expanduser()
    if path.is_file():
        return [path, _gguf_cache_dir(path)]
    if path.exists() or ref.count("/") != 1:
        return [path]
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return [Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ref, repo_type="model")]


def _has_full_weights(folder: Path) -> bool:
    weights = [p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_model")]
    return (folder / "config.json").is_file() and bool(weights)


def _adapter_dir(folder: Path) -> Path | None:
    """The run's LoRA adapter folder (`adapter/` of a merged run, or the folder itself), if any."""
    candidate = adapter_folder(folder)
    return candidate if (candidate / ADAPTER_CONFIG).is_file() else None


def _adapter_base(adapter: Path, run: dict) -> str | None:
    if run.get("base_model"):
        return str(run["base_model"])
    try:
        return json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def find_source_events(ref: str | None) -> Generator[PrepareProgress, None, ExportSource]:
    """Describe what `ref` names without loading weights; yield the progress of preparing the default
    model or a .gguf (once), and return the ExportSource."""
    ref = (ref or DEFAULT_MODEL_REF).strip()
    path = Path(ref).expanduser()
    if path.is_dir():
        folder = path.absolute()
        run = read_run_file(folder)
        adapter = _adapter_dir(folder)
        has_weights = _has_full_weights(folder)
        if not has_weights and adapter is None:
            raise ModelNotFoundError(f"{folder} holds neither a model (config.json + .safetensors) nor a LoRA "
                                     "adapter (adapter_config.json): give a model folder or a run's checkpoint.")
        base = _adapter_base(adapter, run) if adapter is not None else None
        if adapter is not None and not has_weights and not base:
            raise ModelError(f"{folder} holds a LoRA adapter but does not say which base model it applies to "
                             "(no base_model in dpo_studio_run.json or adapter_config.json).")
        return ExportSource(ref, folder, has_weights, adapter, base, run, folder.name)
    resolved = yield from resolve_model_events(ref)
    folder = None if resolved.kind == "hub" else Path(resolved.path)
    name = DEFAULT_MODEL_NAME if resolved.kind == "default" else resolved.display_name.split("/")[-1]
    return ExportSource(ref, folder, True, None, None, {}, name)


def find_source(ref: str | None) -> ExportSource:
    """Blocking `find_source_events`."""
    return drain(find_source_events(ref))


def check_adapter_fits(source: ExportSource, prepare: bool = True) -> None:
    """Refuse a LoRA adapter that was trained on another model than the base it names (a hand-edited
    adapter or run file): shapes read from headers, before anything is loaded or written. `prepare`:
    the base may be converted to find its files (a .gguf); else only a base already on disk is read.
    A base that is not on this disk (a hub id) is not checked here."""
    from dpo_engine.export.tensors import adapter_misfit
    from dpo_engine.weights import weight_files

    if source.adapter is None or not (source.adapter / "adapter_model.safetensors").is_file():
        return
    if source.has_weights and source.folder is not None:  # a merged run: its own weights are the base's shape
        folder, base = source.folder, str(source.folder)
    else:
        base = source.base_ref
        folder = local_folder(base) if prepare else _base_folder_on_disk(base)
    if folder is None or not weight_files(folder):
        return
    why = adapter_misfit(source.adapter, folder)
    if why:
        raise ModelError(f"The LoRA adapter in {source.adapter} does not fit its base model {base}: {why}. It was "
                         "trained on another model; name that model as base_model in the run's "
                         "dpo_studio_run.json (or adapter_config.json), or export the run it came from.")


def _base_folder_on_disk(ref: str | None) -> Path | None:
    """The base's safetensors folder where it needs no conversion to read (a folder, the prepared default)."""
    paths = base_paths(ref)
    folder = paths[-1] if paths else None
    return folder if folder is not None and folder.is_dir() else None


def hub_id_of(ref: str | None) -> str | None:
    """The hub id a model card can name as base_model, or None for a local path."""
    if not ref:
        return None
    if ref == DEFAULT_MODEL_REF:
        return DEFAULT_HUB_ID
    path = Path(ref).expanduser()
    if path.exists():
        # the default model's converted folder, as a run file names it (an absolute path)
        return DEFAULT_HUB_ID if path.resolve() == default_model_dir().resolve() else None
    return ref if ref.count("/") == 1 and not ref.startswith((".", "/", "~")) else None


def load_tokenizer_for_export(source: ExportSource):
    """The tokenizer exactly as saved, from the run's folder where it has one, else the base's."""
    from transformers import AutoTokenizer

    for where in (source.folder, source.adapter):
        if where is not None and (where / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(where), trust_remote_code=False)
    return load_tokenizer(resolve_model_ref(source.base_ref or source.ref))


def merged_model_events(source: ExportSource) -> Generator[PrepareProgress, None, object]:
    """The model with full weights in fp32 on the CPU (a LoRA adapter merged into its base); yields
    the progress of preparing what it loads (the default model, a .gguf: once)."""
    cpu = pick_device("cpu", "float32")  # never the machine's auto precision: bf16 weights would lose bits
    if source.has_weights:
        ref = str(source.folder) if source.folder is not None else source.ref
        return (yield from load_model_events(ref, cpu)).model
    from peft import PeftModel

    base = (yield from load_model_events(source.base_ref, cpu)).model
    try:
        peft_model = PeftModel.from_pretrained(base, str(source.adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        mismatch = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("size mismatch")]
        if mismatch:  # PyTorch lists every tensor; the first says what is wrong
            raise ModelError(f"The LoRA adapter in {source.adapter} does not fit its base model {source.base_ref} "
                             f"({mismatch[0]}): it was trained on another model; name that model as base_model in "
                             "the run's dpo_studio_run.json.") from None
        raise ModelError(f"Could not apply the LoRA adapter in {source.adapter} to {source.base_ref}: {exc}") from exc
    model = peft_model.merge_and_unload()
    model.eval()
    return model


def load_merged_model(source: ExportSource):
    """Blocking `merged_model_events`."""
    return drain(merged_model_events(source))


def local_folder(ref: str | None) -> Path | None:
    """The safetensors folder a local reference names (a .gguf is converted once, in the cache); None
    for a hub id, whose files are not on this disk."""
    resolved = resolve_model_ref(ref)
    return None if resolved.kind == "hub" else Path(resolved.path)


def adapter_config_folder(source: ExportSource) -> Path:
    """Where the config of the model a LoRA adapter applies to is: the run's own folder for a merged run
    (the same architecture and shapes), else the base's local safetensors folder (a .gguf base: its
    converted copy)."""
    if source.has_weights and source.folder is not None:
        return source.folder
    folder = local_folder(source.base_ref)
    if folder is None:
        raise ModelError(f"The base model {source.base_ref} is not on this disk; the GGUF adapter export reads its "
                         "config from there.")
    return folder


def open_tensors(source: ExportSource, lazy_only: bool = False):
    """(tensors, config) for a streaming writer: the safetensors files read one tensor at a time (a LoRA
    adapter merged into each weight as it is read), or the loaded model where the files are not local
    (`lazy_only`: refuse instead of loading)."""
    from transformers import AutoConfig

    from dpo_engine.export.tensors import FolderTensors, ModelTensors

    folder = source.folder if source.has_weights else local_folder(source.base_ref)
    if folder is None:
        if lazy_only:
            raise ModelError(f"{source.base_ref or source.ref} is not on this disk: its size is known once it is.")
        model = load_merged_model(source)
        return ModelTensors(model), model.config
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    adapter = None if source.has_weights else source.adapter
    return FolderTensors(folder, adapter), config
