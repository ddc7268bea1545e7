"""The glue of `gtpcli trace`: a patched model under the profiler, and a summary built as data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import analytic as A
from . import methods as registry
from .config import RunConfig
from .errors import GtpcliError


def trace_result(run: RunConfig, out: Path) -> dict[str, Any]:
    """Trace one (method, P) of `run` (P defaults to 8, the method to gtp), writing the traces under `out`."""
    import torch

    from . import backbones, options, sweep
    from .profile_command import hparam_overrides
    from .measure import speed, trace
    from .ranges import parse_values

    options.device(run.device)
    method = options.methods(run.method if run.method is not None else "gtp", single=True)[0]
    card = registry.get(method)
    if run.P is None and card.schedule is not None:  # EViT, Evo-ViT, ATS: their own schedule, not a P
        P = None
    else:
        Ps = parse_values(run.P if run.P is not None else "8", "--P")
        if len(Ps) != 1:
            raise GtpcliError(f"--P: trace takes one value, got {run.P!r}")
        P = options.at_least(Ps[0], 0, "--P")
    for flag, value in (("--steps", run.steps), ("--batch-size", run.batch_size), ("--img-size", run.img_size)):
        options.positive(value, flag)
    profile, timm_name = backbones.resolve(run.model)
    device = speed.resolve_device(run.device)
    batch = run.batch_size if run.batch_size is not None else speed.Timing.default(device).batch_size
    if run.checkpoint is not None and not run.checkpoint.is_file():
        raise GtpcliError(f"checkpoint not found: {run.checkpoint}")
    model = backbones.create(timm_name, run.checkpoint, **backbones.constructor_kwargs(profile, run.img_size))
    hparams = {**(profile.hparams_for(method, P) if profile else {}), **hparam_overrides(run, [method])[method]}
    sweep.apply(model, method, P, hparams)
    model.to(device)
    x = torch.randn(batch, 3, *backbones.image_size(model), device=device)
    try:
        recorded = trace.record(model, x, out, active=run.steps)
    except OSError as exc:
        raise GtpcliError(f"--out {out}: cannot write the trace ({exc.strerror or exc}: {exc.filename or out})") from None

    arch = backbones.arch_of(model)
    if card.adaptive:  # the traced images' own counts: their mean per-image MACs, all of it the backbone's
        from .measure import adaptive

        cost = card.cost(arch, hparams)
        counts = model.reduction.last.counts.tolist()
        backbone, own = round(sum(adaptive.image_macs(cost, c) for c in counts) / len(counts)), 0
    else:
        removals = model.reduction.removals
        backbone = sum(registry.backbone_macs(arch, method, removals, hparams).values())
        own = A.implemented_overhead(arch, method, removals, hparams)
    forward = recorded.stage_ms.get(trace.FORWARD, 0.0)
    stages = [{"stage": name, "ms": round(ms, 3), "share": round(ms / forward, 4) if forward else None}
              for name, ms in recorded.stage_ms.items() if name != trace.FORWARD]
    other = forward - sum(s["ms"] for s in stages)
    stages.append({"stage": "other", "ms": round(other, 3), "share": round(other / forward, 4) if forward else None})
    method_time = sum(s["ms"] for s in stages if s["stage"].startswith(method + "."))
    return {
        "model": profile.name if profile else timm_name, "method": method, "P": P,
        "setting": getattr(model.reduction, "variant_label", None), "device": device,
        "batch_size": batch, "forward_ms": round(forward, 3), "stages": stages,
        "method_time_share": round(method_time / forward, 4) if forward else None,
        "method_macs_share": round(own / (backbone + own), 4),
        # far above 1: the method's own stages are memory- or launch-bound, not compute-bound
        "time_per_mac_ratio": round((method_time / forward) / (own / (backbone + own)), 1) if own and forward else None,
        "method_macs": own, "total_macs": backbone + own,
        "top_ops": recorded.top_ops,
        "tensorboard_dir": str(recorded.tensorboard_dir), "chrome_trace": str(recorded.chrome_trace),
        "rows": stages, "config": run.record(),
    }
