"""Where the forward time goes: the PyTorch profiler over labelled stages of a patched model.

Labels come from the patched blocks (attention, MLP, the method's own stages) and from hooks put on
the patch embedding only while tracing, so a model that is not being traced pays nothing for them.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Collection
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler

from .. import methods as registry
from ..methods.blocks import LABELS

FORWARD = "forward"
STAGES = ("patch_embed", "attention", "mlp") + registry.stages()  # each method's own, from its module


@contextmanager
def labelled(model: nn.Module):
    """Turn on the patched blocks' stage labels and label the patch embedding and, in stock blocks (which
    label nothing themselves), attention (norm1 to its drop path) and the MLP (norm2 to its drop path), so
    the stock model's stages stand beside a method's: for the duration only."""
    open_labels = []
    spans = [(model.patch_embed, model.patch_embed, "patch_embed")]
    for block in getattr(model, "blocks", []):
        if getattr(block, "reduction", None) is None and all(hasattr(block, name) for name in
                                                             ("norm1", "drop_path1", "norm2", "drop_path2")):
            spans += [(block.norm1, block.drop_path1, "attention"), (block.norm2, block.drop_path2, "mlp")]
    hooks = []
    for first, last, name in spans:
        hooks.append(first.register_forward_pre_hook(lambda m, a, name=name: open_labels.append(_enter(name))))
        hooks.append(last.register_forward_hook(lambda m, a, out: open_labels.pop().__exit__(None, None, None)))
    LABELS["on"] = True
    try:
        yield
    finally:
        LABELS["on"] = False
        for hook in hooks:
            hook.remove()


@contextmanager
def quiet_native_stderr():
    """The profiler's C++ side prints start/stop notices on fd 2; keep them off the user's terminal."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters): nothing to hide
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _enter(name: str):
    label = record_function(name)
    label.__enter__()
    return label


def _activities(x: torch.Tensor) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])


def _step(model: nn.Module, x: torch.Tensor) -> None:
    with record_function(FORWARD):
        model(x)
    if x.is_cuda:
        torch.cuda.synchronize()


def stage_times(model: nn.Module, x: torch.Tensor, steps: int = 3, autocast=nullcontext) -> dict[str, float]:
    """Milliseconds per forward pass spent in each labelled stage, and in the whole forward."""
    with torch.inference_mode(), autocast(), labelled(model), quiet_native_stderr():
        model(x)  # warm-up outside the profile
        with profile(activities=_activities(x)) as prof:
            for _ in range(steps):
                _step(model, x)
    return per_step(prof.key_averages(), steps, x.is_cuda)


@dataclass
class Side:
    """One side of the profiled passes: `enter` puts `model` into its setting (a block swap, or the stock
    model), `x` is its input batch (a model at its own input size has its own)."""

    enter: Callable[[], object]
    model: nn.Module
    x: torch.Tensor


def interleaved(sides: dict[Any, Side], rounds: int, steps: int, autocast=nullcontext, seed: int = 0,
                starting: Callable[[int], None] = lambda round_: None) -> dict[Any, list[dict[str, float]]]:
    """Stage milliseconds of each side (the stock model, the methods) from `rounds` profiled passes of `steps`
    forwards each, the sides alternating in an order shuffled per round (the schedule of the timing loop),
    so a slow phase of the machine falls on all alike; `starting(r)` as round r (from 1) begins."""
    from .speed import schedule

    labels = list(sides)
    found: dict[Any, list[dict[str, float]]] = {label: [] for label in labels}
    for round_, order in enumerate(schedule(len(labels), rounds, seed), 1):
        starting(round_)
        for at in order:
            side = sides[labels[at]]
            side.enter()
            found[labels[at]].append(stage_times(side.model, side.x, steps, autocast))
    return found


def shares(passes: list[dict[str, float]]) -> tuple[float, list[dict[str, float]]]:
    """The forward time and each stage's share of it over profiled passes: each stage's median milliseconds
    (what no label covers as "other"), its share of their sum, and the quartiles of its per-pass shares."""
    from .speed import quartiles

    names = [name for name in dict.fromkeys(k for one in passes for k in one) if name != FORWARD]
    per_pass = [{**{name: one.get(name, 0.0) for name in names},
                 "other": max(one.get(FORWARD, 0.0) - sum(one.get(name, 0.0) for name in names), 0.0)} for one in passes]
    medians = {name: round(quartiles([one[name] for one in per_pass])[1], 3) for name in names + ["other"]}
    forward = sum(medians.values())  # of the rounded stages: the table's rows add up to it as printed
    stages = []
    for name, ms in medians.items():
        spread = quartiles([one[name] / sum(one.values()) if sum(one.values()) else 0.0 for one in per_pass])
        stages.append({"stage": name, "ms": ms, "share": round(ms / forward, 4) if forward else None,
                       "share_q1": round(spread[0], 4), "share_q3": round(spread[2], 4)})
    return round(forward, 3), stages


@dataclass
class AgainstStock:
    """A model's stage table beside the stock model's, from the same interleaved profiled passes, and where
    the ideal went between them (measure/gap.py)."""

    forward_ms: float
    stages: list[dict]
    stock_forward_ms: float
    stock_stages: list[dict]
    speedup: object  # speed.Ratio: the per-pass ratios of the forward times
    ideal_gap: dict


def against_stock(stock: Side, method: Side, macs: tuple[float, float], own_stages: Collection[str],
                  split: dict[str, tuple[int, int]] | None, rounds: int, steps: int, autocast=nullcontext,
                  seed: int = 0) -> AgainstStock:
    """Profile the stock model and `method` in interleaved passes and split the time `method` loses against
    its ideal (`macs`: the stock model's and the method's) into its parts: what `gtpcli trace` shows for one
    method, one implementation with `gtpcli compare`'s rows (`gap_against`). `split`: `stage_split`'s stage MACs."""
    passes = interleaved({"stock": stock, "method": method}, rounds, steps, autocast, seed)
    return gap_against(passes["stock"], passes["method"], macs, own_stages, split)


def gap_against(stock_passes: list[dict[str, float]], passes: list[dict[str, float]], macs: tuple[float, float],
                own_stages: Collection[str], split: dict[str, tuple[int, int]] | None) -> AgainstStock:
    """A model's profiled passes against the stock model's of the same rounds (pass i of each in round i):
    both stage tables, the per-round speed-up, and where the ideal went."""
    from .gap import where_the_ideal_went
    from .speed import ratio

    forward, stages = shares(passes)
    stock_forward, stock_stages = shares(stock_passes)
    faster = ratio([1 / p[FORWARD] for p in stock_passes], [1 / p[FORWARD] for p in passes])
    found = where_the_ideal_went(stage_ms(stock_stages), stage_ms(stages), *macs, own_stages, split)
    return AgainstStock(forward, stages, stock_forward, stock_stages, faster, found)


def stage_ms(stages: list[dict]) -> dict[str, float]:
    """A stage table as {stage: ms}."""
    return {s["stage"]: s["ms"] for s in stages}


def stage_split(stock: nn.Module, model: nn.Module, card=None) -> dict[str, tuple[int, int]] | None:
    """(stock, `model`) analytic MACs of attention and of the MLP: the stock model's blocks against `model`'s,
    under its method's token schedule (`card`) or, stock, at its own input size; None for a method with its own
    backbone cost or input-dependent counts (the gap then scales both stages by the whole model's MAC ratio)."""
    from ..cost.analytic import stage_macs
    from ..models.backbones import arch_of

    if card is not None and (card.adaptive or card.backbone_macs is not None):
        return None
    theirs = stage_macs(arch_of(stock), 0)
    ours = stage_macs(arch_of(model), list(model.reduction.removals) if card is not None else 0)
    return {stage: (theirs[stage], ours[stage]) for stage in theirs}


def per_step(events, steps: int, on_device: bool) -> dict[str, float]:
    """Milliseconds per forward pass under each stage label. On CUDA this is device time: the kernels
    launched under the label (the profiler adds a range's children's kernel time to its own), not the CPU
    time spent launching them, which is what CPU time measures there."""
    found = {e.key: e for e in events}
    time = device_us if on_device else (lambda e: e.cpu_time_total)
    return {name: time(found[name]) / steps / 1e3 for name in (FORWARD,) + STAGES if name in found}


def device_us(event, own: bool = False) -> float:
    """Kernel microseconds of a profiler event (with its children's, unless `own`): `device_time_total`,
    called `cuda_time_total` before torch 2.4."""
    for name in (("self_device_time_total", "self_cuda_time_total") if own else ("device_time_total", "cuda_time_total")):
        if hasattr(event, name):
            return getattr(event, name)
    return 0.0


@dataclass
class Trace:
    stage_ms: dict[str, float]
    top_ops: list[dict]
    tensorboard_dir: Path
    chrome_trace: Path


def record(model: nn.Module, x: torch.Tensor, out: Path, wait: int = 1, warmup: int = 1, active: int = 3,
           autocast=nullcontext) -> Trace:
    """Profile `active` forward passes after `wait` + `warmup` ones; write a TensorBoard profile
    directory (what torch-tb-profiler reads) and a Chrome-trace JSON (Perfetto, chrome://tracing).
    Times are device (kernel) time on CUDA, CPU time otherwise; `autocast` is entered around the passes."""
    out.mkdir(parents=True, exist_ok=True)
    tensorboard_dir, chrome = out / "tensorboard", out / "trace.json"
    before = set(tensorboard_dir.glob("*.pt.trace.json"))
    plan = schedule(wait=wait, warmup=warmup, active=active, repeat=1)
    with torch.inference_mode(), autocast(), labelled(model), quiet_native_stderr():
        with profile(activities=_activities(x), schedule=plan,
                     on_trace_ready=tensorboard_trace_handler(str(tensorboard_dir))) as prof:
            for _ in range(wait + warmup + active):
                _step(model, x)
                prof.step()
    written = sorted(set(tensorboard_dir.glob("*.pt.trace.json")) - before)
    shutil.copyfile(written[-1], chrome)  # the same Chrome-trace JSON, under a name Perfetto users expect
    averages = prof.key_averages()
    labels = set((FORWARD,) + STAGES)
    own = (lambda e: device_us(e, own=True)) if x.is_cuda else (lambda e: e.self_cpu_time_total)
    ops = sorted((e for e in averages if e.key not in labels and not e.key.startswith("ProfilerStep")),
                 key=own, reverse=True)[:10]
    top = [{"op": e.key, "self_ms": round(own(e) / active / 1e3, 3), "calls": e.count // active} for e in ops]
    return Trace(per_step(averages, active, x.is_cuda), top, tensorboard_dir, chrome)


def labels_in(path: Path) -> set[str]:
    """The stage labels a Chrome-trace JSON holds (for checking a written trace)."""
    events = json.loads(path.read_text()).get("traceEvents", [])
    return {e.get("name") for e in events} & set((FORWARD,) + STAGES)
