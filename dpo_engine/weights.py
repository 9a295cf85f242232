"""A model's weights on their way in: their bytes, whether they fit, and the load's progress.

    weight_files(folder) -> [Path]                  the safetensors files from_pretrained reads
    weight_sizes(files, dtype) -> {name: bytes}     from the files' headers, in the load precision
    check_fits(name, weights, device)               ModelError where they cannot fit in the memory free
    return_freed_memory() -> bool                   hand what a finished job freed back to the OS
    reported_load(load, sizes) -> Generator[WeightsProgress, None, model]

transformers sets the weights into the model in one loop inside `from_pretrained` (its
"Loading weights" progress bar) and offers no callback, but lets a hook make its progress bars
(`transformers.utils.logging.set_tqdm_hook`). `reported_load` runs `from_pretrained` on a helper
thread whose bar reports each weight set to a queue; the generator polls the queue and yields
(the loop cannot yield itself), so the load's caller sees bytes, not a frozen "Loading…".
"""

from __future__ import annotations

import ctypes
import json
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterator, TypeVar

from dpo_engine.devices import DeviceChoice
from dpo_engine.errors import ModelError

T = TypeVar("T")

LOAD_SPARE = 1.1  # a loaded model needs its weights' bytes and a tenth more: `bench/load_gaps.py --spare`, the
# Llama-3.2-1B shape in bf16 on a CPU, loaded and sampling 8 prompts x (60 + 32) tokens, peaked at 1.106 x its
# weights above the process's memory before (rounded down: refuse only what surely cannot fit; bench/README.md,
# "Loading at real size"); in fp32 from bf16 files at 1.54 x, the files' pages still mapped as it converts, but
# those are clean page cache that the OS drops at need
PROGRESS_EVERY_S = 0.25  # at most four events a second: smooth in the status bar, and a CLI line each (at 0.1 s an
# 11 s fp32 load of the 1B shape printed 45 lines)
GIB = 2**30  # sizes in GiB, as the model picker shows free memory
BAR_NAME = "Loading weights"  # the `desc` of transformers' loop that sets the weights (core_model_loading.py)
STORED_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}  # safetensors' non-float dtypes


@dataclass(frozen=True)
class WeightsProgress:
    """The weights set into the model so far."""

    fraction: float  # 0..1 of their bytes (of their count where the sizes are unknown)
    message: str  # "Loading weights 1.2 / 2.3 GiB"


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files `from_pretrained` reads from a local folder: its index's shards, else
    model.safetensors; [] where there are none (an adapter folder: its base lies elsewhere)."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []  # a damaged index: the load itself says what is wrong
    single = folder / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single]
    # other names transformers does not pick: never Mistral's consolidated.safetensors nor an adapter's
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith(("adapter_model", "consolidated")))


def weight_sizes(files: list[Path], dtype) -> dict[str, int]:
    """Bytes of each tensor in `files` once loaded: floating ones in `dtype` (a torch dtype: the load
    casts them to it), the others as stored. Read from the safetensors headers only."""
    from safetensors import safe_open

    sizes = {}
    try:
        for path in files:
            with safe_open(str(path), framework="pt") as fh:
                for name in fh.keys():
                    part = fh.get_slice(name)
                    width = STORED_BYTES.get(part.get_dtype(), dtype.itemsize)  # "BF16", "F32": floating
                    sizes[name] = math.prod(part.get_shape()) * width
    except Exception:  # safetensors raises its own error types for a damaged header; the load explains it
        return {}
    return sizes


def free_ram() -> int:
    """Bytes of RAM available to a new allocation (psutil; else /proc/meminfo's MemAvailable); 0
    where unknown. The one reading of it: `catalog.fit.memory_budget` (the picker) asks it too."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            return next((int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")), 0)
    except OSError:
        return 0


def free_memory(device: DeviceChoice) -> int:
    """Bytes free where `device` keeps the weights: CUDA's free memory, else `free_ram` (MPS
    shares the RAM); 0 where unknown."""
    import torch

    if device.device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(device.torch_device)[0]) if torch.cuda.is_available() else 0
    return free_ram()


def check_fits(name: str, weights: int, device: DeviceChoice) -> None:
    """Refuse (ModelError) a model whose weights (`weights` bytes in the load precision, with
    LOAD_SPARE) exceed the memory free on `device` now. Unknown sizes or free memory (0) pass."""
    need = int(weights * LOAD_SPARE)
    free = free_memory(device) if weights else 0
    if not free or need <= free:
        return
    raise ModelError(f"{name} does not fit in memory: it needs {_size(need)} (its {device.dtype} weights, "
                     f"{_size(weights)}, and room to sample) and {_size(free)} is free ({device.device}). Pick a "
                     "smaller model, close other programs, or train it as LoRA over a 4-bit base on a CUDA GPU.")


def return_freed_memory() -> bool:
    """Give the memory a finished job freed back to the OS: glibc's `malloc_trim(0)`. glibc keeps freed heap memory for
    the process (its mmap threshold rises to 32 MB after a large free, so a run's many mid-sized
    tensors land on the heap): measured in the window on this machine, two runs of the default model
    left 2.2 GB of anonymous memory that nothing used until `malloc_trim` returned it (0.59 GB after,
    0.55 before the runs); a 1B LoRA run left 2.7 GB that the Compare page's fp32 copies then came
    on top of. True when glibc trimmed; False elsewhere (macOS, Windows, musl), which is harmless.
    ctypes releases the GIL for the call: the window does not wait on it. No `gc.collect()`: it
    freed nothing here, and it holds the GIL while it walks every object of the app (a 444 ms
    stall of the window in tests/test_train_page.py's event-loop test)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return False


# --------------------------------------------------------------------------- hearing transformers' loop

_LISTENERS: dict[int, Callable[[str, int], None]] = {}  # a loading thread -> what hears each weight it sets
_PREVIOUS: list = []  # the tqdm hook set before ours (None: transformers' own bars), once ours is set
_INSTALLING = threading.Lock()  # two first loads at once must not each take the other's hook for the previous


def _bar(factory, args, kwargs):
    """transformers' tqdm hook: in a thread that listens, the weights loop's iterable is wrapped
    so that each weight's name is heard once the loop's body has set it into the model."""
    listener = _LISTENERS.get(threading.get_ident())
    if listener is None or kwargs.get("desc") != BAR_NAME or not args or not hasattr(args[0], "__len__"):
        previous = _PREVIOUS[0] if _PREVIOUS else None
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)
    items = args[0]

    def heard():
        for item in items:
            yield item
            listener(str(item[0]) if isinstance(item, tuple) else str(item), len(items))

    return factory(heard(), *args[1:], **{"total": len(items), **kwargs})


def _listen_to_transformers() -> None:
    """Set `_bar` as transformers' tqdm hook, once (without the hook, older releases: no progress)."""
    from transformers.utils import logging

    with _INSTALLING:
        if not _PREVIOUS and hasattr(logging, "set_tqdm_hook"):
            _PREVIOUS.append(logging.set_tqdm_hook(_bar))


class _Stopped(Exception):
    """Raised into transformers' loop at the next weight: the load's generator was closed."""


@dataclass
class _Tally:
    """The weights set so far: their bytes where the headers gave them, else their count."""

    sizes: dict[str, int]
    done: int = 0
    count: int = 0
    of: int = 0  # how many weights the loop sets
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.total = sum(self.sizes.values())

    def add(self, name: str, of: int) -> None:
        self.count, self.of = self.count + 1, of
        self.done += self.sizes.get(name, self.total // max(1, len(self.sizes)))  # renamed: an average one

    def progress(self, final: bool = False) -> WeightsProgress:
        if self.total:
            done = self.total if final else min(self.done, self.total)
            return WeightsProgress(done / self.total, f"Loading weights {_sizes(done, self.total)}")
        of = max(self.of, self.count, 1)
        done = of if final else self.count
        return WeightsProgress(done / of, f"Loading weights ({done} of {of} tensors)")


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _sizes(done: int, total: int) -> str:
    """'1.2 / 2.3 GiB', or in MiB below a GiB (the default model: '210 / 513 MiB')."""
    if total >= GIB:
        return f"{done / GIB:.1f} / {total / GIB:.1f} GiB"
    return f"{done / 2**20:.0f} / {total / 2**20:.0f} MiB"


def _polled(heard: queue.SimpleQueue, tally: _Tally) -> Iterator[WeightsProgress]:
    """The tally's progress as weights are heard, at most once per PROGRESS_EVERY_S, until the end (None)."""
    shown, pending = time.monotonic(), False
    yield tally.progress()
    while True:
        wait = max(0.0, shown + PROGRESS_EVERY_S - time.monotonic()) if pending else None
        try:
            item = heard.get(timeout=wait)
        except queue.Empty:
            item = ()  # time to show what was heard meanwhile
        if item is None:
            if pending:
                yield tally.progress()
            return
        if item:
            tally.add(*item)
            pending = True
        if pending and time.monotonic() - shown >= PROGRESS_EVERY_S:
            shown, pending = time.monotonic(), False
            yield tally.progress()


def reported_load(load: Callable[[], T], sizes: dict[str, int]) -> Generator[WeightsProgress, None, T]:
    """Run `load()` (a `from_pretrained`) on a helper thread and yield its progress: the weights set so
    far, in bytes by `sizes` (by count where it is empty), the last at 1; return what it returned, or
    raise what it raised. Closing the generator stops the load at its next weight and waits for it."""
    heard: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    outcome: dict = {}

    def listen(name: str, of: int) -> None:
        if stop.is_set():
            raise _Stopped
        heard.put((name, of))

    def run() -> None:
        _LISTENERS[threading.get_ident()] = listen
        try:
            outcome["value"] = load()
        except BaseException as exc:  # raised again in the generator's own thread
            outcome["error"] = exc
        finally:
            del _LISTENERS[threading.get_ident()]
            heard.put(None)

    _listen_to_transformers()
    tally = _Tally(sizes)
    thread = threading.Thread(target=run, name="load-weights", daemon=True)
    thread.start()
    try:
        yield from _polled(heard, tally)
    except BaseException:  # closed (a cancel) or thrown into: the helper must not load on behind our back
        stop.set()
        thread.join()
        raise
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if tally.progress().fraction < 1:  # a weight the loader renamed was counted at an average size
        yield tally.progress(final=True)
    return outcome["value"]
