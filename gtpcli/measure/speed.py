"""Throughput the way the paper measures it: inference mode, warm-up, synchronised timing, median of
several timed batches with its spread."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Timing:
    """Which device, precision and budget a throughput measurement uses."""

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 16
    warmup: int = 1
    runs: int = 5
    min_seconds: float = 0.0   # keep timing past `runs` until this much time has passed

    @classmethod
    def default(cls, device: str, dtype: str = "float32") -> "Timing":
        """The paper's protocol on CUDA (batch 128); on CPU, a budget that keeps a 15-point sweep in minutes."""
        if device.startswith("cuda"):
            return cls(device, dtype, batch_size=128, warmup=10, runs=30)
        return cls(device, dtype, batch_size=16, warmup=1, runs=3, min_seconds=6.0)


@dataclass(frozen=True)
class Throughput:
    img_s: float            # median over timed batches
    q1: float
    q3: float
    runs: int
    batch_size: int

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
    with torch.inference_mode():
        for _ in range(timing.warmup):
            model(x)
        sync()
        seconds: list[float] = []
        started = time.perf_counter()
        while len(seconds) < timing.runs or time.perf_counter() - started < timing.min_seconds:
            t0 = time.perf_counter()
            model(x)
            sync()
            seconds.append(time.perf_counter() - t0)
    rates = sorted(timing.batch_size / s for s in seconds)
    q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else (rates[0],) * 3
    return Throughput(statistics.median(rates), q1, q3, len(rates), timing.batch_size)


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


def fingerprint(timing: Timing) -> dict:
    """What a throughput figure depends on, recorded next to it."""
    import timm
    from timm.layers import use_fused_attn

    if timing.device.startswith("cuda"):
        name = torch.cuda.get_device_name(timing.device)
    else:
        name = _cpu_name()
    return {
        "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version(),
        "device": timing.device, "device_name": name, "dtype": timing.dtype, "batch_size": timing.batch_size,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "fused_attn": bool(use_fused_attn()),
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
