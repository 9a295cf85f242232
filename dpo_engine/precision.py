"""Whether bf16 pays on this CPU: the capability, a sub-second measurement, and its cache.

On a CPU with native bf16 dot products (AVX512_BF16, AMX, Arm's BF16) a bf16 matmul reads
half the bytes and runs 2-3x the fp32 rate (measured 2.6-3.1x on a 2-core AMD EPYC with
avx512_bf16, a SmolLM2 forward+backward 2.3x; bench/README.md, "Precision"). Without them torch emulates bf16 and it is slower than fp32.
So "auto" asks twice: does the CPU execute bf16 natively, and is a training-shaped matmul
clearly faster in bf16 *here*? The measurement runs once per machine (and torch build) and
is kept as JSON in the user cache, beside the converted models:

    cpu_precision(path)  ->  CpuPrecision(dtype, reason)
        no native flag          -> float32  (never measured: emulated bf16 is slow)
        cached record, same key -> its verdict
        else measure (< 1 s), write the record, decide: speedup >= MIN_SPEEDUP -> bfloat16

A record that is missing, unreadable, from another machine or another torch build is
measured again; a cache that cannot be written costs a re-measurement next time, never an
error.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from dpo_engine.paths import write_cache_json

RECORD_VERSION = 1  # bump when the measurement changes, so old records are measured again
NATIVE_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX-512, Arm v8.6 (Graviton 3, Apple M2+)
MIN_SPEEDUP = 1.2  # bf16 costs precision: take it only for a clear gain, above the measurement's noise
SHAPE = (256, 576, 1536)  # tokens x hidden x MLP width of SmolLM2-135M, the default model
REPEATS = 6  # best of 6 per precision: the minimum is robust to another process stealing a core


@dataclass(frozen=True)
class CpuPrecision:
    dtype: str  # "bfloat16" | "float32"
    reason: str  # one line for the person, e.g. "bf16: CPU has avx512_bf16, matmul 2.7x fp32 (measured ...)"


def _cpuinfo_flags() -> set[str]:
    """Flags (x86) or Features (Arm) of /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16_flags() -> list[str]:
    """The CPU features that execute bf16 natively, strongest first; empty when bf16 is emulated.

    torch's own view (`torch.cpu.get_capabilities`, torch >= 2.8) and /proc/cpuinfo are both
    read: either may be missing on a platform.
    """
    found = set()
    caps = getattr(torch.cpu, "get_capabilities", None)
    if callable(caps):
        try:
            found |= {flag for flag in NATIVE_FLAGS if caps().get(flag)}
        except Exception:  # a capability probe is never worth failing a run
            pass
    found |= _cpuinfo_flags() & set(NATIVE_FLAGS)
    return [flag for flag in NATIVE_FLAGS if flag in found]


def machine_key(flags: list[str]) -> dict:
    """What a measurement is valid for: this host, its CPU, its torch build."""
    name = ""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if callable(caps):
        try:
            name = str(caps().get("cpu_name", ""))
        except Exception:
            pass
    return {"host": platform.node(), "cpu": name or platform.processor(), "machine": platform.machine(),
            "torch": torch.__version__, "flags": flags}


def _step_seconds(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, bf16: bool) -> float:
    """One forward + backward of an MLP block (two linears), as a training step runs it."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = torch.nn.functional.linear(torch.nn.functional.linear(x, w1), w2)
    y.float().sum().backward()
    w1.grad = w2.grad = None
    return time.perf_counter() - start


def measure(shape: tuple[int, int, int] = SHAPE, repeats: int = REPEATS) -> dict:
    """Time fp32 against bf16 autocast on the default model's MLP shape (fp32 weights, as training
    holds them, so the cast is timed too). Interleaved, best of `repeats` each, ~0.4 s.

    On one thread: the ratio is a property of the core, and a multi-threaded timing on a
    machine where another process holds a core measures the waiting (here 0.9-1.2x at two
    threads under load, 2.0-2.4x at one, for the same kernels).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(shape, repeats)
    finally:
        torch.set_num_threads(threads)


def _measure(shape: tuple[int, int, int], repeats: int) -> dict:
    tokens, hidden, width = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g)
    w1 = torch.randn(width, hidden, generator=g).div_(hidden ** 0.5).requires_grad_()
    w2 = torch.randn(hidden, width, generator=g).div_(width ** 0.5).requires_grad_()
    _step_seconds(x, w1, w2, False), _step_seconds(x, w1, w2, True)  # warm-up: first calls pick kernels
    fp32, bf16 = [], []
    for _ in range(repeats):
        fp32.append(_step_seconds(x, w1, w2, False))
        bf16.append(_step_seconds(x, w1, w2, True))
    flop = 3 * 2 * (2 * tokens * hidden * width)  # two linears; backward costs twice the forward
    best32, best16 = min(fp32), min(bf16)
    return {
        "shape": list(shape), "threads": torch.get_num_threads(),
        "fp32_ms": round(best32 * 1e3, 3), "bf16_ms": round(best16 * 1e3, 3),
        "fp32_gflops": round(flop / best32 / 1e9, 1), "bf16_gflops": round(flop / best16 / 1e9, 1),
        "speedup": round(best32 / best16, 3),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def read_record(path: Path, key: dict) -> dict | None:
    """The cached measurement for `key`, or None when absent, damaged or for another machine."""
    try:
        record = json.loads(Path(path).read_text())
        if (record.get("version") == RECORD_VERSION and record.get("key") == key
                and float(record["speedup"]) > 0 and str(record["measured"])):
            return record
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # unreadable or not ours: measure again (a cache is never worth failing a run)
    return None


def cpu_precision(path: Path, measure_fn: Callable[[], dict] | None = None,
                  flags_fn: Callable[[], list[str]] | None = None, measure_now: bool = True) -> CpuPrecision:
    """bf16 autocast when the CPU runs bf16 natively and the cached (or a fresh) measurement shows
    it at least MIN_SPEEDUP x fp32; fp32 otherwise.

    Args:
        path: the JSON record of this machine's measurement.
        measure_fn, flags_fn: `measure` and `native_bf16_flags` unless given (tests pass fakes).
        measure_now: False where nothing may be timed (the catalog, listing dozens of models): with
            no record yet, native bf16 is taken as faster, which every measurement so far has found.
    """
    flags = (flags_fn or native_bf16_flags)()
    if not flags:
        return CpuPrecision("float32", "fp32: this CPU has no native bf16 (no avx512_bf16, amx_bf16 or bf16 "
                                       "flag), so bf16 would be emulated and slower")
    key = machine_key(flags)
    record = read_record(path, key)
    if record is None and not measure_now:
        return CpuPrecision("bfloat16", f"bf16: CPU has {flags[0]} (not measured yet: a run measures it)")
    if record is None:
        record = {"version": RECORD_VERSION, "key": key, **(measure_fn or measure)()}
        write_cache_json(path, record)
    speedup, day = float(record["speedup"]), str(record["measured"])[:10]
    if speedup >= MIN_SPEEDUP:
        return CpuPrecision("bfloat16", f"bf16: CPU has {flags[0]}, matmul {speedup:.1f}x fp32 (measured {day})")
    return CpuPrecision("float32", f"fp32: CPU has {flags[0]} but a bf16 matmul ran only {speedup:.2f}x fp32 "
                                   f"here (measured {day}; bf16 needs {MIN_SPEEDUP}x)")
