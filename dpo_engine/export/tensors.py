"""A model's tensors one at a time, for writers that stream (GGUF): never the whole model in memory.

    ModelTensors    a loaded model's state dict (a base that only loads whole, e.g. from a .gguf)
    FolderTensors   the *.safetensors of a model folder, opened lazily (safetensors maps the file
                    and reads one tensor when asked); with a LoRA adapter, each targeted weight is
                    merged as it is read: W + (alpha / r) * B @ A, as PEFT's merge_and_unload does

Every tensor comes out as an fp32 CPU tensor; only the one being written is held (a 7B export
needs about one tensor's worth of extra memory, not the 28 GB of the model in fp32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from dpo_engine.errors import ModelError
from dpo_engine.weights import weight_files


class TensorReader(Protocol):
    """Reads one tensor at a time (a writer's view of the model's weights; `export.source` says which
    model they are)."""

    def names(self) -> list[str]:
        """Every tensor's transformers name, in the file's order."""

    def shape(self, name: str) -> tuple[int, ...]:
        ...

    def get(self, name: str):
        """The tensor as fp32 on the CPU."""


class ModelTensors:
    """A model already in memory (its state dict)."""

    def __init__(self, model):
        self.state = model.state_dict()

    def names(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def get(self, name: str):
        return self.state[name].detach().to("cpu").float()


class FolderTensors:
    """The safetensors files of a model folder, read lazily, with an optional LoRA adapter merged in."""

    def __init__(self, folder: Path, adapter: Path | None = None):
        from safetensors import safe_open

        files = weight_files(Path(folder))
        if not files:
            raise ModelError(f"{folder} has no .safetensors weights to export.")
        self._handles = [safe_open(str(p), framework="pt") for p in files]
        self._where = {name: h for h in self._handles for name in h.keys()}
        self._lora = read_adapter(adapter) if adapter is not None else {}
        missing = sorted({w for w in self._lora if w not in self._where})
        if missing:
            raise ModelError(f"The LoRA adapter in {adapter} changes weights its base does not have "
                             f"({', '.join(missing[:3])}): it belongs to another model.")

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].get_slice(name).get_shape())

    def get(self, name: str):
        tensor = self._where[name].get_tensor(name).float()
        if name in self._lora:
            a, b, scale = self._lora[name]
            tensor = tensor + scale * (b.float() @ a.float())
        return tensor


def read_adapter(adapter: Path) -> dict[str, tuple]:
    """{base weight name: (lora_A, lora_B, alpha / r)} from a PEFT LoRA adapter folder.

    Per-module ranks and alphas (rank_pattern / alpha_pattern) and rsLoRA's alpha / sqrt(r) are
    honoured as PEFT does; what a plain merge would get wrong (DoRA, whole saved modules) is refused."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise ModelError(f"The adapter in {adapter} is not a plain LoRA (DoRA or another PEFT type); export "
                         "it with --format hf, which lets PEFT merge it.")
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    others = [k for k in weights if ".lora_A." not in k and ".lora_B." not in k]
    if others:
        raise ModelError(f"The adapter in {adapter} also carries whole weights ({others[0]}, ...); export it with "
                         "--format hf, which lets PEFT merge it.")
    out = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        base = module.removeprefix("base_model.model.") + ".weight"
        short = module.split(".")[-1]
        rank = config.get("rank_pattern", {}).get(short, config["r"])
        alpha = config.get("alpha_pattern", {}).get(short, config["lora_alpha"])
        scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
        out[base] = (a, b, scale)
    return out


def adapter_misfit(adapter: Path, folder: Path) -> str | None:
    """Why the LoRA adapter in `adapter` does not fit the model in `folder`, or None. Shapes only, from the
    safetensors headers: each adapted weight W (out x in) must be in the model, with lora_A r x in and
    lora_B out x r (PEFT's layout)."""
    from safetensors import safe_open

    base = FolderTensors(folder)
    path = adapter / "adapter_model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise ModelError(f"The LoRA adapter file {path} cannot be read ({exc}).") from None
    names = set(base.names())
    for key, a in sorted(shapes.items()):
        if ".lora_A." not in key:
            continue
        weight = key.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
        b = shapes.get(key.replace(".lora_A.", ".lora_B."))
        if weight not in names:
            return f"it changes {weight}, which the base does not have"
        w = base.shape(weight)
        if b is None or len(w) != 2 or len(a) != 2 or len(b) != 2 or (b[0], a[1]) != w or a[0] != b[1]:
            return (f"it changes {weight} as a {b[0] if b else '?'} x {a[-1]} matrix (lora_A {list(a)}, lora_B "
                    f"{list(b) if b else 'missing'}); the base's is {' x '.join(map(str, w))}")
    return None
