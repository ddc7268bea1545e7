"""`gtpcli profile` as data: sweep P over a backbone for each method, one plain row per point.

Every point of a combination (batch size, image size), fixed-P and input-dependent alike, is measured by
`measure_point` (its token schedule or its per-image counts, MACs, accuracy); then all of them are timed
together with the stock model in the same interleaved rounds, on one set of weights (measure/throughput.py),
so every speed-up is a ratio of two figures taken side by side. The rows are handed to `on_row` as they grow
(the CLI saves them), so an interrupted sweep keeps what it measured and can resume.
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
from ..methods.patching import METHODS, apply, unpatch
from ..models import backbones
from ..models.profiles import Profile
from ..models.resolution import at_input_size, check_input_size
from . import accuracy, flops, memory, speed

STOCK = "stock"
INPUT_SIZE = "img_size"  # a point's setting may carry its own input size: it runs on a resized copy of the model
MACS_TOLERANCE = 0.01  # counted vs analytic, and fvcore vs FlopCounterMode
RANDOM_WEIGHTS_SEED = 0  # without a checkpoint, so that processes of one torchrun run measure one model


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
    seed: int = 0                   # the timed input batch and the rounds' order (random weights have their own fixed seed)
    bins: list[tuple] | None = None  # --bins paper: (method, P, setting, nominal GMACs), see paper_bins.points
    shard_points: bool = False      # under torchrun: whole points per process, instead of images
    class_map: Path | None = None   # --data's class names to the head's indices (timm's .txt class map)
    sweeps: dict[str, list] = field(default_factory=dict)  # adaptive methods' own axes: {"delta": [0.01, ...]}
    only: list[tuple] | None = None  # these (method, P, setting) points instead of the sweep (gtpcli bench)

    def points(self) -> list[tuple[str, int | None, dict[str, Any], float | None]]:
        """(method, P, the point's own setting, its GMACs bin), the stock model first. An input-dependent
        method has no P: its points are the values of its own axis (TPC: delta), its default without one."""
        if self.bins is not None:
            return [(STOCK, 0, {}, None)] + list(self.bins)
        if self.only is not None:
            return [(STOCK, 0, {}, None)] + [(method, P, setting, None) for method, P, setting in self.only]
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
        saved = (registry.get(method).saved_hparams(self.checkpoint) or {}) if method in registry.REGISTRY else {}
        own = {key: value for key, value in (setting or {}).items() if key != INPUT_SIZE}  # the input is no hparam
        found = {**chosen, **saved, **self.hparams.get(method, {}), **own}
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
    check(model, cfg)
    return model.to(cfg.timing.device, speed.dtype_of(cfg.timing.dtype))


def check(model: torch.nn.Module, cfg: SweepConfig) -> None:
    """Every point of `cfg` applied to `model` once and removed: a point the model cannot run is one line
    before anything is measured."""
    for method, P, setting, _ in cfg.points()[1:]:
        if (setting or {}).get(INPUT_SIZE) is not None:
            check_input_size(model, setting[INPUT_SIZE])
            if method != STOCK and registry.get(method).adaptive:
                raise GtpcliError(f"{method}: an input-dependent method is not timed at its own input size")
        if method != STOCK:
            apply(model, method, P, cfg.hparams_for(method, P, setting))
    unpatch(model)


class InputSizes:
    """The models of the points that carry their own input size: one resized copy of the stock model per
    size (models/resolution.py, position embeddings resampled as timm does), made when first asked for and
    shared by the points of that size; a point without its own size runs on the model itself."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.copies: dict[int, torch.nn.Module] = {}

    def __call__(self, size: int | None) -> torch.nn.Module:
        if size is None:
            return self.model
        if size not in self.copies:
            self.copies[size] = at_input_size(unpatch(self.model), size)
        return self.copies[size]


def measure_point(model, cfg: SweepConfig, method: str, P: int | None, warn: Callable[[str], None],
                  quality: Callable[[Any], dict] = lambda model: {}, setting: dict[str, Any] | None = None,
                  bin_gmacs: float | None = None) -> dict[str, Any]:
    """One row, all but its throughput (timed with the other points, measure/throughput.py): parameters,
    what the point costs (its token schedule and counted MACs, or for an input-dependent method its
    per-image counts over images), accuracy when data is given, and what the method noticed."""
    card = None if method == STOCK else registry.get(method)
    hparams = cfg.hparams_for(method, P, setting) if card else {}
    unpatch(model)
    if card:
        apply(model, method, P, hparams)
    row: dict[str, Any] = {
        "model": cfg.model, "method": method, "P": P, "hparams": hparams,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": None, "gmacs": None, "img_s": None, "img_s_spread": None, "speedup": None, "warnings": [],
        **axes(cfg, side(backbones.image_size(model))),
    }
    if bin_gmacs is not None:  # --bins paper: the bin and the method's published setting for it
        row["bin_gmacs"], row["bin_setting"] = bin_gmacs, {**({"P": P} if P is not None else {}), **(setting or {})}
    if card is not None and card.adaptive:
        from .adaptive_sweep import image_costs
        found = image_costs(model, cfg, card, hparams)
    else:
        found = schedule_costs(model, cfg, method, hparams) | quality(model)
    row["warnings"] += found.pop("warnings", [])
    row |= found
    reduction = getattr(model, "reduction", None) if card is not None else None
    row["warnings"] += getattr(reduction, "warnings", [])  # where the run departs from the asked setting
    if hasattr(reduction, "diagnostics"):  # what the method noticed while it ran
        found = reduction.diagnostics()
        row["warnings"] += found.pop("warnings", [])
        row |= found
    return row


def schedule_costs(model, cfg: SweepConfig, method: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """A fixed schedule's costs: tokens per block, the analytic MACs with the method's own overhead, and
    (unless --no-flops) the MACs counted on the model, checked against them."""
    arch = backbones.arch_of(model)
    removals = model.reduction.removals if method != STOCK else [0] * arch.L
    found: dict[str, Any] = {
        "tokens": A.token_schedule(arch.N, arch.L, removals, arch.prefix),
        "overhead_macs": registry.implemented_overhead(arch, method, removals, hparams), "warnings": []}
    found["analytic_macs"] = sum(registry.backbone_macs(arch, method, removals, hparams).values()) + found["overhead_macs"]
    if method != STOCK and hasattr(model.reduction, "variant_label"):  # a baseline's own schedule or gtpcli's equal P
        found["setting"] = model.reduction.variant_label
    if cfg.flops:
        image = torch.randn(1, 3, *backbones.image_size(model), device=cfg.timing.device,
                            dtype=speed.dtype_of(cfg.timing.dtype))
        count = flops.count_macs(model, image)
        found |= {"macs": count.macs, "gmacs": round(count.macs / 1e9, 4), "flop_counter_macs": count.flop_counter_macs}
        found["warnings"] += macs_warnings(count, found["analytic_macs"])
    return found


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


def axes(cfg: SweepConfig, img_size: int | list[int]) -> dict[str, Any]:
    """The measurement's own setting, recorded with every row (batch and image size are sweep axes)."""
    return {"batch_size": cfg.timing.batch_size, "img_size": img_size, "dtype": cfg.timing.dtype,
            "amp": cfg.timing.amp, "compile": cfg.compile}


def side(size: tuple[int, int]) -> int | list[int]:
    return size[0] if size[0] == size[1] else list(size)


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The memory saving over the stock model, and the speed-ups the rounds did not give: those of rows
    timed before interleaved rounds existed (no `rounds`), or against a P = 0 timed in other rounds, as
    ratios of the two img/s."""
    stock_row = next((r for r in rows if r["method"] == STOCK), {})
    stock = stock_row.get("img_s")
    for row in rows:
        own_p0 = next((r["img_s"] for r in rows if r["method"] == row["method"] and r["P"] == 0), None)
        if row.get("rounds") is None:
            row["speedup"] = _ratio(row["img_s"], stock)
        if row.get("rounds") is None or row.get("speedup_vs_p0") is None:
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
    """Whether a saved row measured this point under this configuration (for --resume), all but its
    throughput: a point not (or not fully) timed is timed again with the others (measure/throughput.py)."""
    return (row.get("model") == cfg.model and row.get("method") == method and row.get("P") == P
            and row.get("hparams") == hparams
            and row.get("batch_size") == cfg.timing.batch_size and row.get("img_size") == img_size
            and (not cfg.flops or row.get("macs") is not None)
            and (not cfg.data or "acc" in row or "fidelity_top1" in row))


def run(cfg: SweepConfig, saved: list[dict[str, Any]], on_row: Callable[[list[dict]], None],
        advance: Callable[[str], None], warn: Callable[[str], None], model=None,
        world: World = World()) -> list[dict[str, Any]]:
    """Measure every point not already in `saved`, then time those not yet timed, together, in interleaved
    rounds; `on_row` gets all rows after each point and each round. `model` is what `build(cfg)` returned,
    if the caller built it already. Of several processes, each measures its share of every point's images
    and rank 0 alone counts MACs and times them (the others wait), or, with `cfg.shard_points`, each
    measures and times whole points of its own, every `world.size`-th, beside its own stock model."""
    from . import throughput

    model = build(cfg) if model is None else model
    sharing = World() if cfg.shard_points else world  # the processes that split a point's images
    quality = quality_meter(model, cfg, sharing) if cfg.data else (lambda model: {})
    measuring = cfg if sharing.main else replace(cfg, flops=False, speed=False)
    rows: list[dict[str, Any]] = []
    warned: set[str] = set()
    sized = InputSizes(model)
    for method, P, setting, bin_gmacs in my_points(cfg, world):
        card = None if method == STOCK else registry.get(method)
        hparams = cfg.hparams_for(method, P, setting) if card else {}
        own = sized((setting or {}).get(INPUT_SIZE))  # the model, or its resized copy at the point's own input size
        done = next((r for r in saved if same_point(r, method, P, hparams, cfg, side(backbones.image_size(own)))
                     and r.get("bin_gmacs") == bin_gmacs), None)
        advance(point_name(card, method, P, setting, bin_gmacs) + (" (resumed)" if done else ""))
        if card is not None and card.adaptive and not sharing.main:
            continue  # an adaptive point shares no images: rank 0 measures it whole
        untrained = card.untrained_warning(cfg.checkpoint) if card else None
        if untrained and method not in warned:  # one line per method, not one per point
            warned.add(method)
            warn(untrained)
        rows.append(done or measure_point(own, measuring, method, P, warn, quality, setting, bin_gmacs))
        if cfg.shard_points and world.size > 1 and not done:
            rows[-1]["measured_by"] = world.label(cfg.timing.device)
        on_row(with_columns(rows, cfg))
    if measuring.speed:
        throughput.time_rows(model, cfg, rows, advance, warn, lambda: on_row(with_columns(rows, cfg)), sized)
    return rows


def point_name(card, method: str, P: int | None, setting: dict[str, Any], bin_gmacs: float | None) -> str:
    """How the progress line names a point: "gtp P=8", "tpc delta=0.01", "ats 3.0 GMACs bin"."""
    if bin_gmacs is not None:
        return f"{method} {bin_gmacs:g} GMACs bin"
    at = f" at {setting[INPUT_SIZE]} px" if (setting or {}).get(INPUT_SIZE) is not None else ""
    if card is not None and card.adaptive:
        return f"{method} {point_label(setting) or 'default'}{at}"
    own = ", ".join(f"{key}={value}" for key, value in (setting or {}).items() if key != INPUT_SIZE)
    return f"{method} " + (f"P={P}" if P is not None else own or "its own schedule") + at


def steps(cfg: SweepConfig, world: World = World()) -> int:
    """The progress of one sweep: each of its points, then each timing round."""
    return len(my_points(cfg, world)) + (cfg.timing.timed_rounds if cfg.speed else 0)


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
    """Accuracy of whatever the model currently is, on the images at its own input size (DataLoaders), and,
    with --fidelity, its agreement with the unreduced model at full size on the same images (whose
    predictions are computed once, first, on the model unpatched, as `build` returns it but not as an
    earlier sweep on it may leave it, and reused for the stock row). Each process of `world` measures its
    share of the batches; their counts, summed in the single-process order, give the same figures."""
    loaders = DataLoaders(model, cfg, world)
    own = backbones.image_size(model)
    loaders(own)  # the images checked before anything is measured
    dtype = speed.dtype_of(cfg.timing.dtype)

    def stock_predictions():
        return accuracy.predict(unpatch(model), loaders(own), cfg.timing.device, dtype)

    full = world.together(stock_predictions) if cfg.fidelity else None

    def measure_quality(current) -> dict:
        size = backbones.image_size(current)
        unreduced = getattr(current, "reduction", None) is None and size == own  # a resized copy is not the stock model
        loader = loaders(size)

        def counts():
            predictions = (full if unreduced and full is not None
                           else accuracy.predict(current, loader, cfg.timing.device, dtype))
            return accuracy.counts(predictions, full)

        return accuracy.summary([batch for share in world.gathered(counts) for batch in share])

    return measure_quality


class DataLoaders:
    """--data at each input size a point runs at: one loader per size, made when first asked for, over the
    same images in the same order and the same batches of this process (the same --limit subset, the same
    share under torchrun), resized and cropped by the backbone's own eval transform at that size (timm's
    data config resolved for that input size). So the predictions at any size pair, batch by batch, with
    the full-size ones (`accuracy.counts`), which is checked when a size's loader is made."""

    def __init__(self, model: torch.nn.Module, cfg: SweepConfig, world: World = World()):
        self.model, self.cfg, self.world = model, cfg, world
        self.made: dict[tuple[int, int], Any] = {}

    def __call__(self, size: tuple[int, int]):
        if size not in self.made:
            self.made[size] = self.world.together(lambda: self.in_order(self.make(size), size))
        return self.made[size]

    def make(self, size: tuple[int, int]):
        cfg, world = self.cfg, self.world
        return accuracy.data_loader(self.model, cfg.data, cfg.timing.batch_size, cfg.limit, size, rank=world.rank,
                                    size=world.size, class_map=cfg.class_map, fidelity=cfg.fidelity)

    def in_order(self, loader, size: tuple[int, int]):
        """`loader`, checked to present the first loader's images, batch by batch."""
        first = next(iter(self.made.values()), None)
        if first is not None and accuracy.image_order(loader) != accuracy.image_order(first):
            raise GtpcliError(f"--data: the images at {size[0]} x {size[1]} px are not those of the other input "
                              "sizes in the same order, so their predictions cannot be compared")
        return loader
