"""Throughput as gtpcli measures it: every configuration of a comparison timed in interleaved rounds.

Why rounds: the speed of a machine moves (other processes, frequency scaling) on a scale of seconds. Timing
the stock model first and each reduced model after it puts that drift into the speed-ups. Here each round
times every configuration for a short, equal slice (a few batches), in an order shuffled per round, so a slow
phase of the machine hits them all alike; img/s is the median over rounds, a speed-up the median of the
per-round ratios, and their quartiles say how well the rounds agree. One round is the sequential order
(every batch of one configuration, then the next, in the order given), kept for comparison. This module
holds the one timing loop of gtpcli (`rounds`) and its statistics; docs/timing.md describes the protocol.
"""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import memory

DISAGREE = 0.10  # a speed-up whose per-round quartiles lie further apart than this share of it is flagged


@dataclass(frozen=True)
class Timing:
    """Which device, precision and budget a throughput measurement uses. `runs` timed batches per
    configuration are spread over `rounds` rounds (never more rounds than batches)."""

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 16
    warmup: int = 1
    runs: int = 20
    rounds: int = 10
    amp: str | None = None     # autocast to "bfloat16" or "float16" (the model stays in `dtype`)

    @classmethod
    def default(cls, device: str, dtype: str = "float32", amp: str | None = None) -> "Timing":
        """The paper's protocol on CUDA (batch 128); on CPU a budget that keeps `gtpcli profile deit_s
        --P 0..14` (16 configurations) at 9-10 minutes on 2 idle cores, by its measured CPU time
        (docs/timing.md)."""
        if device.startswith("cuda"):
            return cls(device, dtype, batch_size=128, warmup=10, runs=30, rounds=10, amp=amp)
        return cls(device, dtype, batch_size=16, warmup=1, runs=20, rounds=10, amp=amp)

    @property
    def timed_rounds(self) -> int:
        return max(1, min(self.rounds, self.runs))

    @property
    def slice(self) -> int:
        """Batches of each configuration per round."""
        return math.ceil(self.runs / self.timed_rounds)

    @property
    def sequential(self) -> bool:
        return self.timed_rounds == 1

    def budget(self, runs: int | None = None, rounds: int | None = None) -> "Timing":
        """This timing with the `--runs` (timed batches per configuration) and `--rounds` a user gave: rounds
        alone keep the batches unless there would be fewer than rounds; both: never more rounds than batches."""
        if runs is not None and rounds is not None and rounds > runs:
            from ..errors import GtpcliError
            raise GtpcliError(f"{rounds} rounds time each configuration at least once per round: give at least "
                              f"{rounds} timed batches (runs), not {runs}")
        return replace(self, runs=runs if runs is not None else max(self.runs, rounds or 0),
                       rounds=rounds if rounds is not None else self.rounds)

    def autocast(self):
        """torch.autocast to `amp` on this device, or nothing."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=dtype_of(self.amp))


@dataclass
class Setup:
    """One configuration in the rounds. `enter()` puts the shared model into it (untimed: a block swap, never a
    copy of the weights); `run(batch)` on each of `batches` is one pass; a batch's len() is its images."""

    label: str
    run: Callable[[Any], Any]
    batches: Sequence[Any]
    enter: Callable[[], Any] = lambda: None

    @property
    def images(self) -> int:
        return sum(len(batch) for batch in self.batches)


@dataclass
class Timed:
    """What the rounds recorded for one setup: seconds of every timed batch, round by round."""

    seconds: list[list[float]] = field(default_factory=list)  # per round, per timed batch
    images: list[int] = field(default_factory=list)           # per timed batch of a round (the same each round)
    memory: dict = field(default_factory=dict)                # peak memory over its first slice (measure/memory.py)

    def round_rates(self) -> list[float]:
        """img/s of each round's slice."""
        return [sum(self.images) / sum(seconds) for seconds in self.seconds]

    def batch_rates(self) -> list[float]:
        """img/s of every timed batch, in the order they ran."""
        return [n / s for seconds in self.seconds for n, s in zip(self.images, seconds)]


def schedule(count: int, rounds: int, seed: int = 0) -> list[list[int]]:
    """Which of `count` configurations runs when: every one once per round, in an order shuffled per round
    (seeded, so a run can be replayed); one round keeps the order given, the sequential order."""
    if rounds == 1:
        return [list(range(count))]
    shuffler = random.Random(seed)
    order = []
    for _ in range(rounds):
        one = list(range(count))
        shuffler.shuffle(one)
        order.append(one)
    return order


def rounds(setups: Sequence[Setup], timing: Timing, seed: int = 0, clock: Callable[[], float] = time.perf_counter,
           on_round: Callable[[int, dict[str, Timed]], None] | None = None) -> dict[str, Timed]:
    """The one timing loop of gtpcli. Each setup is warmed up on its own (`timing.warmup` passes), then
    `timing.timed_rounds` rounds each time every setup for one slice: as many whole passes as cover
    `timing.slice` batches of `timing.batch_size` images. `on_round(done, timed)` after each round lets the
    caller keep what has been measured so far."""
    sync = synchronizer(timing.device)
    passes = {s.label: max(1, math.ceil(timing.slice * timing.batch_size / s.images)) for s in setups}
    timed = {s.label: Timed() for s in setups}

    def one_pass(setup: Setup, seconds: list[float] | None = None) -> None:
        for batch in setup.batches:
            started = clock()
            setup.run(batch)
            sync()
            if seconds is not None:
                seconds.append(clock() - started)

    for setup in setups:
        setup.enter()
        with running(timing):
            for _ in range(timing.warmup):
                one_pass(setup)
    for done, order in enumerate(schedule(len(setups), timing.timed_rounds, seed), start=1):
        for at in order:
            setup, found = setups[at], timed[setups[at].label]
            setup.enter()
            seconds: list[float] = []
            with memory.peak(timing.device) if not found.seconds else nullcontext({}) as peak, running(timing):
                for _ in range(passes[setup.label]):
                    one_pass(setup, seconds)
            if not found.seconds:
                found.memory = dict(peak)
                found.images = [len(batch) for _ in range(passes[setup.label]) for batch in setup.batches]
            found.seconds.append(seconds)
        if on_round is not None:
            on_round(done, timed)
    return timed


@contextmanager
def running(timing: Timing):
    """What every timed pass runs under: inference mode, and the autocast asked for."""
    with torch.inference_mode(), timing.autocast():
        yield


def synchronizer(device: str) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA runs asynchronously); nothing on CPU."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def first_pass(setup: Setup, timing: Timing, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one synchronised pass of an entered setup: for a compiled model, the pass that compiles it."""
    sync = synchronizer(timing.device)
    with running(timing):
        started = clock()
        for batch in setup.batches:
            setup.run(batch)
        sync()
        return clock() - started


# --- statistics over the rounds -------------------------------------------------------------------------

def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), interpolated between order statistics as numpy does."""
    if len(values) == 1:
        return (values[0],) * 3
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


@dataclass(frozen=True)
class Throughput:
    """img/s of one setup: the median over rounds with its quartiles (in one round, over its batches)."""

    img_s: float
    q1: float
    q3: float
    rounds: int
    runs: int               # timed batches
    batch_size: int
    latency_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # p50, p90, p99 of milliseconds per batch
    memory: dict = field(default_factory=dict)  # see measure/memory.py
    round_img_s: tuple[float, ...] = ()

    @property
    def spread(self) -> float:
        """Interquartile range of img/s."""
        return self.q3 - self.q1


def throughput(timed: Timed, batch_size: int) -> Throughput:
    rates = timed.batch_rates() if len(timed.seconds) == 1 else timed.round_rates()
    q1, median, q3 = quartiles(rates)
    every = [s * 1e3 for seconds in timed.seconds for s in seconds]
    return Throughput(median, q1, q3, len(timed.seconds), len(every), batch_size,
                      percentiles(every, (50, 90, 99)), timed.memory, tuple(timed.round_rates()))


@dataclass(frozen=True)
class Ratio:
    """A speed-up over a reference timed in the same rounds: the median of the per-round ratios and their
    quartiles (None in one round: the sequential order has no rounds to compare)."""

    median: float
    q1: float | None
    q3: float | None
    rounds: int

    @property
    def disagree(self) -> bool | None:
        """The rounds disagree: their quartiles lie more than DISAGREE of the median apart."""
        return None if self.q1 is None else (self.q3 - self.q1) > DISAGREE * self.median


def ratio(reference: Sequence[float], other: Sequence[float]) -> Ratio:
    """How much faster `other` ran than `reference`, from their img/s round by round (the same rounds);
    one round: the plain ratio, without quartiles."""
    if len(reference) != len(other) or not reference:
        raise ValueError("a per-round ratio needs both sides timed in the same rounds")
    if len(reference) == 1:
        return Ratio(other[0] / reference[0], None, None, 1)
    q1, median, q3 = quartiles([b / a for a, b in zip(reference, other)])
    return Ratio(median, q1, q3, len(reference))


def speedup(reference: Timed, other: Timed) -> Ratio:
    """`other` over `reference` from one run of `rounds`: per-round ratios, or in the sequential order the
    ratio of the two medians over batches."""
    if len(reference.seconds) == 1:
        return Ratio(statistics.median(other.batch_rates()) / statistics.median(reference.batch_rates()), None, None, 1)
    return ratio(reference.round_rates(), other.round_rates())


def measure(model: nn.Module, image_size: tuple[int, int], timing: Timing) -> Throughput:
    """img/s of one model (already on the device, in the dtype) over a random batch, through `rounds`."""
    x = torch.randn(timing.batch_size, 3, *image_size, device=timing.device, dtype=dtype_of(timing.dtype))
    timed = rounds([Setup("model", model, [x])], timing)
    return throughput(timed["model"], timing.batch_size)


def percentiles(values: list[float], which: tuple[int, ...]) -> tuple[float, ...]:
    """The given percentiles of `values`, linearly interpolated between order statistics (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return tuple(ordered[0] for _ in which)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return tuple(cuts[p - 1] if p < 100 else ordered[-1] for p in which)


# --- the device and what a figure depends on -------------------------------------------------------------

def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import GtpcliError
        raise GtpcliError("--device cuda asked for, but torch sees no CUDA device")
    return device


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


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
        "amp": timing.amp, "compile": compile, "seed": seed, "rounds": timing.timed_rounds,
        "batches_per_round": timing.slice, "disagree_margin": DISAGREE, **facts(timing.device),
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
