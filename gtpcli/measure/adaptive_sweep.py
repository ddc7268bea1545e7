"""One `gtpcli profile` row of an input-dependent method (TPC-ViT): its token counts come from images.

The model runs over the images (`--data`, or seeded random images, which say nothing about a trained
controller) and records, per image, the tokens entering each block. From those counts alone,
gtpcli/cost/adaptive.py gives E[GMACs], its spread, the cost at the mean counts and the per-block
distributions; fvcore checks the per-image MACs at batch 1 on a few of the images; each batching mode is
timed on the same images, with the MACs it executes next to the ideal ones.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Iterator

import torch

from .. import methods as registry
from ..cost import adaptive
from ..models import backbones
from . import accuracy, flops, speed

RANDOM_IMAGES = 64      # images behind a distribution when no --data is given
FVCORE_SAMPLE = 3       # images whose per-image MACs fvcore counts at batch 1
SAMPLE_FOR_TIMING = 32  # at least this many images in each timed pass (two batches when that is more)


def checkpoint_hparams(method: str, checkpoint) -> dict[str, Any] | None:
    """The method's hyperparameters saved in the checkpoint file (TPC: its `tpc` mapping), or None."""
    if checkpoint is None or method != "tpc":
        return None
    from ..methods.tpc.patch import checkpoint_hparams as read

    return read(checkpoint)


def untrained(method: str, checkpoint) -> str | None:
    """The one warning line for a learned controller run without its trained hyperparameters, or None."""
    if method != "tpc" or checkpoint_hparams(method, checkpoint) is not None:
        return None
    from ..methods.tpc.patch import UNTRAINED

    return UNTRAINED


def batches(model, cfg) -> tuple[Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor | None]]], str]:
    """A way to iterate (images, labels) in the sweep's batch size, and where the images come from."""
    size = backbones.image_size(model)
    if cfg.data is not None:
        loader = accuracy.data_loader(model, cfg.data, cfg.timing.batch_size, cfg.limit, size)

        def from_data():
            for images, labels, problems in loader:
                broken = [p for p in problems if p]
                if broken:
                    from ..errors import GtpcliError
                    raise GtpcliError(f"--data: cannot read image {broken[0]}; fix or remove it")
                yield images, labels
        return from_data, f"data: {cfg.data}"
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(RANDOM_IMAGES, 3, *size, generator=generator)

    def random_images():
        for start in range(0, RANDOM_IMAGES, cfg.timing.batch_size):
            yield images[start:start + cfg.timing.batch_size], None
    return random_images, adaptive.RANDOM_SOURCE


def last_trace(model):
    """What the patched model recorded in its last forward: `counts` (B, L), optionally `cls_halt` (B,).
    TPC keeps it on its controller (`model.tpc.last`), a block-level method on its Reduction."""
    holder = model.tpc if "tpc" in model._modules else getattr(model, "reduction", None)
    return holder.last


def run_images(model, source, device: str, dtype) -> dict[str, Any]:
    """Counts, [CLS] halting blocks and predictions over every image, and the first images kept for timing."""
    counts, useful, logits, labels, kept = [], [], [], [], []
    with torch.inference_mode():
        for images, targets in source():
            logits.append(model(images.to(device, dtype)).float().cpu())
            trace = last_trace(model)
            counts += trace.counts.tolist()
            useful += trace.cls_halt.tolist() if hasattr(trace, "cls_halt") else [None] * len(trace.counts)
            if targets is not None:
                labels.append(targets)
            if sum(len(k) for k in kept) < SAMPLE_FOR_TIMING:
                kept.append(images)
    found = {"counts": counts, "useful": useful, "sample": torch.cat(kept)}
    if labels:
        found["predictions"] = accuracy.Predictions(logits, labels, list(range(len(logits))))
    return found


def fvcore_check(model, cost: adaptive.Cost, sample: torch.Tensor, device: str, dtype) -> dict[str, Any]:
    """fvcore's MACs on the gathered path at batch 1 against the analytic per-image MACs of the same images."""
    gaps = []
    for image in sample[:FVCORE_SAMPLE]:
        image = image.unsqueeze(0).to(device, dtype)
        counted = flops.count_macs(model, image).macs
        with torch.inference_mode():
            model(image)
        analytic = adaptive.image_macs(cost, last_trace(model).counts[0].tolist())
        gaps.append(abs(counted - analytic) / analytic)
    return {"images": len(gaps), "max_relative_gap": max(gaps)}


def time_modes(model, sample: torch.Tensor, timing: speed.Timing) -> dict[str, dict[str, Any]]:
    """img/s of each batching mode: the whole sample per pass, in batches of 1 (single) or the sweep's batch
    size, the median over passes."""
    ctl = model.tpc if "tpc" in model._modules else model.reduction
    chosen = getattr(ctl, "batching", None)   # a method without packing: its own batched run is "padded"
    found = {}
    sync = torch.cuda.synchronize if timing.device.startswith("cuda") else (lambda: None)
    images = sample.to(timing.device, speed.dtype_of(timing.dtype))
    try:
        for mode in adaptive.MODES if chosen is not None else ("single", "padded"):
            size = 1 if mode == "single" else timing.batch_size
            if chosen is not None:
                ctl.batching = "padded" if mode == "single" else mode
            chunks = [images[start:start + size] for start in range(0, len(images), size)]
            with torch.inference_mode():
                for _ in range(timing.warmup):
                    for chunk in chunks:
                        model(chunk)
                sync()
                rates, started = [], time.perf_counter()
                while len(rates) < timing.runs or time.perf_counter() - started < timing.min_seconds:
                    t0 = time.perf_counter()
                    for chunk in chunks:
                        model(chunk)
                    sync()
                    rates.append(len(images) / (time.perf_counter() - t0))
            q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else (rates[0],) * 3
            found[mode] = {"img_s": round(statistics.median(rates), 2), "img_s_spread": round(q3 - q1, 2),
                           "batch_size": size, "runs": len(rates)}
    finally:
        if chosen is not None:
            ctl.batching = chosen
    return found


def measure_point(model, cfg, method: str, setting: dict[str, Any], hparams: dict[str, Any],
                  untrained_controller: bool) -> dict[str, Any]:
    """One adaptive row (the contract in gtpcli/cost/adaptive.py)."""
    from ..methods.patching import patch, unpatch

    card = registry.get(method)
    unpatch(model)
    patch(model, method, **hparams)
    arch = backbones.arch_of(model)
    cost = card.cost(arch, hparams)
    dtype = speed.dtype_of(cfg.timing.dtype)
    source, where = batches(model, cfg)
    seen = run_images(model, source, cfg.timing.device, dtype)
    value = card.resolved(hparams)[card.sweep_key]   # the point's own value, or what the hyperparameters gave
    row: dict[str, Any] = {
        "model": cfg.model, "method": method, "P": None, card.sweep_key: value, "sweep_key": card.sweep_key,
        "hparams": hparams, "setting": adaptive.point_label({card.sweep_key: value}),
        "params": sum(p.numel() for p in model.parameters()), "overhead_macs": 0,
        **adaptive.summarize(cost, seen["counts"], seen["useful"]),
        "counts_source": where, "untrained_controller": untrained_controller,
        "img_s": None, "img_s_spread": None, "speedup": None, "warnings": [],
    }
    row["macs"] = row["analytic_macs"] = row["gmacs"] * 1e9
    if "predictions" in seen:
        row |= accuracy.accuracy(seen["predictions"])
    if cfg.flops:
        row["fvcore_check"] = fvcore_check(model, cost, seen["sample"], cfg.timing.device, dtype)
        if row["fvcore_check"]["max_relative_gap"] > 1e-9:
            row["warnings"].append(f"fvcore differs from the per-image analytic MACs by up to "
                                   f"{row['fvcore_check']['max_relative_gap']:.2%} at batch 1")
    sample_counts = seen["counts"][:len(seen["sample"])]
    row["batching"] = {mode: adaptive.batching(cost, sample_counts, mode, cfg.timing.batch_size)
                       for mode in adaptive.MODES}
    if cfg.speed:
        for mode, timed in time_modes(model, seen["sample"], cfg.timing).items():
            row["batching"][mode] |= timed
        main = row["batching"][hparams.get("batching") or "padded"]
        row |= {"img_s": main["img_s"], "img_s_spread": main["img_s_spread"], "batch_size": main["batch_size"],
                "runs": main["runs"]}
    return row

