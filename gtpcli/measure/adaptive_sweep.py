"""The per-image part of an input-dependent method's row (TPC-ViT, ATS): its token counts come from images.

The model runs over the images (`--data`, or seeded random images, which say nothing about a trained
controller) and records, per image, the tokens entering each block. From those counts alone,
gtpcli/cost/adaptive.py gives E[GMACs], its spread, the cost at the mean counts and the per-block
distributions; fvcore checks the per-image MACs at batch 1 on a few of the images; each batching mode's
executed MACs stand next to the ideal ones. Timing is not here: every point, this one included, is timed
in the same interleaved rounds (measure/throughput.py), each batching mode on the first images counted.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from ..cost import adaptive
from ..methods.patching import controller
from ..models import backbones
from . import accuracy, flops, speed

RANDOM_IMAGES = 64      # images behind a distribution when no --data is given
FVCORE_SAMPLE = 3       # images whose per-image MACs fvcore counts at batch 1
SAMPLE_FOR_TIMING = 32  # at least this many images in each timed pass (two batches when that is more)


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
    """What the patched model recorded in its last forward: `counts` (B, L), optionally `cls_halt` (B,)."""
    return controller(model).last


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


def timing_sample(model, cfg) -> torch.Tensor:
    """The images each batching mode is timed on: the first ones the counts came from (as `run_images` keeps
    them), on the device and in the dtype."""
    source, _ = batches(model, cfg)
    kept = []
    for images, _ in source():
        if sum(len(k) for k in kept) >= SAMPLE_FOR_TIMING:
            break
        kept.append(images)
    return torch.cat(kept).to(cfg.timing.device, speed.dtype_of(cfg.timing.dtype))


def timed_modes(card, hparams: dict[str, Any], batch_size: int) -> list[tuple[str, dict[str, Any], int]]:
    """(mode, the hyperparameters that run it, images per batch) of every batching mode the method runs: one
    image at a time, and each choice of its `batching` hyperparameter (a method without one: padded)."""
    choices = next((h.choices for h in card.hparams if h.name == "batching"), None)
    with_mode = (lambda mode: {**hparams, "batching": mode}) if choices else (lambda mode: hparams)
    return [("single", with_mode("padded"), 1)] + [(mode, with_mode(mode), batch_size) for mode in choices or ("padded",)]


def main_mode(hparams: dict[str, Any]) -> str:
    """The batching mode whose img/s is the row's own: the one the hyperparameters choose."""
    return hparams.get("batching") or "padded"


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


def image_costs(model, cfg, card, hparams: dict[str, Any]) -> dict[str, Any]:
    """What an input-dependent point costs, from the images (the contract in gtpcli/cost/adaptive.py), on
    the model already patched with it: counts, E[GMACs] and distributions, accuracy when the images have
    labels, fvcore's check, each batching mode's executed MACs."""
    arch = backbones.arch_of(model)
    cost = card.cost(arch, hparams)
    dtype = speed.dtype_of(cfg.timing.dtype)
    source, where = batches(model, cfg)
    seen = run_images(model, source, cfg.timing.device, dtype)
    value = card.resolved(hparams)[card.sweep_key]   # the point's own value, or what the hyperparameters gave
    found: dict[str, Any] = {
        card.sweep_key: value, "sweep_key": card.sweep_key, "setting": adaptive.point_label({card.sweep_key: value}),
        "overhead_macs": 0, **adaptive.summarize(cost, seen["counts"], seen["useful"]), "counts_source": where,
        "untrained_controller": card.untrained is not None and card.saved_hparams(cfg.checkpoint) is None,
        "warnings": [],
    }
    found["macs"] = found["analytic_macs"] = found["gmacs"] * 1e9
    if "predictions" in seen:
        found |= accuracy.accuracy(seen["predictions"])
    if cfg.flops:
        found["fvcore_check"] = fvcore_check(model, cost, seen["sample"], cfg.timing.device, dtype)
        if found["fvcore_check"]["max_relative_gap"] > 1e-9:
            found["warnings"].append(f"fvcore differs from the per-image analytic MACs by up to "
                                     f"{found['fvcore_check']['max_relative_gap']:.2%} at batch 1")
    sample_counts = seen["counts"][:len(seen["sample"])]
    found["batching"] = {mode: adaptive.batching(cost, sample_counts, mode, cfg.timing.batch_size)
                         for mode in adaptive.MODES}
    return found
