"""The glue of `gtpcli profile --search`: options to a grid, the cost guard, a progress bar with the time
left, a result file saved after every setting, the best per P, and the profile with the winners."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import files, results, search
from .config import RunConfig
from .errors import GtpcliError
from .profile_command import check_output, gtp_values, result_header, stopping_on_signals, sweep_config
from .report import console, emit, render_search


def search_config(opts: RunConfig) -> search.Search:
    """The grid (the GTP hyperparameters given as lists) over the sweep the other options describe."""
    cfg = sweep_config(opts)
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
        files.check_output(opts.write_profile, "--write-profile", ("yaml",))
    return found


def run_search(opts: RunConfig) -> None:
    from . import sweep

    plan = search_config(opts)
    cfg = plan.sweep
    output = check_output(opts.output or Path("gtpcli-results") / f"{cfg.model.replace('/', '_')}-search.json")
    header = result_header(cfg, opts) | {"search": {"method": plan.grid.method, "grid": plan.grid.axes,
                                                    "objective": plan.objective, "holdout": plan.holdout,
                                                    "subset": "seed-0 order of --data: the first --limit images "
                                                              "to choose on, the next --holdout to report on"}}
    model = sweep.build(cfg)
    loaders = search.subsets(model, plan)
    cost = plan.cost(len(loaders["search"].dataset))
    err = console(stderr=True)
    held = f" (+ {len(cfg.Ps) + 1} x {plan.holdout} held-out)" if plan.holdout else ""
    err.print(f"grid: {cost['settings']} settings x {cost['Ps']} values of P + the unreduced model = "
              f"{cost['evaluations']} evaluations x {cost['images']} images{held} = "
              f"{cost['image_evaluations']:,} image evaluations", highlight=False, soft_wrap=True)
    search.guard(cost, opts.yes)
    store = results.ResultFile(output, header)
    existing = store.open()  # a file of another setting is refused here, before anything is measured
    saved = existing if opts.resume else []
    rows: list[dict[str, Any]] = []
    total = cost["evaluations"] + (len(cfg.Ps) + 1 if plan.holdout else 0)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    with stopping_on_signals() as holding, Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(cfg.model, total=total)
        started = [0]

        def save(so_far: list[dict[str, Any]]) -> None:
            with holding():
                store.save(so_far)
                rows[:] = so_far

        def starting(label: str) -> None:
            progress.update(task, description=f"{cfg.model}: {label}", completed=started[0])
            started[0] += 1

        try:
            search.run(plan, model, loaders, saved, save, starting, lambda text: err.print(f"[yellow]warning:[/] {text}"))
        except KeyboardInterrupt as exc:
            progress.stop()
            signum = getattr(exc, "signum", signal.SIGINT)
            err.print(f"interrupted by {signal.Signals(signum).name}: {len(rows)} finished settings saved in "
                      f"{output}; run the same command with --resume to continue", highlight=False, soft_wrap=True)
            raise SystemExit(128 + signum)
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
    from .profiles import load_profile

    cfg = plan.sweep
    note = (f"best {plan.objective} over {best[0]['settings'] if best else 0} settings on {best[0]['images'] if best else 0} "
            f"images of {cfg.data} (seed-0 subset{f', --limit {cfg.limit}' if cfg.limit else ''}), weights {cfg.checkpoint or 'random'}")
    chosen = set(cfg.hparams.get(plan.grid.method, {})) | set(plan.grid.axes)
    files.atomic_write(path, search.profile_with(cfg.profile.path, best, chosen, note), "--write-profile")
    load_profile(str(path))
