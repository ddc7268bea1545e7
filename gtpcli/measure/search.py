"""Best over settings, the way Tables 1, 4 and 5 of the GTP paper report accuracy: a grid of hyperparameter
settings run per P on one fixed subset of the user's images, the best setting per P kept with how many were
tried and by how much it beat the runner-up.

The objective is top-1 accuracy with labels, or agreement with the unreduced model (fidelity) without; a tie
goes to the setting closer to the unreduced model (lower KL), then to the earlier one in the grid. The subset
is the first `limit` images of the seed-0 order `profile --limit` uses, so a plain sweep with the written
profile sees the same images; `holdout` measures each winner (and the unreduced model) again on the next
`holdout` images of that order, disjoint from the first, which says how much picking the best of many
flatters the winner. Every setting is one row of the profile result format (same keys, so files merge and
resume as sweeps do); the unreduced model is evaluated once per subset, and one model is patched in turn.
Under torchrun every process measures its share of each subset's batches, as a plain sweep does (see
`sweep.quality_meter`), so every figure equals the single-process one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .. import files
from ..config.run import SEARCH_GUARD as GUARD  # image evaluations above which a grid runs only with --yes
from ..distributed import World
from ..errors import GtpcliError
from . import accuracy
from .sweep import STOCK, SweepConfig, add_reference, apply, measure_point

CACHE_BYTES = 1 << 30  # a subset whose decoded images fit in this is decoded once, not once per setting
HOLDOUT = "holdout_"  # prefix of the fields measured on the held-out images


@dataclass(frozen=True)
class Grid:
    """One method's hyperparameters, each with the values to try (in the order given)."""

    method: str
    axes: dict[str, list]

    def settings(self) -> list[dict[str, Any]]:
        names = list(self.axes)
        return [dict(zip(names, values)) for values in itertools.product(*self.axes.values())]


@dataclass
class Search:
    """What a search runs: the sweep's model, P values, data and subset, and the grid over them."""

    sweep: SweepConfig          # speed and MAC counting are off: a grid measures quality only
    grid: Grid
    holdout: int | None = None
    best_per: str | None = None  # also the best per value of this axis (Table 4: graph, Table 5: sparsity)

    @property
    def objective(self) -> str:
        return "fidelity_top1" if self.sweep.fidelity else "acc"

    def points(self) -> list[tuple[int, dict[str, Any]]]:
        return [(P, setting) for P in self.sweep.Ps for setting in self.grid.settings()]

    def config_for(self, setting: dict[str, Any]) -> SweepConfig:
        method = self.grid.method
        hparams = {**self.sweep.hparams, method: {**self.sweep.hparams.get(method, {}), **setting}}
        return replace(self.sweep, hparams=hparams, speed=False, flops=False)

    def cost(self, search_images: int) -> dict[str, int]:
        """Evaluations and image forwards, counted before anything runs (the cost guard prints it)."""
        evaluations = len(self.points()) + 1  # + the unreduced model, once
        held = (len(self.sweep.Ps) + 1) * (self.holdout or 0)
        return {"settings": len(self.grid.settings()), "Ps": len(self.sweep.Ps), "evaluations": evaluations,
                "images": search_images, "image_evaluations": evaluations * search_images + held}


def check(search: Search) -> None:
    """Refuse, in one line and before a model is built, a search that cannot be honest."""
    cfg = search.sweep
    if cfg.data is None:
        raise GtpcliError("--search needs --data DIR: the best setting is chosen on your images")
    if cfg.methods != [search.grid.method]:
        raise GtpcliError(f"--search runs one method's grid; got --method {','.join(cfg.methods)}")
    if search.best_per is not None and search.best_per not in search.grid.axes:
        searched = ", ".join(search.grid.axes) or "none"
        raise GtpcliError(f"--best-per {search.best_per}: not a searched hyperparameter (searched: {searched})")
    if search.holdout is not None:
        if search.holdout < 1:
            raise GtpcliError(f"--holdout must be >= 1, got {search.holdout}")
        if cfg.limit is None:
            raise GtpcliError("--holdout N needs --limit M: the best is chosen on M images and reported on the "
                              "next N, which must not overlap")


def subsets(model, search: Search, world: World = World()) -> dict[str, Any]:
    """Data loaders of the search subset and, with a holdout, the disjoint held-out subset (this process's
    share of their batches)."""
    from functools import partial

    from ..models import backbones

    cfg = search.sweep
    loader = partial(accuracy.data_loader, model, cfg.data, cfg.timing.batch_size,
                     image_size=backbones.image_size(model), rank=world.rank, size=world.size,
                     class_map=cfg.class_map, fidelity=cfg.fidelity)
    loaders = {"search": loader(cfg.limit)}
    if search.holdout:
        held = loader(search.holdout, skip=cfg.limit)
        available = len(held.dataset)
        if available < search.holdout:
            total = len(loaders["search"].dataset) + available
            raise GtpcliError(f"--limit {cfg.limit} + --holdout {search.holdout} needs "
                              f"{cfg.limit + search.holdout} images; {cfg.data} has {total}")
        loaders["holdout"] = held
    return loaders


def guard(cost: dict[str, int], yes: bool, limit: int = GUARD) -> None:
    if cost["image_evaluations"] > limit and not yes:
        raise GtpcliError(f"this grid is {cost['image_evaluations']:,} image evaluations (more than "
                          f"{limit:,}); add --yes to run it, or narrow the grid or --limit")


def run(search: Search, model, loaders: dict[str, Any], saved: list[dict], on_rows: Callable[[list[dict]], None],
        advance: Callable[[str], None], warn: Callable[[str], None], world: World = World()) -> list[dict[str, Any]]:
    """Measure every setting at every P that `saved` does not already hold (nothing is measured twice),
    then each P's winner on the held-out images; `on_rows` gets all rows after every measurement. Every
    process of `world` runs this with its own share of the images (and the same `saved`)."""
    cfg = search.config_for({})
    method = search.grid.method
    for P, setting in search.points():  # every setting must patch before anything is measured
        apply(model, method, P, search.config_for(setting).hparams_for(method, P))
    from ..methods.patching import unpatch
    unpatch(model)
    meter = Meter(model, loaders, cfg, world)
    rows: list[dict[str, Any]] = []

    def keep(row: dict[str, Any]) -> None:
        rows.append(row)
        on_rows(add_reference(rows, cfg.profile))

    def measured(point_method: str, P: int, hparams: dict) -> dict | None:
        return next((r for r in saved if r.get("model") == cfg.model and r.get("method") == point_method
                     and r.get("P") == P and r.get("hparams") == hparams and search.objective in r), None)

    def measure(point: SweepConfig, point_method: str, P: int) -> dict[str, Any]:
        meter.unreduced("search")  # once, before the first point measured
        return measure_point(model, point, point_method, P, warn, meter.quality)

    advance(f"{STOCK} (unreduced)")
    keep(measured(STOCK, 0, {}) or measure(cfg, STOCK, 0))
    for P in cfg.Ps:
        at_P = []
        for setting in search.grid.settings():
            point = search.config_for(setting)
            hparams = point.hparams_for(method, P)
            done = measured(method, P, hparams)
            advance(f"P={P} {_label(setting)}" + (" (resumed)" if done else ""))
            if done is not None:
                done.setdefault("grid", setting)  # a plain sweep's row of the same setting counts too
            row = done or {**measure(point, method, P), "grid": setting}
            at_P.append(row)
            keep(row)
        if search.holdout:
            winner = ranked(at_P, search.objective)[0]
            for row in (rows[0], winner):
                if row.get(HOLDOUT + "n") != search.holdout:
                    advance(f"P={row['P']} {_label(row.get('grid', {})) or STOCK}: held-out images")
                    row |= meter.held_out(row, method)
                    on_rows(add_reference(rows, cfg.profile))
    return rows


class Meter:
    """Predictions on each subset; the unreduced model's are computed once per subset, when first needed.
    Each process of `world` predicts its share of the batches; the figures come from all shares' counts."""

    def __init__(self, model, loaders: dict[str, Any], cfg: SweepConfig, world: World = World()):
        from . import speed

        self.model, self.loaders, self.device, self.world = model, dict(loaders), cfg.timing.device, world
        self.dtype = speed.dtype_of(cfg.timing.dtype)
        self.full: dict[str, accuracy.Predictions] = {}
        self.sizes = {subset: len(loader.dataset) for subset, loader in loaders.items()}  # all processes' images
        self.numbers = {subset: accuracy.batch_order(loader) for subset, loader in loaders.items()}

    def predict(self, model, subset: str) -> accuracy.Predictions:
        """Every setting sees the same images: a subset that fits in CACHE_BYTES is decoded once and kept
        (with each batch's place in the single-process order, which the kept list does not carry)."""
        loader = self.loaders[subset]
        if isinstance(loader, list) or not _fits(loader):
            found = accuracy.predict(model, loader, self.device, self.dtype)
        else:
            batches: list = []
            found = accuracy.predict(model, _kept(loader, batches), self.device, self.dtype)
            self.loaders[subset] = batches
        numbers = self.numbers[subset]
        return found if numbers is None else replace(found, batches=numbers)

    def unreduced(self, subset: str) -> accuracy.Predictions:
        """The unreduced model's predictions (this unpatches the model the first time, to compute them)."""
        if subset not in self.full:
            from ..methods.patching import unpatch

            unpatch(self.model)
            self.full[subset] = self.world.together(lambda: self.predict(self.model, subset))
        return self.full[subset]

    def quality(self, current, subset: str = "search") -> dict[str, Any]:
        """Accuracy (with labels) and agreement with the unreduced model, of the model as it is patched now:
        every process's per-batch counts, summed in the single-process order."""
        full = self.full[subset]

        def counts() -> list[dict[str, Any]]:
            found = full if getattr(current, "reduction", None) is None else self.predict(current, subset)
            return accuracy.counts(found, full)

        return accuracy.summary([batch for share in self.world.gathered(counts) for batch in share])

    def held_out(self, row: dict[str, Any], method: str) -> dict[str, Any]:
        """The same measurement of `row`'s setting on the held-out images, as `holdout_*` fields."""
        self.unreduced("holdout")
        if row["method"] != STOCK:
            apply(self.model, method, row["P"], row["hparams"])
        found = self.quality(self.model, "holdout")
        renamed = {HOLDOUT + key: value for key, value in found.items() if key != "acc_n"}
        return renamed | {HOLDOUT + "n": self.sizes["holdout"]}


def _fits(loader) -> bool:
    image = loader.dataset[0][0] if len(loader.dataset) else None
    return image is not None and len(loader.dataset) * image.numel() * image.element_size() <= CACHE_BYTES


def _kept(loader, batches: list):
    for batch in loader:
        batches.append(batch)
        yield batch


def ranked(rows: list[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """Best first: the higher objective, then the lower KL to the unreduced model, then grid order."""
    order = {id(row): at for at, row in enumerate(rows)}
    return sorted(rows, key=lambda r: (-r[objective], r.get("fidelity_kl", 0.0), order[id(r)]))


def best_per_P(rows: list[dict[str, Any]], search: Search, images: int) -> list[dict[str, Any]]:
    """Per P: the winning setting, its objective with the 95% interval, how many settings were tried, the
    runner-up's margin (points, and images), and with a holdout the winner and the unreduced model there."""
    from ..reference.ablations import comparable

    objective = search.objective
    ablation = comparable(search.sweep.timm_name, search.sweep.hparams.get(search.grid.method, {}), search.grid.axes)
    stock = next((r for r in rows if r["method"] == STOCK), None)
    found = []
    for P in search.sweep.Ps:
        at_P = ranked([r for r in rows if r["method"] == search.grid.method and r["P"] == P], objective)
        if not at_P:
            continue
        best = at_P[0]
        margin = round(best[objective] - at_P[1][objective], 2) if len(at_P) > 1 else None
        entry = {
            "P": P, "objective": objective, "settings": len(at_P), "best": best.get("grid", {}),
            "value": best[objective], "ci95": best.get(_interval(objective)),
            "runner_up": at_P[1].get("grid", {}) if len(at_P) > 1 else None, "margin": margin,
            "margin_images": round(margin * images / 100) if margin is not None else None,
            "tied": sum(r[objective] == best[objective] for r in at_P), "images": images,
            "stock": stock.get(objective) if stock else None, "gmacs_analytic": round(best["analytic_macs"] / 1e9, 4),
            "hparams": best["hparams"],
        }
        entry["at_edge"] = at_edge(search.grid, best.get("grid", {}))
        if search.holdout:
            entry |= {"holdout": best.get(HOLDOUT + objective), "holdout_ci95": best.get(HOLDOUT + _interval(objective)),
                      "holdout_stock": stock.get(HOLDOUT + objective) if stock else None,
                      "holdout_images": best.get(HOLDOUT + "n")}
            entry["optimism"] = _optimism(entry)
        if best.get("paper_acc") is not None:
            entry |= {"paper_acc": best["paper_acc"], "paper_source": best.get("paper_source")}
        if ablation is not None and P in ablation["P"]:
            entry |= {"paper_ablation_acc": ablation["acc"][ablation["P"].index(P)], "paper_ablation": ablation["label"]}
        found.append(entry)
    return found


def best_per_value(rows: list[dict[str, Any]], search: Search, name: str) -> list[dict[str, Any]]:
    """Per value of one searched hyperparameter and per P: the best over the other settings, the layout of
    Tables 4 (graph) and 5 (sparsity), with the published row each value reproduces where there is one."""
    from ..reference.ablations import comparable

    method, objective = search.grid.method, search.objective
    fixed = search.sweep.hparams.get(method, {})
    others = {axis: values for axis, values in search.grid.axes.items() if axis != name}
    found = []
    for value in search.grid.axes[name]:
        ablation = comparable(search.sweep.timm_name, {**fixed, name: value}, others)
        for P in search.sweep.Ps:
            at_P = ranked([r for r in rows if r["method"] == method and r["P"] == P
                           and r.get("grid", {}).get(name) == value], objective)
            if not at_P:
                continue
            entry = {"P": P, name: value, "settings": len(at_P), "best": at_P[0]["grid"],
                     "value": at_P[0][objective], "ci95": at_P[0].get(_interval(objective))}
            if ablation is not None and P in ablation["P"]:
                entry |= {"paper_acc": ablation["acc"][ablation["P"].index(P)], "paper": ablation["label"]}
            found.append(entry)
    return found


def at_edge(grid: Grid, best: dict[str, Any]) -> list[str]:
    """The numeric hyperparameters (of 3+ values) whose best value is the smallest or largest tried, unless
    that is as far as the hyperparameter goes (sparsity 1): a wider range might do better."""
    from ..methods import REGISTRY

    bounds = {h.name: (None if h.low_open else h.low, h.high) for h in REGISTRY[grid.method].hparams}
    found = []
    for name, values in grid.axes.items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        value = best.get(name)
        if numeric and len(values) > 2 and value in (min(values), max(values)) and value not in bounds.get(name, ()):
            found.append(name)
    return found


def _interval(objective: str) -> str:
    """The row key of the objective's 95% Wilson interval: acc_ci95, fidelity_ci95."""
    return objective.replace("_top1", "") + "_ci95"


def _optimism(entry: dict[str, Any]) -> float | None:
    """How much better the winner looks on the images it was chosen on than on fresh ones, each measured
    against the unreduced model on the same images (so an easier or harder subset cancels out)."""
    values = (entry["value"], entry["stock"], entry.get("holdout"), entry.get("holdout_stock"))
    if any(v is None for v in values):
        return None
    return round((values[0] - values[1]) - (values[2] - values[3]), 2)


def _label(setting: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def profile_with(source: Path, winners: list[dict[str, Any]], chosen: set[str], note: str) -> str:
    """The source profile's YAML with each winner's `chosen` hyperparameters (the grid's and those fixed on the
    command line) as its `per_P` block (entries for other P kept), headed by a comment saying where the
    values came from; loadable by `profiles.load_profile`."""
    import yaml

    data = files.load_yaml(files.read_text(source, "profile"), str(source))
    per_P = {P: dict(values) for P, values in (data.get("per_P") or {}).items()}
    for entry in winners:
        per_P[entry["P"]] = {**per_P.get(entry["P"], {}),
                             **{k: v for k, v in entry["hparams"].items() if k in chosen}}
    data["per_P"] = dict(sorted(per_P.items()))
    searched = ", ".join(str(e["P"]) for e in winners)
    kept = sorted(set(per_P) - {e["P"] for e in winners})
    header = [f"# Written by gtpcli profile --search from {source}.", f"# per_P for P = {searched}: {note}."]
    if kept:
        header.append(f"# per_P for P = {', '.join(map(str, kept))}: as in {source}.")
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(header) + "\n" + body
