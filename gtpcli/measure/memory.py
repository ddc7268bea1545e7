"""Peak memory of the timed forward passes.

CUDA: torch's allocator statistics, reset before the passes: peak allocated (tensors alive, weights
included) and peak reserved (what the caching allocator holds from the driver).
CPU: the process's resident memory growth over the passes, `VmHWM` after minus `VmRSS` before, in MiB.
The high-water mark is reset first (Linux `/proc/self/clear_refs`), and freed heap memory is handed back
(`malloc_trim`) so that what an earlier point left cached is not counted as free room for this one. It
measures activations and workspace the passes add to resident memory (weights and the input batch are
already resident), at page granularity and including anything else the process allocates meanwhile.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from contextlib import contextmanager
from typing import Iterator

import torch

MIB = 2 ** 20


@contextmanager
def peak(device: str) -> Iterator[dict]:
    """Yields a dict that holds, after the block, the peak memory of the block (keys by device; empty on a
    platform where it cannot be read)."""
    found: dict = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield found
        torch.cuda.synchronize(device)
        found["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
        found["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / MIB, 1)
        return
    gc.collect()
    _trim_heap()
    before = _status_kib("VmRSS") if _reset_high_water_mark() else None
    yield found
    after = _status_kib("VmHWM")
    if before is not None and after is not None:
        found["rss_peak_delta_mib"] = round((after - before) * 1024 / MIB, 1)


def key(row: dict) -> str | None:
    """The memory figure a row is compared on: peak allocated on CUDA, the resident growth on CPU."""
    return next((k for k in ("cuda_peak_allocated_mib", "rss_peak_delta_mib") if row.get(k) is not None), None)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass
