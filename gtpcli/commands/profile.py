"""The glue of `gtpcli profile`: options to a sweep, a progress bar, a result file kept current."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import files, results
from ..config.ranges import parse_values
from ..config.run import RunConfig
from ..errors import GtpcliError
from ..report.tables import console, emit, render_bins, render_profile


def sweep_configs(opts: RunConfig, world=None) -> list:
    """One SweepConfig per (image size, batch size) of the grid, image size outermost (one model each)."""
    cfg = sweep_config(opts, world)
    batches = axis(opts.batch_size, "--batch-size") or [cfg.timing.batch_size]
    sizes = axis(opts.img_size, "--img-size") or [None]
    return [replace(cfg, img_size=size, timing=replace(cfg.timing, batch_size=batch)) for size in sizes for batch in batches]


def axis(text: str | None, flag: str) -> list[int] | None:
    """A sweep axis: "16" or "1,8,32,128", each value >= 1 and none twice (None when not given)."""
    from ..config import options

    if text is None:
        return None
    values = parse_values(text, flag, limit=64)
    for value in values:
        options.positive(value, flag)
    if len(set(values)) != len(values):
        raise GtpcliError(f"{flag}: {text!r} names a value twice")
    return values


def sweep_config(opts: RunConfig, world=None):
    """Every option checked, and refused in one line, before a model is built or a point measured (the
    first batch and image size of the grid; `sweep_configs` makes the others)."""
    from .. import distributed
    from ..config import options
    from ..measure import speed, sweep
    from ..models import backbones

    options.device(opts.device)
    options.dtype(opts.dtype)
    amp = options.amp(opts.amp, opts.dtype)
    options.compile_mode(opts.compile_mode)
    if opts.compile_mode != "default" and not opts.compile:
        raise GtpcliError(f"--compile-mode {opts.compile_mode} needs --compile")
    if opts.compile and opts.warmup == 0:
        raise GtpcliError("--compile needs --warmup >= 1 (the first pass compiles; it is timed apart)")
    batches, sizes = axis(opts.batch_size, "--batch-size"), axis(opts.img_size, "--img-size")
    for flag, value, low in (("--runs", opts.runs, 1), ("--rounds", opts.rounds, 1), ("--warmup", opts.warmup, 0),
                             ("--limit", opts.limit, 1)):
        options.at_least(value, low, flag)
    profile, timm_name = backbones.resolve(opts.model)
    if opts.pretrained and opts.checkpoint is not None:
        raise GtpcliError("give --pretrained (timm's published weights) or --checkpoint FILE, not both")
    if opts.checkpoint is not None and not opts.checkpoint.is_file():
        raise GtpcliError(f"checkpoint not found: {opts.checkpoint}")
    device = speed.resolve_device(opts.device)
    timing = speed.Timing.default(distributed.device_for(world, device) if world else device, opts.dtype, amp)
    overrides = {k: v for k, v in (("batch_size", batches and batches[0]), ("warmup", opts.warmup)) if v is not None}
    timing = replace(timing, **overrides).budget(opts.runs, opts.rounds)
    if opts.method is not None:
        methods = options.methods(opts.method)
    else:
        methods = options.methods(profile.method, f"{profile.path}: key 'method'") if profile else ["gtp"]
    if opts.P is not None:
        Ps = parse_values(opts.P, "--P")
    else:
        Ps = parse_values(profile.P, f"{profile.path}: key 'P'") if profile else parse_values("0..8")
    hparams = hparam_overrides(opts, methods)
    if opts.bins is None:  # a sweep gives every fixed-P method its P, from --P or the profile
        from ..methods import REGISTRY
        swept = opts.P is not None or any(not REGISTRY[m].adaptive for m in methods)
        options.used_by_P(swept, methods, hparams, "its published settings run with --bins paper")
    if opts.fidelity and opts.data is None:
        raise GtpcliError("--fidelity needs --data DIR (any folder of images)")
    if opts.limit is not None and opts.data is None:
        raise GtpcliError("--limit N needs --data DIR")
    if opts.class_map is not None and (opts.data is None or not opts.class_map.is_file()):
        raise GtpcliError(f"--class-map {opts.class_map}: " + ("needs --data" if opts.data is None else "no such file"))
    if opts.data is not None:
        from ..measure.accuracy import check_folder
        check_folder(opts.data, opts.fidelity)
    bins = paper_bins(opts, timm_name, methods if opts.method is not None else None)
    if bins is not None:
        methods = list(dict.fromkeys(method for method, *_ in bins))
    return sweep.SweepConfig(model=profile.name if profile else timm_name, timm_name=timm_name, profile=profile,
                             methods=methods, Ps=Ps, timing=timing, hparams=hparams, checkpoint=opts.checkpoint,
                             strict=opts.strict, img_size=sizes and sizes[0], flops=opts.flops, speed=opts.speed,
                             data=opts.data, limit=opts.limit, fidelity=opts.fidelity, pretrained=opts.pretrained,
                             shard_points=opts.shard_points, class_map=opts.class_map,
                             bins=bins, sweeps=adaptive_sweeps(opts.delta, methods),
                             compile=opts.compile_mode if opts.compile else None, seed=opts.seed)


def adaptive_sweeps(delta: str | None, methods: list[str]) -> dict[str, list[float]]:
    """`--delta` for the chosen input-dependent method whose axis it is; refused where none is chosen."""
    from ..config.ranges import threshold_values
    from ..methods import REGISTRY

    if delta is None:
        return {}
    owner = next((REGISTRY[m] for m in methods if REGISTRY[m].sweep_key == "delta"), None)
    if owner is None:
        raise GtpcliError("--delta is the halting threshold of tpc: add tpc to --method (e.g. --method gtp,tpc)")
    return {"delta": threshold_values(next(h for h in owner.hparams if h.name == "delta"), delta, "--delta")}


def paper_bins(opts: RunConfig, timm_name: str, methods: list[str] | None):
    """--bins paper: (method, P, setting, bin) for every GMACs bin of the backbone's table in GTP's paper,
    for the chosen methods or every one gtpcli runs."""
    if opts.bins is None:
        return None
    from ..methods import REGISTRY
    from ..reference import bins as paper_bins

    if opts.bins != "paper":
        raise GtpcliError(f"--bins must be 'paper' (GTP's Tables 2/3), got {opts.bins!r}")
    if opts.P is not None:
        raise GtpcliError("--bins paper runs each method at its published setting per bin: leave out --P")
    chosen = methods or [m for m in paper_bins.runnable(timm_name) if m in REGISTRY]
    return paper_bins.points(timm_name, chosen)


def hparam_overrides(run: RunConfig, methods: list[str]) -> dict[str, dict[str, Any]]:
    """{method: hyperparameters set by the run} (GTP's own flags, --prop-attn, --hp), over the profile's."""
    from ..config import options
    from ..methods import REGISTRY

    fixed = {name: values[0] for name, values in gtp_values(run).items() if len(values) == 1}
    hparams = {name: {} for name in REGISTRY} | {"gtp": fixed}
    if run.prop_attn is not None:  # the methods whose proportional attention is a switch of its own
        for name, values in hparams.items():
            if "prop_attn" in REGISTRY[name].defaults() and REGISTRY[name].defaults()["prop_attn"] is not None:
                values["prop_attn"] = run.prop_attn
    for name, values in options.hparams(gtp_lists(run.hp)[1], methods).items():
        hparams[name].update(values)
    return hparams


def gtp_lists(hp: list[str] | None) -> tuple[dict[str, str], list[str]]:
    """`--hp gtp.NAME=a,b` (or a range) for a GTP hyperparameter: a grid axis like the flags' lists (the way
    to search `prop_attn=on,off`); returns those {NAME: text} and the other --hp items."""
    from ..methods import CENTRE, REGISTRY

    known = {h.name for h in REGISTRY[CENTRE].hparams}
    lists, rest = {}, []
    for item in hp or []:
        name, _, text = str(item).partition("=")
        method, _, key = name.strip().partition(".")
        if method == CENTRE and key in known and ("," in text or ".." in text):
            lists[key] = text
        else:
            rest.append(item)
    return lists, rest


def gtp_values(run: RunConfig) -> dict[str, list]:
    """Every GTP hyperparameter the run gives, as the list of values it names (`0..0.4:0.1`, `mixed,none`);
    more than one value is a grid, which only --search runs."""
    from ..config.ranges import hparam_values
    from ..methods import REGISTRY

    known = {h.name: h for h in REGISTRY["gtp"].hparams}
    flags = {name: ("--" + name.replace("_", "-"), text) for name, text in run.gtp_hparams.items()}
    flags |= {name: (f"--hp gtp.{name}", text) for name, text in gtp_lists(run.hp)[0].items()}
    found = {name: hparam_values(known[name], text, flag) for name, (flag, text) in flags.items()}
    listed = [name for name, values in found.items() if len(values) > 1]
    if listed and not run.search:
        flag, text = flags[listed[0]]
        raise GtpcliError(f"{flag} {text} names {len(found[listed[0]])} values: add --search to run "
                          "them as a grid, or give one value")
    return found


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the sweep stops, keeping every finished point."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stopping_on_signals():
    """SIGINT and SIGTERM both end the sweep like Ctrl-C; a signal that arrives while a point is being
    saved takes effect when the save is done, so the file is never left between two states. Yields a
    context manager that marks such a save."""
    state = {"held": 0, "pending": None}

    def handler(signum, frame):
        if state["held"]:
            state["pending"] = signum
        else:
            raise Interrupted(signum)

    @contextmanager
    def held():
        state["held"] += 1
        try:
            yield
        finally:
            state["held"] -= 1
            if not state["held"] and state["pending"] is not None:
                signum, state["pending"] = state["pending"], None
                raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def keeping_finished(progress, rows: list, store, world, what: str):
    """Ctrl-C, SIGTERM, or an error on any process: one line saying what finished `what` (points, settings)
    the result file keeps and how to go on from them."""
    try:
        yield
    except KeyboardInterrupt as exc:
        progress.stop()
        signum = getattr(exc, "signum", signal.SIGINT)
        kept = f" ({store.kept} other points kept)" if store and store.kept else ""
        if world.main:
            console(stderr=True).print(f"interrupted by {signal.Signals(signum).name}: {len(rows)} finished {what} "
                                       f"saved in {store.path}{kept}; run the same command with --resume to continue",
                                       highlight=False, soft_wrap=True)
        raise SystemExit(128 + signum)
    except GtpcliError as exc:
        if not rows or store is None:
            raise
        raise GtpcliError(f"{exc}; the {len(rows)} finished {what} are saved in {store.path} (run the same "
                          "command with --resume to continue)") from None


def check_output(output: Path) -> Path:
    """The result file must be one we can read back (to merge and resume) and write, checked first."""
    if output.suffix.lower() == ".csv":
        raise GtpcliError(f"--output {output}: the result file is read back to merge and resume runs, so it "
                          "must be .json or .yaml (for CSV, use --format csv > FILE)")
    return files.check_output(output, "--output", ("json", "yaml"))


def result_header(cfg, opts: RunConfig, sizes: list | None = None) -> dict[str, Any]:
    """What every row of a result file shares: model, weights, images, environment, the run's configuration
    (`sizes`: the image sizes of a grid, when it has several)."""
    from ..measure import speed

    weights = str(cfg.checkpoint) if cfg.checkpoint else f"pretrained: {cfg.timm_name}" if cfg.pretrained else "random weights"
    default_size = cfg.profile.model["img_size"] if cfg.profile else None
    return {"model": cfg.model, "timm": cfg.timm_name, "weights": weights,
            "img_size": sizes if sizes and len(sizes) > 1 else cfg.img_size or default_size,
            "data": str(cfg.data.resolve()) if cfg.data else None, "limit": cfg.limit,
            "env": speed.fingerprint(cfg.timing, cfg.compile, cfg.seed), "config": opts.record()}


def run_profile(opts: RunConfig) -> None:
    """One process, or each of the processes torchrun started (see gtpcli.distributed)."""
    from .. import distributed
    from ..models import backbones

    for flag, given in (("--holdout", opts.holdout), ("--write-profile", opts.write_profile), ("--best-per", opts.best_per)):
        if given is not None:
            raise GtpcliError(f"{flag} belongs to --search")
    world = distributed.start(opts.device)
    try:
        names = world.together(lambda: backbones.expand(opts.model))  # a name, a comma list, timm wildcards
        grids = world.together(lambda: [sweep_configs(replace(opts, model=name), world) for name in names])
        found = []
        for name, cfgs in zip(names, grids):  # each model its own result file and its own block
            result = _run_profile(replace(opts, model=name), world, cfgs, several=len(names) > 1)
            if result is not None and (opts.fmt == "table" or len(names) == 1):
                emit(result, opts.fmt, None, render_bins if cfgs[0].bins is not None else render_profile)
            found.append(result)
        if world.main and len(names) > 1 and opts.fmt != "table":
            emit({"results": found, "rows": [row for result in found for row in result["rows"]]}, opts.fmt, None,
                 render_profile)
    finally:
        world.close()


def output_for(output: Path | None, model: str, several: bool, header: dict[str, Any]) -> Path:
    """The result file of one model: --output, with the model's name added when one run profiles several;
    without --output, the file of this run's setting in gtpcli-results/ (see results.default_path)."""
    stem = model.replace("/", "_")
    if output is None:
        return results.default_path(Path("gtpcli-results"), stem, header)
    return output.with_name(f"{output.stem}-{stem}{output.suffix}") if several else output


def _run_profile(opts: RunConfig, world, cfgs: list, several: bool) -> dict[str, Any] | None:
    """One model over its grid of (image size, batch size), saved after every point; its result (None in
    the processes that are not rank 0)."""
    from ..measure import sweep

    cfg = cfgs[0]
    writes = world.main or cfg.shard_points  # sharing images, rank 0 alone writes; sharing points, each does
    header = result_header(cfg, opts, list(dict.fromkeys(c.img_size for c in cfgs)))
    named = world.together(lambda: output_for(opts.output, cfg.model, several, header) if world.main else None)
    chosen = world.broadcast(named)  # rank 0 names the file for every process
    output = world.together(lambda: check_output(chosen) if writes else None)
    if world.size > 1:
        header["distributed"] = distributed_label(cfg, world)
    built = {}  # one model per image size; a bad checkpoint is refused before the result file is read
    for c in cfgs:
        if c.img_size not in built:
            built[c.img_size] = world.together(lambda c=c: sweep.build(c))
    store = results.ResultFile(output, header) if writes else None
    existing = world.together(store.open if writes else list)
    saved = existing if opts.resume else []
    if not cfg.shard_points:
        saved = world.broadcast(saved)  # every process skips the points rank 0 resumes
    rows: list[dict[str, Any]] = []
    err = console(stderr=True)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with stopping_on_signals() as held, Progress(*columns, console=err, transient=True,
                                                 disable=not world.main) as progress:
        task = progress.add_task(cfg.model, total=sum(sweep.steps(c, world) for c in cfgs))
        before: list[dict[str, Any]] = []  # the rows of the grid's earlier combinations
        current = cfg

        def save(so_far: list[dict[str, Any]]) -> None:
            with held():
                if store is not None:
                    store.save(before + so_far)
                rows[:] = before + so_far

        started = []  # the steps begun: each point, then each timing round

        def starting(label: str) -> None:
            where = f" batch {current.timing.batch_size}" + (f", {current.img_size} px" if current.img_size else "")
            progress.update(task, completed=len(started), description=f"{cfg.model}{where if len(cfgs) > 1 else ''}: {label}")
            started.append(label)

        def sweeping():
            nonlocal before, current
            for current in cfgs:
                sweep.run(current, saved, save, starting, lambda text: err.print(f"[yellow]warning:[/] {text}"),
                          model=built[current.img_size], world=world)
                before = list(rows)

        with keeping_finished(progress, rows, store, world, "points"):
            world.together(sweeping)
    if not world.main:
        return None
    if cfg.shard_points and world.size > 1:  # the points of every process, merged by the result file
        rows = [row for c in cfgs for row in merged_rows(store, c, built[c.img_size])]
    resumed = sum(any(row is old for old in saved) for row in rows)
    note = "" if cfg.checkpoint or cfg.pretrained or cfg.data else " (random weights: accuracy not measured)"
    err.print(f"saved {store.summary(rows, resumed)} in {output}{note}", highlight=False, soft_wrap=True)
    return {**header, "rows": rows}


def distributed_label(cfg, world) -> str:
    """What the processes shared, and where the throughput was measured, for the result's header."""
    if cfg.shard_points:
        return (f"{world.size} processes ({world.backend}), whole points each; every row's img/s was measured by "
                "one process on its own device (see measured_by)")
    return (f"{world.size} processes ({world.backend}) shared each point's images; MACs and img/s measured by rank 0 "
            f"alone on {cfg.timing.device}, one process per device, the others waiting")


def merged_rows(store, cfg, model) -> list[dict[str, Any]]:
    """This sweep's points (one batch and image size of the grid) as the result file holds them after every
    process saved its own, with the columns computed over all of them (the stock point may have been
    another process's)."""
    from ..measure import sweep
    from ..models import backbones

    size = sweep.side(backbones.image_size(model))
    wanted = {results.row_key({"model": cfg.model, "method": method, "P": P,
                               "hparams": cfg.hparams_for(method, P, setting) if method != sweep.STOCK else {},
                               "batch_size": cfg.timing.batch_size, "img_size": size})
              for method, P, setting, _ in cfg.points()}
    rows = sweep.with_columns([row for row in results.read(store.path)["rows"] if results.row_key(row) in wanted], cfg)
    store.save(rows)
    return rows
