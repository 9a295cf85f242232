"""Which device and precision torch work runs on: CUDA (bf16 where supported), then MPS,
then CPU (fp32). Overridable by a flag, a setting or DPO_STUDIO_DEVICE."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dpo_engine.errors import DeviceError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda", "cuda:1", "mps" or "cpu"
    dtype: str  # "float32" | "bfloat16" | "float16": the dtype weights are loaded in
    reason: str  # why this choice, shown to the user

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


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def pick_device(device: str | None = None, dtype: str | None = None) -> DeviceChoice:
    """Choose a device and dtype.

    Args:
        device: "auto" (default), "cuda", "cuda:N", "mps" or "cpu". When None, the
            DPO_STUDIO_DEVICE environment variable is used, else "auto".
        dtype: "auto" (bf16 on CUDA that supports it, else fp32), or an explicit dtype.
    """
    device = (device or os.environ.get("DPO_STUDIO_DEVICE") or "auto").lower()
    dtype = (dtype or os.environ.get("DPO_STUDIO_DTYPE") or "auto").lower()
    if dtype not in DTYPE_CHOICES:
        raise DeviceError(f"Unknown precision {dtype!r}: use one of {', '.join(DTYPE_CHOICES)}.")
    if device == "auto":
        if torch.cuda.is_available():
            device, reason = "cuda", "a CUDA GPU is available"
        elif _mps_available():
            device, reason = "mps", "Apple GPU (MPS) is available"
        else:
            device, reason = "cpu", "no GPU found"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}). Use --device cpu, or install a CUDA build of "
                "torch (see README, 'GPU')."
            )
        reason = "requested"
    elif device == "mps":
        if not _mps_available():
            raise DeviceError("MPS was requested but is not available here. Use --device cpu.")
        reason = "requested"
    elif device == "cpu":
        reason = "requested"
    else:
        raise DeviceError(f"Unknown device {device!r}: use auto, cuda, cuda:N, mps or cpu.")

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            dtype = "bfloat16"
        else:
            dtype = "float32"  # fp16 training needs loss scaling; CPU and MPS are safest in fp32
    elif dtype in ("bfloat16", "float16") and device == "cpu":
        raise DeviceError(f"{dtype} on the CPU is slow and imprecise here: use float32.")
    return DeviceChoice(device=device, dtype=dtype, reason=reason)
