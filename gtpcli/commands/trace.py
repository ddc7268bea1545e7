"""The glue of `gtpcli trace`: a patched model under the profiler, and a summary built as data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import methods as registry
from ..config.run import RunConfig
from ..errors import GtpcliError


@dataclass
class Patched:
    """The model of a trace run, patched with its one (method, P)."""

    model: Any
    method: str
    P: int | None
    hparams: dict[str, Any]
    name: str        # the profile's name, or the timm name
    device: str
    batch: int
    timing: Any      # speed.Timing: the device, the cast (dtype) and the autocast (amp) of the trace


def patched_model(run: RunConfig) -> Patched:
    """`run`'s model patched with its method at its one P (8 and gtp unless given), every option checked."""
    from ..config import options
    from ..measure import speed, sweep
    from ..models import backbones
    from .profile import hparam_overrides

    options.device(run.device)
    options.dtype(run.dtype)
    amp = options.amp(run.amp, run.dtype)
    method = options.methods(run.method if run.method is not None else "gtp", single=True)[0]
    card = registry.get(method)
    if run.P is None and card.schedule is not None:  # EViT, Evo-ViT, ATS: their own schedule, not a P
        P = None
    else:
        P = options.one(run.P if run.P is not None else "8", "--P", 0)
    batch, size = options.one(run.batch_size, "--batch-size", 1), options.one(run.img_size, "--img-size", 1)
    options.positive(run.steps, "--steps")
    profile, timm_name = backbones.resolve(run.model)
    device = speed.resolve_device(run.device)
    batch = batch if batch is not None else speed.Timing.default(device).batch_size
    if run.pretrained and run.checkpoint is not None:
        raise GtpcliError("give --pretrained (timm's published weights) or --checkpoint FILE, not both")
    if run.checkpoint is not None and not run.checkpoint.is_file():
        raise GtpcliError(f"checkpoint not found: {run.checkpoint}")
    model = backbones.create(timm_name, run.checkpoint, pretrained=run.pretrained,
                             **backbones.constructor_kwargs(profile, size))
    given = hparam_overrides(run, [method])
    options.used_by_P(run.P is not None, [method], given, "leave out --P to trace that schedule")
    hparams = {**(profile.hparams_for(method, P) if profile else {}), **given[method]}
    hparams = {**(card.saved_hparams(run.checkpoint) or {}), **hparams}  # a trained method's own (TPC's mapping) under the command line's
    sweep.apply(model, method, P, hparams)
    timing = speed.Timing(device, run.dtype, batch_size=batch, amp=amp)
    return Patched(model.to(device, speed.dtype_of(run.dtype)), method, P, hparams,
                   profile.name if profile else timm_name, device, batch, timing)


TRACE_ROUNDS = 3  # interleaved profiled passes of the stock model and of the method, by default


def trace_result(run: RunConfig, out: Path) -> dict[str, Any]:
    """Trace one (method, P) of `run` (P defaults to 8, the method to gtp), writing the traces under `out`; the
    stage shares come from interleaved profiled passes of the stock model and the method (`--rounds`)."""
    import torch

    from ..config import options
    from ..cost import analytic
    from ..measure import speed, trace
    from ..methods.patching import attach
    from ..models import backbones

    rounds = run.rounds if run.rounds is not None else TRACE_ROUNDS
    options.at_least(rounds, 1, "--rounds")
    patched = patched_model(run)
    model, method, P, hparams, device, batch = (patched.model, patched.method, patched.P, patched.hparams,
                                                patched.device, patched.batch)
    card = registry.get(method)
    x = torch.randn(batch, 3, *backbones.image_size(model), device=device, dtype=speed.dtype_of(run.dtype))
    try:
        recorded = trace.record(model, x, out, active=run.steps, autocast=patched.timing.autocast)
    except OSError as exc:
        raise GtpcliError(f"--out {out}: cannot write the trace ({exc.strerror or exc}: {exc.filename or out})") from None
    backbone, own = _macs(model, card, method, hparams)  # of the traced images, before the stock passes
    setting = adaptive_setting(card, hparams) if card.adaptive else getattr(model.reduction, "variant_label", None)
    arch = backbones.arch_of(model)
    stock_macs = sum(analytic.backbone_macs(arch, [0] * arch.L).values())
    stock = trace.Side(attach(model, None), model, x)
    reduced = trace.Side(attach(model, method, P, hparams), model, x)  # patched again: its token schedule
    found = trace.against_stock(stock, reduced, (stock_macs, backbone + own), card.stages,
                                trace.stage_split(model, model, card), rounds, run.steps, patched.timing.autocast,
                                run.seed)
    forward, stages, faster = found.forward_ms, found.stages, found.speedup
    method_time = sum(s["ms"] for s in stages if s["stage"].startswith(method + "."))
    return {
        "model": patched.name, "method": method, "P": None if card.adaptive else P,
        "setting": setting, "device": device,
        "batch_size": batch, "dtype": run.dtype, "amp": patched.timing.amp,
        "time": "device (CUDA kernels under each label)" if device.startswith("cuda") else "CPU",
        "rounds": rounds, "steps": run.steps,
        "forward_ms": forward, "stages": stages,
        "stock_forward_ms": found.stock_forward_ms, "stock_stages": found.stock_stages,
        "forward_speedup": round(faster.median, 3), "forward_speedup_q1": _rounded(faster.q1),
        "forward_speedup_q3": _rounded(faster.q3),
        "method_time_share": round(method_time / forward, 4) if forward else None,
        "method_macs_share": round(own / (backbone + own), 4),
        # far above 1: the method's own stages are memory- or launch-bound, not compute-bound
        "time_per_mac_ratio": round((method_time / forward) / (own / (backbone + own)), 1) if own and forward else None,
        "method_macs": own, "total_macs": backbone + own, "stock_macs": stock_macs,
        "ideal_gap": found.ideal_gap,
        "top_ops": recorded.top_ops,
        "tensorboard_dir": str(recorded.tensorboard_dir), "chrome_trace": str(recorded.chrome_trace),
        "rows": stages, "config": run.record(),
    }


def _macs(model, card, method: str, hparams: dict[str, Any]) -> tuple[float, int]:
    """(the backbone's MACs, the method's own) of the patched model, analytic; an input-dependent method's from
    the counts of the images it ran last (their mean per-image MACs, all of them the backbone's)."""
    from ..models import backbones

    arch = backbones.arch_of(model)
    if card.adaptive:
        from ..cost import adaptive
        from ..measure.adaptive_sweep import last_trace

        cost = card.cost(arch, hparams)
        counts = last_trace(model).counts.tolist()
        return round(sum(adaptive.image_macs(cost, c) for c in counts) / len(counts)), 0
    removals = model.reduction.removals
    return (sum(registry.backbone_macs(arch, method, removals, hparams).values()),
            registry.implemented_overhead(arch, method, removals, hparams))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def similarity_result(run: RunConfig) -> dict[str, Any]:
    """Fig. 6's over-smoothing as data: per block, the average cosine similarity between the image tokens of
    the stock model and of the reduced one, on `run.data` (the seed-0 `--limit` subset) or random images."""
    import torch

    from ..measure import accuracy, similarity
    from ..methods.patching import unpatch
    from ..models import backbones

    if run.limit is not None and run.data is None:
        raise GtpcliError("--limit N needs --data DIR")
    patched = patched_model(run)
    model = patched.model
    size = backbones.image_size(model)
    if run.data is not None:
        accuracy.check_folder(run.data, fidelity=True)
        loader = accuracy.data_loader(model, run.data, patched.batch, run.limit, size, fidelity=True)  # images only
        batches = []
        for images, _, problems in loader:
            broken = [problem for problem in problems if problem]
            if broken:
                raise GtpcliError(f"--data: cannot read image {broken[0]}; fix or remove it")
            batches.append(images.to(patched.device, _dtype(run)))
        source = f"data: {run.data}" + (f" (seed-0 subset of {run.limit})" if run.limit else "")
    else:
        generator = torch.Generator().manual_seed(0)
        batches = [torch.randn(patched.batch, 3, *size, generator=generator).to(patched.device, _dtype(run))]
        source = "random images (means little for trained weights: give --data)"
    prefix = backbones.arch_of(model).prefix
    reduced = similarity.per_block(model, batches, prefix)
    tokens = getattr(model.reduction, "removals", None)
    unpatch(model)
    stock = similarity.per_block(model, batches, prefix)
    rows = [{"block": at + 1, "stock": s, patched.method: r, "difference": round(r - s, 6)}
            for at, (s, r) in enumerate(zip(stock, reduced))]
    return {"model": patched.name, "method": patched.method, "P": patched.P, "hparams": patched.hparams,
            "images": sum(b.shape[0] for b in batches), "images_source": source, "removals": tokens,
            "mean_stock": round(sum(stock) / len(stock), 6), f"mean_{patched.method}": round(sum(reduced) / len(reduced), 6),
            "rows": rows, "config": run.record()}


def _dtype(run: RunConfig):
    from ..measure.speed import dtype_of
    return dtype_of(run.dtype)


def adaptive_setting(card, hparams: dict[str, Any]) -> str:
    """"delta=0.01": the point of an input-dependent method that was traced."""
    from ..cost.adaptive import point_label

    return point_label({card.sweep_key: card.resolved(hparams)[card.sweep_key]})
