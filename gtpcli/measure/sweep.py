"""`gtpcli profile` as data: sweep P over a backbone for each method, one plain row per point.

The stock timm model is measured first, in the same run, so every speed-up is a ratio of two figures
taken under the same conditions. Each finished row is handed to `on_row` at once (the CLI saves it),
so an interrupted sweep keeps what it measured and can resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .. import methods as registry
from ..cost import analytic as A
from ..cost.adaptive import point_label
from ..distributed import World
from ..errors import GtpcliError
from ..methods.patching import METHODS, patch, unpatch
from ..models import backbones
from ..models.profiles import Profile
from . import accuracy, compiled, flops, memory, speed

STOCK = "stock"
MACS_TOLERANCE = 0.01  # counted vs analytic, and fvcore vs FlopCounterMode
RANDOM_WEIGHTS_SEED = 0  # without a checkpoint, so that processes of one torchrun run measure one model
NOISY = 0.2  # an IQR above this share of the median img/s is flagged


@dataclass
class SweepConfig:
    model: str
    timm_name: str
    profile: Profile | None
    methods: list[str]
    Ps: list[int]
    timing: speed.Timing
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)  # command-line overrides per method
    checkpoint: Path | None = None
    strict: bool = True
    img_size: int | None = None
    flops: bool = True
    speed: bool = True
    data: Path | None = None        # ImageFolder (or flat folder) for accuracy / fidelity
    limit: int | None = None
    fidelity: bool = False
    pretrained: bool = False        # timm's published weights for timm_name (through its hub)
    compile: str | None = None      # torch.compile mode, or None for eager
    working_batch: int | None = None  # set when out-of-memory halved the batch: later points start there
    seed: int = 0                   # torch's seed before each point is timed (random weights have their own fixed seed)
    bins: list[tuple] | None = None  # --bins paper: (method, P, setting, nominal GMACs), see paper_bins.points
    shard_points: bool = False      # under torchrun: whole points per process, instead of images
    class_map: Path | None = None   # --data's class names to the head's indices (timm's .txt class map)
    sweeps: dict[str, list] = field(default_factory=dict)  # adaptive methods' own axes: {"delta": [0.01, ...]}

    def points(self) -> list[tuple[str, int | None, dict[str, Any], float | None]]:
        """(method, P, the point's own setting, its GMACs bin), the stock model first. An input-dependent
        method has no P: its points are the values of its own axis (TPC: delta), its default without one."""
        if self.bins is not None:
            return [(STOCK, 0, {}, None)] + list(self.bins)
        swept = []
        for m in self.methods:
            card = registry.get(m)
            if card.adaptive:
                values = self.sweeps.get(card.sweep_key)  # none given: the profile's, checkpoint's or --hp value
                swept += [(m, None, {card.sweep_key: value}, None) for value in values] if values else [(m, None, {}, None)]
            else:
                swept += [(m, P, {}, None) for P in self.Ps]
        return [(STOCK, 0, {}, None)] + swept

    def hparams_for(self, method: str, P: int | None, setting: dict[str, Any] | None = None) -> dict[str, Any]:
        """The profile's values, then (an adaptive method's) those saved in the checkpoint file, then the
        command line, then the point's own setting."""
        chosen = self.profile.hparams_for(method, P) if self.profile else {}
        saved = {}
        if method in registry.REGISTRY and registry.get(method).adaptive:
            from .adaptive_sweep import checkpoint_hparams
            saved = checkpoint_hparams(method, self.checkpoint) or {}
        found = {**chosen, **saved, **self.hparams.get(method, {}), **(setting or {})}
        return {key: list(v) if isinstance(v, tuple) else v for key, v in found.items()}  # as JSON gives it back


def build(cfg: SweepConfig) -> torch.nn.Module:
    """The backbone, checked against every sweep point before any measuring starts."""
    for method in cfg.methods:
        if method not in METHODS:
            raise GtpcliError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)  # random weights: the same model in every run and every process
        model = backbones.create(cfg.timm_name, cfg.checkpoint, cfg.strict, cfg.pretrained,
                                 **backbones.constructor_kwargs(cfg.profile, cfg.img_size))
    for method, P, setting, _ in cfg.points()[1:]:
        apply(model, method, P, cfg.hparams_for(method, P, setting))
    unpatch(model)
    return model.to(cfg.timing.device, speed.dtype_of(cfg.timing.dtype))


def apply(model, method: str, P: int | None, hparams: dict[str, Any]) -> None:
    """Patch the model; an impossible P or a bad hyperparameter is the user's error, said in one line.
    An input-dependent method takes no P (its point is in `hparams`)."""
    adaptive = registry.get(method).adaptive
    try:
        patch(model, method, **hparams) if adaptive else patch(model, method, P=P, **hparams)
    except (ValueError, TypeError) as exc:
        raise GtpcliError(f"{method}: {exc}" if adaptive else f"{method} at P={P}: {exc}") from None


def measure_point(model, cfg: SweepConfig, method: str, P: int | None, warn: Callable[[str], None],
                  quality: Callable[[Any], dict] = lambda model: {}, setting: dict[str, Any] | None = None,
                  bin_gmacs: float | None = None) -> dict[str, Any]:
    """One row: token schedule, counted and analytic MACs, throughput, and accuracy when data is given."""
    hparams = cfg.hparams_for(method, P, setting) if method != STOCK else {}
    unpatch(model)
    if method != STOCK:
        patch(model, method, P=P, **hparams)
    arch = backbones.arch_of(model)
    removals = model.reduction.removals if method != STOCK else [0] * arch.L
    row: dict[str, Any] = {
        "model": cfg.model, "method": method, "P": P, "hparams": hparams,
        "tokens": A.token_schedule(arch.N, arch.L, removals, arch.prefix),
        "params": sum(p.numel() for p in model.parameters()),
        "overhead_macs": registry.implemented_overhead(arch, method, removals, hparams),
        "macs": None, "gmacs": None, "img_s": None, "img_s_spread": None, "speedup": None, "warnings": [],
        **axes(cfg, side(backbones.image_size(model))),
    }
    if bin_gmacs is not None:  # --bins paper: the bin and the method's published setting for it
        row["bin_gmacs"], row["bin_setting"] = bin_gmacs, {**({"P": P} if P is not None else {}), **(setting or {})}
    row["analytic_macs"] = sum(registry.backbone_macs(arch, method, removals, hparams).values()) + row["overhead_macs"]
    if method != STOCK and hasattr(model.reduction, "variant_label"):  # a baseline's own schedule or gtpcli's equal P
        row["setting"] = model.reduction.variant_label
    if method != STOCK:
        row["warnings"] += model.reduction.warnings
    if cfg.flops:
        image = torch.randn(1, 3, *backbones.image_size(model), device=cfg.timing.device,
                            dtype=speed.dtype_of(cfg.timing.dtype))
        count = flops.count_macs(model, image)
        row |= {"macs": count.macs, "gmacs": round(count.macs / 1e9, 4), "flop_counter_macs": count.flop_counter_macs}
        row["warnings"] += macs_warnings(count, row["analytic_macs"])
    row |= quality(model)
    if method != STOCK and hasattr(model.reduction, "diagnostics"):  # what the method noticed while it ran
        found = model.reduction.diagnostics()
        row["warnings"] += found.pop("warnings", [])
        row |= found
    if cfg.speed:
        row |= throughput(model, cfg, warn)
        row["warnings"] += row.pop("compile_findings", [])
        if row["img_s_spread"] > NOISY * row["img_s"]:
            row["warnings"].append(f"noisy timing: IQR is {row['img_s_spread'] / row['img_s']:.0%} of the median "
                                   "(is the machine busy? try more --runs)")
    return row


def macs_warnings(count: flops.MacCount, analytic: int) -> list[str]:
    found = []
    gap = abs(count.macs - analytic) / analytic
    if gap > MACS_TOLERANCE:
        found.append(f"counted MACs differ from the analytic model by {gap:.1%}")
    if (count.counters_disagree or 0) > MACS_TOLERANCE:
        found.append(f"fvcore and FlopCounterMode differ by {count.counters_disagree:.1%}")
    if count.uncounted:
        found.append(f"fvcore could not count: {', '.join(count.uncounted)}")
    return found


def throughput(model, cfg: SweepConfig, warn: Callable[[str], None]) -> dict[str, Any]:
    """Median img/s and IQR, latency percentiles, peak memory and, compiled, the compile time and what dynamo
    did. On out-of-memory the batch is halved, and stays halved for the later points of this sweep, so stock
    and reduced models are compared at equal batches."""
    size = backbones.image_size(model)
    while True:
        timing = cfg.timing if cfg.working_batch is None else replace(cfg.timing, batch_size=cfg.working_batch)
        torch.manual_seed(cfg.seed)
        try:
            found: dict[str, Any] = {}
            runner = model
            if cfg.compile is not None:
                runner = compiled.compile_model(model, cfg.compile)
                first = speed.first_pass(runner, size, timing)
                warm = compiled.stats()
            t = speed.measure(runner, size, timing)
            if cfg.compile is not None:
                after = compiled.stats()
                found = {"compile_s": round(max(first - timing.batch_size / t.img_s, 0.0), 2), **warm,
                         "recompiled": after["graphs"] > warm["graphs"], "compile_findings": compiled.findings(warm, after)}
            p50, p90, p99 = t.latency_ms
            return {"img_s": round(t.img_s, 2), "img_s_spread": round(t.spread, 2), "img_s_q1": round(t.q1, 2),
                    "img_s_q3": round(t.q3, 2), "runs": t.runs, "timed_batch_size": t.batch_size,
                    "latency_ms_p50": round(p50, 3), "latency_ms_p90": round(p90, 3), "latency_ms_p99": round(p99, 3),
                    **t.memory, **found}
        except RuntimeError as exc:
            if not speed.is_out_of_memory(exc) or timing.batch_size == 1:
                raise
            if timing.device.startswith("cuda"):
                torch.cuda.empty_cache()
            cfg.working_batch = timing.batch_size // 2
            warn(f"out of memory at batch {timing.batch_size}; this and the later points of batch "
                 f"{cfg.timing.batch_size} are timed at batch {cfg.working_batch}")


def axes(cfg: SweepConfig, img_size: int | list[int]) -> dict[str, Any]:
    """The measurement's own setting, recorded with every row (batch and image size are sweep axes)."""
    return {"batch_size": cfg.timing.batch_size, "img_size": img_size, "dtype": cfg.timing.dtype,
            "amp": cfg.timing.amp, "compile": cfg.compile}


def side(size: tuple[int, int]) -> int | list[int]:
    return size[0] if size[0] == size[1] else list(size)


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up against the stock model of the same run, and against each method's own P = 0."""
    stock_row = next((r for r in rows if r["method"] == STOCK), {})
    stock = stock_row.get("img_s")
    for row in rows:
        own_p0 = next((r["img_s"] for r in rows if r["method"] == row["method"] and r["P"] == 0), None)
        row["speedup"] = _ratio(row["img_s"], stock)
        row["speedup_vs_p0"] = _ratio(row["img_s"], own_p0)
        used = memory.key(row)
        if used is not None and stock_row.get(used):
            row["memory_saving"] = round(1 - row[used] / stock_row[used], 3)
    return rows


def add_reference(rows: list[dict[str, Any]], profile: Profile | None) -> list[dict[str, Any]]:
    """The paper's published figures next to ours, where the profile carries them."""
    for ref in profile.reference if profile else []:
        for row in rows:
            if row["method"] != ref.get("method", "gtp") or row["P"] not in ref["P"]:
                continue
            at = ref["P"].index(row["P"])
            for key in ("gmacs", "img_s", "acc"):
                if key in ref:
                    row[f"paper_{key}"] = ref[key][at]
            row["paper_source"] = ref["source"]
    return rows


def _ratio(value, base):
    return round(value / base, 3) if value and base else None


def same_point(row: dict[str, Any], method: str, P: int, hparams: dict, cfg: SweepConfig,
               img_size: int | list[int] | None = None) -> bool:
    """Whether a saved row measured this point under this configuration (for --resume)."""
    return (row.get("model") == cfg.model and row.get("method") == method and row.get("P") == P
            and row.get("hparams") == hparams
            and row.get("batch_size") == cfg.timing.batch_size and row.get("img_size") == img_size
            and (not cfg.speed or row.get("img_s") is not None)
            and (not cfg.flops or row.get("macs") is not None)
            and (not cfg.data or "acc" in row or "fidelity_top1" in row))


def run(cfg: SweepConfig, saved: list[dict[str, Any]], on_row: Callable[[list[dict]], None],
        advance: Callable[[str], None], warn: Callable[[str], None], model=None,
        world: World = World()) -> list[dict[str, Any]]:
    """Measure every point not already in `saved`; after each, `on_row` gets all rows so far.
    `model` is what `build(cfg)` returned, if the caller built it already. Of several processes, each
    measures its share of every point's images and rank 0 alone counts MACs and times it (the others
    wait), or, with `cfg.shard_points`, each measures whole points of its own, every `world.size`-th."""
    model = build(cfg) if model is None else model
    sharing = World() if cfg.shard_points else world  # the processes that split a point's images
    quality = quality_meter(model, cfg, sharing) if cfg.data else (lambda model: {})
    measuring = cfg if sharing.main else replace(cfg, flops=False, speed=False)
    rows: list[dict[str, Any]] = []
    warned: set[str] = set()
    size = side(backbones.image_size(model))
    for method, P, setting, bin_gmacs in my_points(cfg, world):
        hparams = cfg.hparams_for(method, P, setting) if method != STOCK else {}
        done = next((r for r in saved if same_point(r, method, P, hparams, cfg, size)
                     and r.get("bin_gmacs") == bin_gmacs), None)
        adaptive = method != STOCK and registry.get(method).adaptive
        label = (f"{method} P={P}" if not adaptive else f"{method} {point_label(setting) or 'default'}") \
            if bin_gmacs is None \
            else f"{method} {bin_gmacs:g} GMACs bin"
        advance(label + (" (resumed)" if done else ""))
        if adaptive and not sharing.main:
            continue  # an adaptive point shares no images: rank 0 measures it whole
        if adaptive:
            from . import adaptive_sweep
            untrained = adaptive_sweep.untrained(method, cfg.checkpoint)
            if untrained and method not in warned:  # one line per method, not one per point
                warned.add(method)
                warn(untrained)
            rows.append(done or adaptive_row(adaptive_sweep.measure_point(model, cfg, method, setting, hparams,
                                                                          bool(untrained)), cfg, size))
            if bin_gmacs is not None:  # --bins paper: ATS at its published blocks, compared by E[GMACs]
                rows[-1] |= {"bin_gmacs": bin_gmacs, "bin_setting": dict(setting)}
        else:
            rows.append(done or measure_point(model, measuring, method, P, warn, quality, setting, bin_gmacs))
        if cfg.shard_points and world.size > 1 and not done:
            rows[-1]["measured_by"] = world.label(cfg.timing.device)
        on_row(with_columns(rows, cfg))
    return rows


def adaptive_row(row: dict[str, Any], cfg: SweepConfig, img_size) -> dict[str, Any]:
    """An input-dependent method's row with the sweep's axes; its batching modes time the eager model
    without autocast, which the row says when --amp or --compile was asked for."""
    timed = row.get("batch_size")
    row |= axes(cfg, img_size) | ({"timed_batch_size": timed} if timed is not None else {})
    if cfg.timing.amp or cfg.compile:
        row["amp"] = row["compile"] = None  # what the timing really was
        row["warnings"].append("timed eager without autocast: --amp and --compile do not reach the batching modes "
                               "of input-dependent methods")
    return row


def my_points(cfg: SweepConfig, world: World) -> list[tuple]:
    """The points this process measures: all of them, or with --shard-points every world.size-th."""
    return cfg.points()[world.rank::world.size] if cfg.shard_points else cfg.points()


def with_columns(rows: list[dict[str, Any]], cfg: SweepConfig) -> list[dict[str, Any]]:
    """The columns computed from several rows: speed-ups, and the paper's figures or bins."""
    if cfg.bins is None:
        return add_reference(add_ratios(rows), cfg.profile)
    from ..reference.bins import add_bin_columns
    return add_bin_columns(add_ratios(rows), cfg.timm_name)


def quality_meter(model, cfg: SweepConfig, world: World = World()) -> Callable[[Any], dict]:
    """Accuracy of whatever the model currently is, and, with --fidelity, its agreement with the
    unreduced model on the same images (whose predictions are computed once, first, on the model as
    `build` returns it: unpatched, and reused for the stock row). Each process of `world` measures its
    share of the batches; their counts, summed in the single-process order, give the same figures."""
    loader = world.together(lambda: accuracy.data_loader(model, cfg.data, cfg.timing.batch_size, cfg.limit,
                                                         backbones.image_size(model), rank=world.rank,
                                                         size=world.size, class_map=cfg.class_map,
                                                         fidelity=cfg.fidelity))
    dtype = speed.dtype_of(cfg.timing.dtype)
    full = world.together(lambda: accuracy.predict(model, loader, cfg.timing.device, dtype)) if cfg.fidelity else None

    def measure_quality(current) -> dict:
        unreduced = getattr(current, "reduction", None) is None

        def counts():
            predictions = (full if unreduced and full is not None
                           else accuracy.predict(current, loader, cfg.timing.device, dtype))
            return accuracy.counts(predictions, full)

        return accuracy.summary([batch for share in world.gathered(counts) for batch in share])

    return measure_quality
