"""The machine a benchmark ran on, for every result row: CPU model, the flags that decide its
speed (AVX2, AVX-512, native bf16: avx512_bf16 and AMX), cores, torch and its threads, load.

Figures from different machines are never compared as if from one: a row that names its CPU
and flags says which class of machine it belongs to (bf16 runs ~2x fp32 where it is native,
~10x slower than fp32 where it is emulated).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the ones bench results depend on


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ('', empty) where there is none."""
    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


def machine_info() -> dict:
    """Plain values for a JSON result row."""
    import torch

    name, flags = _cpuinfo()
    return {
        "cpu": name or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "cores": os.cpu_count(),
        # the CPUs this process may run on (taskset / a container's cpuset): what its threads share
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        # kernel caps set by environment (an AMX CPU capped to AVX2 stands in for a CPU without native bf16)
        "isa_caps": {k: os.environ[k] for k in CAP_VARIABLES if k in os.environ},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),  # which kernels ran: their rounding differs
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def machine_row(info: dict | None = None) -> str:
    """One line for a report: 'AMD EPYC (avx2 avx512f avx512_bf16), 2 cores, torch 2.13.0 (2 threads), load 1.0'."""
    m = info or machine_info()
    flags = " ".join(m["cpu_flags"]) or "no avx2"
    cores = f"{m['cores']} cores"
    if m.get("cpus_allowed") not in (None, m["cores"]):
        cores += f" ({m['cpus_allowed']} allowed)"
    caps = m.get("isa_caps") or {}
    capped = f", capped: {' '.join(f'{k}={v}' for k, v in caps.items())}" if caps else ""
    return (f"{m['cpu']} ({flags}{capped}), {cores}, torch {m['torch']} ({m['torch_threads']} threads), "
            f"load {m['load_1min']}")
