"""Throughput the way the paper measures it: inference mode, warm-up, synchronised timing, median of
several timed batches with its spread."""

from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from . import memory


@dataclass(frozen=True)
class Timing:
    """Which device, precision and budget a throughput measurement uses."""

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 16
    warmup: int = 1
    runs: int = 5
    min_seconds: float = 0.0   # keep timing past `runs` until this much time has passed
    amp: str | None = None     # autocast to "bfloat16" or "float16" (the model stays in `dtype`)

    @classmethod
    def default(cls, device: str, dtype: str = "float32", amp: str | None = None) -> "Timing":
        """The paper's protocol on CUDA (batch 128); on CPU, a budget that keeps a 15-point sweep in minutes."""
        if device.startswith("cuda"):
            return cls(device, dtype, batch_size=128, warmup=10, runs=30, amp=amp)
        return cls(device, dtype, batch_size=16, warmup=1, runs=3, min_seconds=6.0, amp=amp)

    def autocast(self):
        """torch.autocast to `amp` on this device, or nothing."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=dtype_of(self.amp))


@dataclass(frozen=True)
class Throughput:
    img_s: float            # median over timed batches
    q1: float
    q3: float
    runs: int
    batch_size: int
    latency_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # p50, p90, p99 of milliseconds per batch
    memory: dict = field(default_factory=dict)  # see measure/memory.py

    @property
    def spread(self) -> float:
        """Interquartile range of img/s."""
        return self.q3 - self.q1


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import GtpcliError
        raise GtpcliError("--device cuda asked for, but torch sees no CUDA device")
    return device


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def measure(model: nn.Module, image_size: tuple[int, int], timing: Timing) -> Throughput:
    """img/s of `model` (already on the device, in the dtype) over random images."""
    x = torch.randn(timing.batch_size, 3, *image_size, device=timing.device, dtype=dtype_of(timing.dtype))
    sync = torch.cuda.synchronize if timing.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode(), timing.autocast():
        for _ in range(timing.warmup):
            model(x)
        sync()
        seconds: list[float] = []
        with memory.peak(timing.device) as peak:
            started = time.perf_counter()
            while len(seconds) < timing.runs or time.perf_counter() - started < timing.min_seconds:
                t0 = time.perf_counter()
                model(x)
                sync()
                seconds.append(time.perf_counter() - t0)
    rates = sorted(timing.batch_size / s for s in seconds)
    q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else (rates[0],) * 3
    return Throughput(statistics.median(rates), q1, q3, len(rates), timing.batch_size,
                      percentiles([s * 1e3 for s in seconds], (50, 90, 99)), peak)


def first_pass(model: nn.Module, image_size: tuple[int, int], timing: Timing) -> float:
    """Seconds of one forward pass, synchronised: for a compiled model, the pass that compiles it."""
    x = torch.randn(timing.batch_size, 3, *image_size, device=timing.device, dtype=dtype_of(timing.dtype))
    with torch.inference_mode(), timing.autocast():
        started = time.perf_counter()
        model(x)
        if timing.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started


def percentiles(values: list[float], which: tuple[int, ...]) -> tuple[float, ...]:
    """The given percentiles of `values`, linearly interpolated between order statistics (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return tuple(ordered[0] for _ in which)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return tuple(cuts[p - 1] if p < 100 else ordered[-1] for p in which)


@dataclass(frozen=True)
class Ratio:
    """A speed-up over a reference measured in interleaved rounds: its median and quartiles over rounds."""

    median: float
    q1: float
    q3: float
    rounds: int

    @property
    def wide(self) -> bool:
        """The rounds disagree by more than 10% of the median: the machine's speed moved under the measurement."""
        return (self.q3 - self.q1) > 0.1 * self.median


def interleaved(models: dict[str, nn.Module], image_size: tuple[int, int], timing: Timing,
                rounds: int) -> dict[str, list[float]]:
    """Seconds per batch of each model over `rounds` rounds, each round timing every model once (in a
    rotating order), so a slow phase of the machine hits all of them alike instead of one sweep point."""
    x = torch.randn(timing.batch_size, 3, *image_size, device=timing.device, dtype=dtype_of(timing.dtype))
    sync = torch.cuda.synchronize if timing.device.startswith("cuda") else (lambda: None)
    labels = list(models)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(timing.warmup):
                model(x)
        sync()
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                t0 = time.perf_counter()
                models[label](x)
                sync()
                seconds[label].append(time.perf_counter() - t0)
    return seconds


def ratio(reference: list[float], other: list[float]) -> Ratio:
    """Per-round speed-up reference time / other time, summarised over the rounds."""
    per_round = sorted(a / b for a, b in zip(reference, other))
    q1, _, q3 = statistics.quantiles(per_round, n=4, method="inclusive") if len(per_round) > 1 else (per_round[0],) * 3
    return Ratio(statistics.median(per_round), q1, q3, len(per_round))


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def fingerprint(timing: Timing, compile: str | None = None, seed: int | None = None) -> dict:
    """What a throughput figure depends on, recorded next to it (see measure/environment.py for the rest)."""
    import timm
    from timm.layers import use_fused_attn

    from .environment import facts

    if timing.device.startswith("cuda"):
        name = torch.cuda.get_device_name(timing.device)
    else:
        name = _cpu_name()
    return {
        "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version(),
        "device": timing.device, "device_name": name, "dtype": timing.dtype, "batch_size": timing.batch_size,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "fused_attn": bool(use_fused_attn()),
        "amp": timing.amp, "compile": compile, "seed": seed, **facts(timing.device),
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
