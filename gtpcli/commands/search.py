"""The glue of `gtpcli profile --search`: options to a grid, the cost guard, a progress bar with the time
left, a result file saved after every setting, the best per P, and the profile with the winners. Under
torchrun the processes share each setting's images and rank 0 alone prints and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import files, results
from ..config.run import RunConfig
from ..errors import GtpcliError
from ..measure import search
from ..report.tables import console, emit, render_search
from .profile import check_output, gtp_values, keeping_finished, result_header, stopping_on_signals, sweep_config


def search_config(opts: RunConfig, world=None) -> search.Search:
    """The grid (the GTP hyperparameters given as lists) over the sweep the other options describe."""
    if opts.shard_points:
        raise GtpcliError("--shard-points belongs to a plain sweep: under torchrun a search shares every "
                          "setting's images between the processes")
    cfg = sweep_config(opts, world)
    axes = {name: values for name, values in gtp_values(opts).items() if len(values) > 1}
    if not axes:
        raise GtpcliError("--search needs a GTP hyperparameter with several values, e.g. --alpha 0..0.4:0.1 "
                          "or --graph mixed,none")
    best_per = opts.best_per.replace("-", "_") if opts.best_per else None
    found = search.Search(cfg, search.Grid("gtp", axes), opts.holdout, best_per)
    search.check(found)
    if opts.write_profile is not None:
        if cfg.profile is None:
            raise GtpcliError("--write-profile extends a profile: give a profile name or YAML file "
                              "(`gtpcli profiles` lists them), not a timm model name")
        if world is None or world.main:  # rank 0 writes it
            files.check_output(opts.write_profile, "--write-profile", ("yaml",))
    return found


def run_search(opts: RunConfig) -> None:
    """One process, or each of the processes torchrun started (see gtpcli.distributed)."""
    from .. import distributed

    world = distributed.start(opts.device)
    try:
        _run_search(opts, world)
    finally:
        world.close()


def _run_search(opts: RunConfig, world) -> None:
    from ..measure import sweep

    plan = world.together(lambda: search_config(opts, world))
    cfg = plan.sweep
    header = result_header(cfg, opts) | {"search": {"method": plan.grid.method, "grid": plan.grid.axes,
                                                    "objective": plan.objective, "holdout": plan.holdout,
                                                    "subset": "seed-0 order of --data: the first --limit images "
                                                              "to choose on, the next --holdout to report on"}}
    stem = f"{cfg.model.replace('/', '_')}-search"  # named by its setting, as profile's default file is
    output = world.together(lambda: check_output(opts.output or results.default_path(Path("gtpcli-results"), stem,
                                                                                    header)) if world.main else None)
    if world.size > 1:
        header["distributed"] = f"{world.size} processes ({world.backend}) shared each setting's images"
    model = world.together(lambda: sweep.build(cfg))
    loaders = world.together(lambda: search.subsets(model, plan, world))
    cost = plan.cost(len(loaders["search"].dataset))
    err = console(stderr=True)
    held = f" (+ {len(cfg.Ps) + 1} x {plan.holdout} held-out)" if plan.holdout else ""
    if world.main:
        err.print(f"grid: {cost['settings']} settings x {cost['Ps']} values of P + the unreduced model = "
                  f"{cost['evaluations']} evaluations x {cost['images']} images{held} = "
                  f"{cost['image_evaluations']:,} image evaluations", highlight=False, soft_wrap=True)
    search.guard(cost, opts.yes)
    store = results.ResultFile(output, header) if world.main else None
    existing = world.together(store.open if store else list)  # a file of another setting is refused here
    saved = world.broadcast(existing if opts.resume else [])  # every process skips what rank 0 resumes
    rows: list[dict[str, Any]] = []
    total = cost["evaluations"] + (len(cfg.Ps) + 1 if plan.holdout else 0)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    with stopping_on_signals() as holding, Progress(*columns, console=err, transient=True,
                                                    disable=not world.main) as progress:
        task = progress.add_task(cfg.model, total=total)
        started = [0]

        def save(so_far: list[dict[str, Any]]) -> None:
            with holding():
                if store is not None:
                    store.save(so_far)
                rows[:] = so_far

        def starting(label: str) -> None:
            progress.update(task, description=f"{cfg.model}: {label}", completed=started[0])
            started[0] += 1

        warn = (lambda text: err.print(f"[yellow]warning:[/] {text}")) if world.main else (lambda text: None)
        with keeping_finished(progress, rows, store, world, "settings"):
            world.together(lambda: search.run(plan, model, loaders, saved, save, starting, warn, world))
    if not world.main:
        return
    best = search.best_per_P(rows, plan, cost["images"])
    grouped = {"best_per": {"name": plan.best_per, "rows": search.best_per_value(rows, plan, plan.best_per)}} \
        if plan.best_per else {}
    emit({**header, "best": best, **grouped, "rows": rows}, opts.fmt, None, render_search)
    resumed = sum(any(row is old for old in saved) for row in rows)
    err.print(f"saved {store.summary(rows, resumed)} in {output}", highlight=False, soft_wrap=True)
    if opts.write_profile is not None:
        write_profile(plan, best, opts.write_profile)
        err.print(f"profile written: {opts.write_profile} (per_P for P = {', '.join(str(b['P']) for b in best)})",
                  highlight=False, soft_wrap=True)


def write_profile(plan: search.Search, best: list[dict[str, Any]], path: Path) -> None:
    """The profile with the winners as its per_P block, read back before the command ends."""
    from ..models.profiles import load_profile

    cfg = plan.sweep
    note = (f"best {plan.objective} over {best[0]['settings'] if best else 0} settings on {best[0]['images'] if best else 0} "
            f"images of {cfg.data} (seed-0 subset{f', --limit {cfg.limit}' if cfg.limit else ''}), weights {cfg.checkpoint or 'random'}")
    chosen = set(cfg.hparams.get(plan.grid.method, {})) | set(plan.grid.axes)
    files.atomic_write(path, search.profile_with(cfg.profile.path, best, chosen, note), "--write-profile")
    load_profile(str(path))
