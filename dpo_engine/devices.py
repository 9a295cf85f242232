"""Which device and precision torch work runs on, and why.

Device: CUDA, then MPS, then CPU; overridable by a flag, a setting or DPO_STUDIO_DEVICE.
Precision ("auto"): bf16 on CUDA that supports it; on the CPU bf16 when the CPU executes it
natively and a short measurement here shows it faster (`dpo_engine.precision`, cached per
machine); fp32 otherwise. DPO_STUDIO_DTYPE sets what "auto" means on a machine; an explicit
dtype always wins, with a warning where this hardware runs it poorly.

The dtype is the compute precision: sampling loads the weights in it; training keeps fp32
weights and optimizer state and runs the forward under autocast to it (train/model.py).

Everything else about how a model runs here (the weights', attention and scoring precision,
a LoRA run's base, checkpointing) is decided by `dpo_engine.run_plan`, which asks this module
for the device and the compute precision.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dpo_engine.errors import DeviceError
from dpo_engine.paths import cache_dir
from dpo_engine.precision import cpu_precision, native_bf16_flags

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda", "cuda:1", "mps" or "cpu"
    dtype: str  # "float32" | "bfloat16" | "float16": the compute precision (see the module docstring)
    reason: str  # why this device, shown to the user
    precision_reason: str = ""  # why this precision, e.g. "bf16: CPU has avx512_bf16, matmul 2.7x fp32 (...)"
    warning: str = ""  # set when a requested precision runs poorly here: say it to the person
    requested: bool = False  # the dtype was named (flag, setting or DPO_STUDIO_DTYPE), not picked by "auto"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def describe(self) -> str:
        name = self.device
        if self.device.startswith("cuda") and torch.cuda.is_available():
            name = f"{self.device} ({torch.cuda.get_device_name(self.torch_device)})"
        return f"{name}, {self.dtype}"

    def autocast(self):
        """A fresh autocast context to this precision (null in fp32): the training forward's."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=self.torch_dtype)


def precision_cache_file() -> Path:
    """This machine's bf16-vs-fp32 measurement, beside the converted models."""
    return cache_dir() / "precision.json"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def pick_device(device: str | None = None, dtype: str | None = None, measure: bool = True) -> DeviceChoice:
    """Choose a device and precision: the one rule for "auto" (`run_plan.plan_run` asks it).

    Args:
        device: "auto" (default), "cuda", "cuda:N", "mps" or "cpu". When None, the
            DPO_STUDIO_DEVICE environment variable is used, else "auto".
        dtype: "auto" (default; DPO_STUDIO_DTYPE when set, else decided by the hardware:
            see the module docstring) or an explicit "float32", "bfloat16" or "float16".
        measure: False: never time bf16 against fp32 here (the catalog); a cached measurement
            still counts (`precision.cpu_precision`).
    """
    device = (device or os.environ.get("DPO_STUDIO_DEVICE") or "auto").lower()
    dtype = (dtype or "auto").lower()
    source = "requested"
    if dtype == "auto" and os.environ.get("DPO_STUDIO_DTYPE"):
        dtype, source = os.environ["DPO_STUDIO_DTYPE"].lower(), "set by DPO_STUDIO_DTYPE"
    if dtype not in DTYPE_CHOICES:
        raise DeviceError(f"Unknown precision {dtype!r}: use one of {', '.join(DTYPE_CHOICES)}.")
    device, reason = _device(device)
    if dtype == "auto":
        dtype, why = _auto_precision(device, measure)
        return DeviceChoice(device, dtype, reason, why)
    return DeviceChoice(device, dtype, reason, f"{SHORT[dtype]}: {source}", _warning(device, dtype), True)


SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _device(device: str) -> tuple[str, str]:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda", "a CUDA GPU is available"
        if _mps_available():
            return "mps", "Apple GPU (MPS) is available"
        return "cpu", "no GPU found"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}). Use --device cpu, or install a CUDA build of "
                "torch (see README, 'GPU')."
            )
        return device, "requested"
    if device == "mps":
        if not _mps_available():
            raise DeviceError("MPS was requested but is not available here. Use --device cpu.")
        return device, "requested"
    if device == "cpu":
        return device, "requested"
    raise DeviceError(f"Unknown device {device!r}: use auto, cuda, cuda:N, mps or cpu.")


def _auto_precision(device: str, measure: bool = True) -> tuple[str, str]:
    """(dtype, reason) for "auto" on `device`."""
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "bf16: the GPU supports it"
        return "float32", "fp32: this GPU has no bf16 (fp16 training would need loss scaling)"
    if device == "mps":
        return "float32", "fp32: bf16 on Apple GPUs is not measured yet"
    choice = cpu_precision(precision_cache_file(), measure_now=measure)
    return choice.dtype, choice.reason


def _warning(device: str, dtype: str) -> str:
    """What to tell the person about an explicit precision this hardware runs poorly."""
    if device != "cpu" or dtype == "float32":
        return ""
    if dtype == "bfloat16" and not native_bf16_flags():
        return ("bfloat16 on this CPU is emulated (no avx512_bf16, amx_bf16 or bf16 flag): expect it slower "
                "than float32. --dtype auto picks the faster one.")
    if dtype == "float16":
        return "float16 on a CPU is mostly emulated and slow, and less precise than bfloat16: prefer --dtype auto."
    return ""
