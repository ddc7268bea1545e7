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
from ..methods.solve import solve

RESOLUTION = "resolution"  # the baseline that lowers the input size instead of the tokens per block
STOCK = "stock"            # the unreduced model, measured with every target as its reference
MAX_TARGETS = 32


def targets(text: str) -> list[float]:
    """`3.5,3.0,2.6` to GMACs, each positive and none twice, in the order given."""
    return numbers(text, "--gmacs", 0, "positive")


def speedup_targets(text: str) -> list[float]:
    """`1.2,1.5` to speed-ups over the stock model, each above 1 (the stock model's own) and none twice."""
    return numbers(text, "--speedup", 1, "above 1 (the stock model's own speed)")


def numbers(text: str, option: str, floor: float, above: str) -> list[float]:
    found = parse_numbers(text, option, limit=MAX_TARGETS)
    if any(value <= floor for value in found):
        raise GtpcliError(f"{option}: every target must be {above}, got {text!r}")
    if len(set(found)) != len(found):
        raise GtpcliError(f"{option}: {text!r} names a target twice")
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
    rows, skipped = [], []
    for method in [*(methods if methods is not None else REGISTRY), RESOLUTION]:
        found = solve_row(arch, method, target, hparams)
        if isinstance(found, Miss):
            skipped.append({"target_gmacs": target, "method": method, "reason": found.reason})
        else:
            rows.append(found)
    return rows, skipped


def solve_row(arch: Arch, method: str, gmacs: float, hparams: Mapping[str, Mapping[str, Any]],
              target: float | None = None) -> dict[str, Any] | Miss:
    """A method's (or the resolution baseline's) planned row at the setting nearest `gmacs`, filed under
    `target` (a speed target's rows are solved at GMACs of their own), or why it has none."""
    macs = round(gmacs * 1e9)
    if method == RESOLUTION:
        size = resolution(arch, macs)
        if isinstance(size, Miss):
            return Miss(f"resolution: {size.reason}")
        return setting_row(gmacs if target is None else target, RESOLUTION, {"img_size": size.value}, size.macs)
    found = solve(arch, REGISTRY[method], macs, hparams.get(method))
    if isinstance(found, Miss):
        return found
    return setting_row(gmacs if target is None else target, method, found.kwargs, found.macs)


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


def plan_speedups(name: str, arch: Arch, speedups: Sequence[float],
                   hparams: Mapping[str, Mapping[str, Any]] | None = None,
                   methods: Sequence[str] | None = None) -> dict[str, Any]:
    """The plan of measured-speed targets before any timing: each speed-up's rows at its ideal GMACs (the
    stock model's over the speed-up, to 6 significant digits), filed under that cost; `calibrated` corrects
    each row's setting by a short timing once the model is built."""
    from ..report.plots import speedup_of

    stock = stock_macs(arch) / 1e9
    planned = {**plan(name, arch, [float(f"{stock / s:.6g}") for s in speedups], hparams, methods),
               "targets_speedup": list(speedups)}
    for item in planned["rows"] + planned["skipped"] + planned["unreached"]:
        item["target_speedup"] = speedup_of(planned, item["target_gmacs"])
    return planned


def retarget(arch: Arch, row: dict[str, Any], measured: float, hparams: Mapping[str, Mapping[str, Any]]
             ) -> dict[str, Any] | Miss:
    """A speed target's row solved again from what a short timing measured at its setting: a method that
    reached `measured` speed-up at g GMACs reached measured / (stock / g) of its ideal, so at the same share it
    reaches the target speed-up s at g * measured / s GMACs. One correction, no search: the table says how
    near the measured speed-up came."""
    from ..report.compare import setting_text

    speedup = row["target_speedup"]
    asked = float(f"{row['gmacs'] * measured / speedup:.6g}")
    found = solve_row(arch, row["method"], asked, hparams, target=row["target_gmacs"])
    calibration = {"setting": row["setting"], "gmacs": row["gmacs"], "speedup": measured, "asked_gmacs": asked}
    if isinstance(found, Miss):
        return Miss(f"{row['method']} at {speedup:g}x: {measured:.2f}x at {setting_text(row['setting'])} asks for "
                    f"{asked:.3f} GMACs; {found.reason}")
    return {**found, "target_speedup": speedup, "calibration": calibration}


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
    corrected = (f"; at each speed target every setting is first corrected by a short timing ({CALIBRATION_RUNS} "
                 "batches per row)") if "targets_speedup" in result else ""
    return (f"compare {result['model']}: {len(rows)} runs to measure ({len(targets_)} target{plural}, {methods} "
            f"methods and baselines){corrected}" + (f"; {reasons} skipped, each said below" if reasons else ""))


# --- measuring the plan -------------------------------------------------------------------------------------

def as_point(row: dict[str, Any]) -> tuple[str, int | None, dict[str, Any]]:
    """A planned row as a sweep point (method, P, its own setting): the resolution baseline is the stock
    model at its own input size (the sweep's `img_size` setting), a method's knob its P or its own setting."""
    setting = dict(row["setting"])
    if row["method"] == RESOLUTION:
        return STOCK, 0, setting
    return row["method"], setting.pop("P", None), setting


PLAN_ONLY = ("paper", "target_speedup", "calibration")  # what a measured row keeps from its planned row


def as_measured(row: dict[str, Any], planned: dict[str, Any], target: float) -> dict[str, Any]:
    """A sweep row as the comparison keeps it: whole (nothing measured is lost), named as the plan names it
    (method, setting; the sweep's own schedule label kept as `schedule`), with its target and exact GMACs."""
    found = {**row, "target_gmacs": target, "method": planned["method"], "setting": planned["setting"]}
    found |= {key: planned[key] for key in PLAN_ONLY if key in planned}
    if "setting" in row:
        found["schedule"] = row["setting"]
    found["gmacs"] = row["macs"] / 1e9 if row.get("macs") else None
    found["analytic_gmacs"] = row["analytic_macs"] / 1e9 if row.get("analytic_macs") else None
    found["gap"] = found["gmacs"] / target - 1 if found["gmacs"] else None
    return found


def as_sweep_row(row: dict[str, Any]) -> dict[str, Any]:
    """A saved row as the sweep wrote it, to resume it: `as_measured` undone (the resolution baseline is the
    stock model, the sweep's schedule label its `setting`)."""
    found = {key: value for key, value in row.items() if key not in ("setting", "schedule", *PLAN_ONLY)}
    if "schedule" in row:
        found["setting"] = row["schedule"]
    return {**found, "method": STOCK} if row["method"] == RESOLUTION else found


def with_ideal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One target's rows (stock first) with the ideal speed-up, stock GMACs over the row's, and the share of
    it the measured speed-up reached; at a speed target, how far the measured speed-up is from it."""
    stock = rows[0].get("gmacs") if rows else None
    for row in rows:
        ideal = stock / row["gmacs"] if stock and row.get("gmacs") else None
        row["ideal_speedup"] = round(ideal, 3) if ideal else None
        row["share_of_ideal"] = round(row["speedup"] / ideal, 3) if ideal and row.get("speedup") else None
        if row.get("target_speedup") and row["method"] != STOCK:
            row["speedup_gap"] = round(row["speedup"] / row["target_speedup"] - 1, 4) if row.get("speedup") else None
    return rows


def measured_rows(target: float, planned: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweep's rows of one target (stock, then the planned rows in order, as far as they got)."""
    speed = {"target_speedup": planned[0]["target_speedup"]} if planned and "target_speedup" in planned[0] else {}
    stock = {"method": STOCK, "setting": {}, **speed}
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


CPU_RUNS = 10  # timed batches per row on CPU by default: one per round (profile's 20 are two)


def timed_once_per_round(cfg, runs: int | None):
    """profile's timing, except that on CPU, unless --runs is given, each round times every row once: a
    target has 8 configurations, three targets 24, and one batch per round keeps `gtpcli compare deit_s
    --gmacs 3.5,3.0,2.6` within 10 minutes on 2 idle cores (docs/compare.md), the median over 10 rounds."""
    if runs is not None or cfg.timing.device.startswith("cuda"):
        return cfg
    return replace(cfg, timing=replace(cfg.timing, runs=max(CPU_RUNS, cfg.timing.rounds)))


def target_config(cfg, rows: list[dict[str, Any]]):
    """The sweep of one target: the stock model and these planned rows, as points."""
    return replace(cfg, methods=sorted({r["method"] for r in rows if r["method"] != RESOLUTION}),
                   only=[as_point(r) for r in rows])


def by_target(planned: dict[str, Any]) -> dict[float, list[dict[str, Any]]]:
    """The planned rows of each target that has any, in the plan's order."""
    found = {t: [r for r in planned["rows"] if r["target_gmacs"] == t] for t in planned["targets_gmacs"]}
    return {t: rows for t, rows in found.items() if rows}


def measure(opts, planned: dict[str, Any], announce=lambda text: None, breakdown: bool = True,
            arch: Arch | None = None, hparams: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Every target of the plan measured: the stock model and the target's rows as sweep points, timed in the
    same interleaved rounds, then (`breakdown`) where each row's ideal went, from profiled passes; each finished
    row and breakdown saved to the result file at once (resume: rows and breakdowns already in it are kept, not
    measured again). Speed targets (`plan_speedups`; `arch` and `hparams` as planned) first have their
    settings corrected by a short timing (`calibrated`). `announce` gets the cost line once every option is
    checked, before the model is built. The measured result: the header (model, weights, environment, plan)
    and the rows of this comparison, target by target."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .. import results
    from ..distributed import World
    from ..measure import sweep
    from ..report.plots import speedup_of, target_text
    from ..report.tables import console
    from .profile import keeping_finished, result_header, stopping_on_signals, sweep_config

    cfg = timed_once_per_round(sweep_config(opts), opts.runs)
    speed = "targets_speedup" in planned
    every = target_config(cfg, planned["rows"])
    header = {**result_header(cfg, opts), "command": "compare", "stock_gmacs": planned["stock_gmacs"],
              "targets_gmacs": planned["targets_gmacs"],
              **{key: planned[key] for key in ("targets_speedup",) if speed},
              "skipped": planned["skipped"], "unreached": planned["unreached"], "measured": True,
              "breakdown": breakdown_passes()}
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
        started: list[str] = []

        def steps_of(plan_: dict[str, Any]) -> int:
            targets_ = by_target(plan_)
            return (sum(sweep.steps(target_config(cfg, r)) for r in targets_.values())
                    + (breakdown_steps(targets_) if breakdown else 0))

        task = progress.add_task(cfg.model, total=steps_of(planned) + (calibration_steps(cfg, planned) if speed else 0))

        def progress_at(target: float):
            name = target_text(target, speedup_of(planned, target))

            def starting(label: str) -> None:
                progress.update(task, completed=len(started), description=f"{cfg.model} at {name}: {label}")
                started.append(label)
            return starting

        def save_breakdowns(found: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
            with held():
                for row, gap in found:
                    row["ideal_gap"] = gap
                    gaps.append(gap)
                store.save(rows)

        def measuring(planned):
            if speed:
                planned = calibrated(model, cfg, planned, arch, hparams or {}, saved, progress_at, warn)
                header["skipped"] = planned["skipped"]
                sweep.check(model, target_config(cfg, planned["rows"]))  # the corrected settings, before timing
                progress.update(task, total=len(started) + steps_of(planned))
            for target, planned_rows in by_target(planned).items():
                before = list(rows)

                def save(so_far: list[dict[str, Any]], target=target, planned_rows=planned_rows) -> None:
                    with held():
                        rows[:] = before + measured_rows(target, planned_rows, so_far)
                        store.save(rows)

                config = target_config(cfg, planned_rows)
                mine = [as_sweep_row(r) for r in saved if r.get("target_gmacs") == target]
                sweep.run(config, mine, save, progress_at(target), warn, model=model)
                if breakdown:
                    breakdowns(model, config, rows[len(before):], progress_at(target), save_breakdowns)

        with keeping_finished(progress, rows, store, World(), "rows"):
            measuring(planned)
    before = {results.row_key(row): without_gap(row) for row in saved}
    resumed = sum(before.get(results.row_key(row)) == without_gap(row) for row in rows)  # kept as they were
    err.print(f"saved {store.summary(rows, resumed)} in {path}" + (f"; {len(gaps)} breakdowns measured" if gaps else ""),
              highlight=False, soft_wrap=True)
    return {**header, "rows": rows}


# --- speed targets: each row's setting corrected by a short timing --------------------------------------------

CALIBRATION_RUNS = 6  # timed batches per row, one per interleaved round, of the timing that corrects the settings


def calibration_config(cfg, rows: list[dict[str, Any]]):
    """The short timing of a speed target's rows: no data, no MAC counting, one batch per round for
    `CALIBRATION_RUNS` rounds (or the measurement's own runs, if fewer)."""
    runs = min(CALIBRATION_RUNS, cfg.timing.runs)
    timing = replace(cfg.timing, runs=runs, rounds=runs)
    return replace(target_config(cfg, rows), data=None, fidelity=False, flops=False, timing=timing)


def calibration_steps(cfg, planned: dict[str, Any]) -> int:
    """The progress steps of the short timings: each target's points and rounds."""
    from ..measure import sweep

    return sum(sweep.steps(calibration_config(cfg, rows)) for rows in by_target(planned).values())


def calibrated(model, cfg, planned: dict[str, Any], arch: Arch, hparams: Mapping[str, Mapping[str, Any]],
               saved: list[dict[str, Any]], progress_at, warn) -> dict[str, Any]:
    """The speed targets' plan with each row solved again (`retarget`) from the speed-up a short interleaved
    timing of its ideal setting measured; resuming, a row already measured for the same target and method
    keeps the setting it was measured at (its calibration is in the row), so the comparison goes on where it
    stopped. A row whose corrected setting is out of reach is skipped with its reason."""
    from ..measure import sweep

    rows, skipped = [], list(planned["skipped"])
    for target, planned_rows in by_target(planned).items():
        kept = {r["method"]: r for r in saved if r.get("target_gmacs") == target and r.get("calibration")}
        todo = [r for r in planned_rows if r["method"] not in kept]
        timed = sweep.run(calibration_config(cfg, todo), [], lambda so_far: None, progress_at(target), warn,
                          model=model) if todo else []
        measured = {r["method"]: t.get("speedup") for r, t in zip(todo, timed[1:])}
        for row in planned_rows:
            if row["method"] in kept:
                rows.append(as_planned(kept[row["method"]]))
                continue
            found = retarget(arch, row, measured[row["method"]], hparams) if measured[row["method"]] else \
                Miss(f"{row['method']} at {row['target_speedup']:g}x: the short timing measured no speed-up")
            if isinstance(found, Miss):
                skipped.append({"target_gmacs": target, "target_speedup": row["target_speedup"],
                                "method": row["method"], "reason": found.reason})
            else:
                rows.append(found)
    return {**planned, "rows": rows, "skipped": skipped}


def as_planned(row: dict[str, Any]) -> dict[str, Any]:
    """A saved row of a speed target as the plan row it was measured from."""
    found = setting_row(row["target_gmacs"], row["method"], row["setting"], round(row["analytic_gmacs"] * 1e9))
    return {**found, "target_speedup": row["target_speedup"], "calibration": row["calibration"]}


# --- where the ideal went, per row, beside one set of stock passes per target ------------------------------

def without_gap(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row's measurement without its breakdown: a resumed row to which this run only added one is resumed."""
    return None if row is None else {key: value for key, value in row.items() if key != "ideal_gap"}


def breakdown_passes() -> dict[str, Any]:
    """How a row's breakdown (`ideal_gap`) is measured, for the result's header: profiled passes of each row
    and of the stock model, forwards per pass, and that one set of stock passes serves the target's rows. A
    row measured with --no-breakdown has none."""
    from ..measure.breakdown import ROUNDS, STEPS

    return {"rounds": ROUNDS, "steps": STEPS, "stock": "shared by the target's rows"}


def breakdown_steps(by_target: Mapping[float, list[dict[str, Any]]]) -> int:
    """The progress steps of the breakdowns: one per profiled round of each target."""
    from ..measure.breakdown import ROUNDS

    return ROUNDS * len(by_target)


def breakdowns(model, config, mine: list[dict[str, Any]], starting, save) -> None:
    """Where the ideal went for each measured row of one target (`mine`: stock first) that has no breakdown
    yet (one resumed keeps its own), from the same profiled passes beside one set of the stock model's, all
    handed to `save([(row, breakdown), ...])` as soon as they are measured."""
    from ..measure.breakdown import ROUNDS, target_gaps
    from ..measure.sweep import InputSizes

    todo = [row for row in mine[1:] if row.get("ideal_gap") is None]
    if not todo:
        starting("where the ideal went (resumed)")
        return
    label = f"where the ideal went: {len(todo)} rows beside stock, profiled round"
    found = target_gaps(model, config, [as_sweep_row(r) for r in todo], as_sweep_row(mine[0]), InputSizes(model),
                        lambda round_: starting(f"{label} {round_}/{ROUNDS}"))
    save(list(zip(todo, found)))
