"""`gtpcli compare`: every method at matched cost. The plan, as data and without torch: for each target
GMACs, every registered method at the setting whose analytic GMACs are nearest (gtpcli/methods/solve.py),
and the `resolution` baseline, the stock model at the input size whose GMACs match (gtpcli/cost/solve.py).
What cannot be solved is one line (a method whose cost depends on the image, a target out of its reach)
and the rest of the plan stands. Then the measurement: each target's rows as `gtpcli profile` points
(measure/sweep.py), timed with the stock model in the same interleaved rounds, every finished row saved."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config.ranges import parse_numbers
from ..cost.analytic import Arch
from ..cost.solve import Miss, resolution, stock_macs
from ..errors import GtpcliError
from ..methods import REGISTRY
from ..methods.solve import solve_all

RESOLUTION = "resolution"  # the baseline that lowers the input size instead of the tokens per block
STOCK = "stock"            # the unreduced model, measured with every target as its reference
MAX_TARGETS = 32


def targets(text: str) -> list[float]:
    """`3.5,3.0,2.6` to GMACs, each positive and none twice, in the order given."""
    found = parse_numbers(text, "--gmacs", limit=MAX_TARGETS)
    if any(value <= 0 for value in found):
        raise GtpcliError(f"--gmacs: every target must be positive, got {text!r}")
    if len(set(found)) != len(found):
        raise GtpcliError(f"--gmacs: {text!r} names a target twice")
    return found


def paper_targets(bins: str, timm_name: str) -> list[float]:
    """`--bins paper`: the GMACs bins of GTP-ViT's table for this backbone (deit_s: Table 2, deit_b: Table 3)."""
    from ..reference.bins import table_for

    if bins != "paper":
        raise GtpcliError(f"--bins {bins!r}: only 'paper' (GTP-ViT's Tables 2/3) is known")
    return list(table_for(timm_name)["bins"])


def with_paper(rows: list[dict[str, Any]], timm_name: str) -> list[dict[str, Any]]:
    """Each row at a bin of GTP-ViT's table for this backbone gets the paper's figures for its method there,
    with the paper's own setting (the row's is solved, and may differ): reference, never a result."""
    from ..reference.bins import SOURCE, TABLES

    table = TABLES.get(timm_name)
    for row in rows if table else []:
        published = table["methods"].get(row["method"])
        if published is None or row["target_gmacs"] not in table["bins"]:
            continue
        index = table["bins"].index(row["target_gmacs"])
        row["paper"] = {"setting": published["settings"][index], "source": f"{SOURCE}, {table['table']}",
                        **{key: published[key][index] for key in ("acc", "acc_ft", "img_s") if key in published}}
    return rows


def setting_row(target: float, method: str, setting: dict[str, Any], macs: int) -> dict[str, Any]:
    """One planned run: the method at its setting, its analytic GMACs and how far they are from the target."""
    return {"target_gmacs": target, "method": method, "setting": setting, "gmacs": macs / 1e9,
            "gap": macs / (target * 1e9) - 1}


def plan_target(arch: Arch, target: float, hparams: Mapping[str, Mapping[str, Any]],
                methods: Sequence[str] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The planned rows at one target (each method, then the resolution baseline), and what was skipped."""
    macs = round(target * 1e9)
    rows, skipped = [], []
    for method, found in solve_all(arch, macs, hparams, methods).items():
        if isinstance(found, Miss):
            skipped.append({"target_gmacs": target, "method": method, "reason": found.reason})
        else:
            rows.append(setting_row(target, method, found.kwargs, found.macs))
    size = resolution(arch, macs)
    if isinstance(size, Miss):
        skipped.append({"target_gmacs": target, "method": RESOLUTION, "reason": f"resolution: {size.reason}"})
    else:
        rows.append(setting_row(target, RESOLUTION, {"img_size": size.value}, size.macs))
    return rows, skipped


def refuse_solved_hparams(hparams: Mapping[str, Mapping[str, Any]]) -> None:
    """A hyperparameter the solver sets (EViT's keep_rate) would be overridden in silence: one line instead."""
    for method, given in hparams.items():
        knob = REGISTRY[method].matched_cost_knob()
        if knob is not None and knob.name in given:
            raise GtpcliError(f"--hp {method}.{knob.name}: compare solves {knob.name} for each target; leave it out")


def plan(name: str, arch: Arch, gmacs: Sequence[float], hparams: Mapping[str, Mapping[str, Any]] | None = None,
         methods: Sequence[str] | None = None, timm_name: str | None = None) -> dict[str, Any]:
    """The whole comparison's plan: every target's rows and skipped methods, nothing measured yet (with
    `timm_name`, the paper's figures where a target is a bin of GTP-ViT's table for it). A plan in which
    nothing can run is one line (exit 2)."""
    refuse_solved_hparams(hparams or {})
    rows, skipped = [], []
    for target in gmacs:
        found, missed = plan_target(arch, target, hparams or {}, methods)
        rows += found
        skipped += missed
    missed = unreached(gmacs, rows, skipped)
    if not rows:
        raise GtpcliError("nothing to compare: " + "; ".join(m["reason"] for m in missed))
    return {"model": name, "stock_gmacs": stock_macs(arch) / 1e9, "targets_gmacs": list(gmacs),
            "measured": False, "rows": with_paper(rows, timm_name) if timm_name else rows, "skipped": skipped,
            "unreached": missed}


def unreached(gmacs: Sequence[float], rows: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets at which no method and no baseline can run, each with one line (the resolution
    baseline's reason says why: above the stock model, or below the smallest input)."""
    planned = {row["target_gmacs"] for row in rows}
    found = []
    for target in gmacs:
        if target not in planned:
            why = [s["reason"] for s in skipped if s["target_gmacs"] == target and s["method"] == RESOLUTION]
            found.append({"target_gmacs": target,
                          "reason": f"no method reaches {target:g} GMACs" + (f" ({why[0]})" if why else "")})
    return found


def cost_line(result: dict[str, Any]) -> str:
    """Said before a comparison starts: how many runs it holds, and how many lines were skipped."""
    targets_, rows = result["targets_gmacs"], result["rows"]
    methods = len({row["method"] for row in rows})
    reasons = len({skip["reason"] for skip in result["skipped"]})
    plural = "s" if len(targets_) != 1 else ""
    return (f"compare {result['model']}: {len(rows)} runs to measure ({len(targets_)} target{plural}, {methods} "
            f"methods and baselines)" + (f"; {reasons} skipped, each said below" if reasons else ""))


# --- measuring the plan -------------------------------------------------------------------------------------

def as_point(row: dict[str, Any]) -> tuple[str, int | None, dict[str, Any]]:
    """A planned row as a sweep point (method, P, its own setting): the resolution baseline is the stock
    model at its own input size (the sweep's `img_size` setting), a method's knob its P or its own setting."""
    setting = dict(row["setting"])
    if row["method"] == RESOLUTION:
        return STOCK, 0, setting
    return row["method"], setting.pop("P", None), setting


def as_measured(row: dict[str, Any], planned: dict[str, Any], target: float) -> dict[str, Any]:
    """A sweep row as the comparison keeps it: whole (nothing measured is lost), named as the plan names it
    (method, setting; the sweep's own schedule label kept as `schedule`), with its target and exact GMACs."""
    found = {**row, "target_gmacs": target, "method": planned["method"], "setting": planned["setting"]}
    if "paper" in planned:
        found["paper"] = planned["paper"]
    if "setting" in row:
        found["schedule"] = row["setting"]
    found["gmacs"] = row["macs"] / 1e9 if row.get("macs") else None
    found["analytic_gmacs"] = row["analytic_macs"] / 1e9 if row.get("analytic_macs") else None
    found["gap"] = found["gmacs"] / target - 1 if found["gmacs"] else None
    return found


def as_sweep_row(row: dict[str, Any]) -> dict[str, Any]:
    """A saved row as the sweep wrote it, to resume it: `as_measured` undone (the resolution baseline is the
    stock model, the sweep's schedule label its `setting`)."""
    found = {key: value for key, value in row.items() if key not in ("setting", "schedule", "paper")}
    if "schedule" in row:
        found["setting"] = row["schedule"]
    return {**found, "method": STOCK} if row["method"] == RESOLUTION else found


def with_ideal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One target's rows (stock first) with the ideal speed-up, stock GMACs over the row's, and the share of
    it the measured speed-up reached."""
    stock = rows[0].get("gmacs") if rows else None
    for row in rows:
        ideal = stock / row["gmacs"] if stock and row.get("gmacs") else None
        row["ideal_speedup"] = round(ideal, 3) if ideal else None
        row["share_of_ideal"] = round(row["speedup"] / ideal, 3) if ideal and row.get("speedup") else None
    return rows


def measured_rows(target: float, planned: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweep's rows of one target (stock, then the planned rows in order, as far as they got)."""
    stock = {"method": STOCK, "setting": {}}
    return with_ideal([as_measured(row, plan_row, target) for row, plan_row in zip(rows, [stock, *planned])])


def result_file(opts, cfg, header: dict[str, Any]) -> Path:
    """--output, or the comparison's file of this setting in gtpcli-results/ (MODEL-compare.json, with what
    sets the setting apart added, as profile's are named: results.default_path)."""
    from .. import results
    from .profile import check_output

    stem = f"{cfg.model.replace('/', '_')}-compare"
    return check_output(opts.output or results.default_path(Path("gtpcli-results"), stem, header))


def refuse_profile_file(rows: list[dict[str, Any]], path: Path) -> None:
    """A profile result holds points of no target: compare keeps its rows in a file of its own."""
    if any("target_gmacs" not in row for row in rows):
        raise GtpcliError(f"--output {path} holds gtpcli profile points (no target); give compare a file of its own")


def measure(opts, planned: dict[str, Any], announce=lambda text: None, breakdown: bool = True) -> dict[str, Any]:
    """Every target of the plan measured: the stock model and the target's rows as sweep points, timed in the
    same interleaved rounds, then (`breakdown`) where each row's ideal went, from profiled passes; each finished
    row and breakdown saved to the result file at once (resume: rows and breakdowns already in it are kept, not
    measured again). `announce` gets the cost line once every option is checked, before the model is built.
    The measured result: the header (model, weights, environment, plan) and the rows of this comparison,
    target by target."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .. import results
    from ..distributed import World
    from ..measure import sweep
    from ..report.tables import console
    from .profile import keeping_finished, result_header, stopping_on_signals, sweep_config

    cfg = sweep_config(opts)
    targets_ = [t for t in planned["targets_gmacs"] if any(r["target_gmacs"] == t for r in planned["rows"])]
    by_target = {t: [r for r in planned["rows"] if r["target_gmacs"] == t] for t in targets_}
    configs = {t: replace(cfg, methods=sorted({r["method"] for r in rows if r["method"] != RESOLUTION}),
                          only=[as_point(r) for r in rows]) for t, rows in by_target.items()}
    every = replace(cfg, methods=sorted({m for c in configs.values() for m in c.methods}),
                    only=[point for c in configs.values() for point in c.only])
    header = {**result_header(cfg, opts), "command": "compare", "stock_gmacs": planned["stock_gmacs"],
              "targets_gmacs": planned["targets_gmacs"], "skipped": planned["skipped"],
              "unreached": planned["unreached"], "measured": True, "breakdown": breakdown_passes()}
    path = result_file(opts, cfg, header)
    announce(cost_line(planned))
    model = sweep.build(every)  # every point checked before anything is measured
    store = results.ResultFile(path, header)
    existing = store.open()
    refuse_profile_file(existing, path)
    saved = existing if opts.resume else []
    err = console(stderr=True)
    warn = lambda text: err.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)  # noqa: E731
    rows: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []  # the breakdowns this run measured
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with stopping_on_signals() as held, Progress(*columns, console=err, transient=True) as progress:
        total = sum(sweep.steps(c) for c in configs.values()) + (breakdown_steps(by_target) if breakdown else 0)
        task = progress.add_task(cfg.model, total=total)
        started: list[str] = []

        def save_breakdown(row: dict[str, Any], found: dict[str, Any]) -> None:
            with held():
                row["ideal_gap"] = found
                gaps.append(found)
                store.save(rows)

        def measuring():
            for target, config in configs.items():
                before = list(rows)

                def save(so_far: list[dict[str, Any]], target=target) -> None:
                    with held():
                        rows[:] = before + measured_rows(target, by_target[target], so_far)
                        store.save(rows)

                def starting(label: str, target=target) -> None:
                    progress.update(task, completed=len(started), description=f"{cfg.model} at {target:g} GMACs: {label}")
                    started.append(label)

                mine = [as_sweep_row(r) for r in saved if r.get("target_gmacs") == target]
                sweep.run(config, mine, save, starting, warn, model=model)
                if breakdown:
                    breakdowns(model, config, rows[len(before):], starting, save_breakdown)

        with keeping_finished(progress, rows, store, World(), "rows"):
            measuring()
    before = {results.row_key(row): without_gap(row) for row in saved}
    resumed = sum(before.get(results.row_key(row)) == without_gap(row) for row in rows)  # kept as they were
    err.print(f"saved {store.summary(rows, resumed)} in {path}" + (f"; {len(gaps)} breakdowns measured" if gaps else ""),
              highlight=False, soft_wrap=True)
    return {**header, "rows": rows}


# --- where the ideal went, per row ----------------------------------------------------------------------------

def without_gap(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row's measurement without its breakdown: a resumed row to which this run only added one is resumed."""
    return None if row is None else {key: value for key, value in row.items() if key != "ideal_gap"}


def breakdown_passes() -> dict[str, int]:
    """How a row's breakdown (`ideal_gap`) is measured, for the result's header: profiled passes of the row and
    of the stock model each, forwards per pass. A row measured with --no-breakdown has none."""
    from ..measure.breakdown import ROUNDS, STEPS

    return {"rounds": ROUNDS, "steps": STEPS}


def breakdown_steps(by_target: Mapping[float, list[dict[str, Any]]]) -> int:
    """The progress steps of the breakdowns: one per planned row (the stock model has none)."""
    return sum(len(rows) for rows in by_target.values())


def breakdowns(model, config, mine: list[dict[str, Any]], starting, save) -> None:
    """Where the ideal went for each measured row of one target (`mine`: stock first) that has no breakdown
    yet (one resumed keeps its own), each handed to `save(row, breakdown)` as soon as it is measured."""
    from ..measure.breakdown import row_gap
    from ..measure.sweep import InputSizes
    from ..report.compare import setting_text

    sized = InputSizes(model)  # the resolution row's resized copy, dropped with the target
    stock = as_sweep_row(mine[0])
    for row in mine[1:]:
        done = row.get("ideal_gap") is not None
        starting(f"where the ideal went, {row['method']} {setting_text(row['setting'])}" + (" (resumed)" if done else ""))
        if not done:
            save(row, row_gap(model, config, as_sweep_row(row), stock, sized))
