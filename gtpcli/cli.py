"""The Typer app: one small function per subcommand; the work lives in the modules they call."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from .config.run import SEARCH_GUARD
from .errors import GtpcliError
from .measure.breakdown import cost_text as breakdown_cost
from .methods import REGISTRY, scheduled

METHODS_TEXT = ", ".join(REGISTRY)  # every registered method, for help texts
TITLES = ", ".join(m.title for m in REGISTRY.values())

class _NoBoolType:
    """Help without noise: a switch takes no value, so it shows no `<bool>` type after its name (typer
    0.2x prints one for every flag, --help included)."""

    def format_help(self, ctx, formatter):
        for param in self.get_params(ctx):
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return super().format_help(ctx, formatter)


class Command(_NoBoolType, TyperCommand):
    pass


class Group(_NoBoolType, TyperGroup):
    pass


app = typer.Typer(cls=Group, no_args_is_help=True, rich_markup_mode="rich", add_completion=False,
                  help=f"Analyse and profile token reduction ({TITLES}) in Vision Transformers.")
command = functools.partial(app.command, cls=Command)
err = Console(stderr=True)


def default(text: str) -> str:
    """A "[default: ...]" note for help text; escaped, or Rich would read it as a markup tag and drop it."""
    return escape(f"[default: {text}]")


FormatOpt = typer.Option("table", "--format", "-f", help="table, json, csv, yaml, markdown or latex (booktabs) (to stdout)")
OutputOpt = typer.Option(None, "--output", "-o", help="Also write the result to FILE (.json, .csv or .yaml)")
HpOpt = typer.Option(None, "--hp", metavar="METHOD.NAME=VALUE", help="Any method's hyperparameter as METHOD.NAME=VALUE, repeatable (e.g. "
                     "tcvit.K=4 or tcvit.connectivity=lazy; NAME=VALUE when one chosen method has NAME)")


def friendly(command):
    """Bad input ends in one red line and exit code 2, never a traceback."""
    from .distributed import is_main

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GtpcliError as exc:  # under torchrun rank 0 speaks for all (the others' errors reach it)
            if is_main():
                err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # not click's "Aborted!" and exit 1, which `check` means as a regression
            if is_main():
                err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
    return wrapper


def check_format(fmt: str) -> str:
    from .report.tables import FORMATS
    if fmt not in FORMATS:
        raise GtpcliError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return fmt


@command()
@friendly
def complexity(
    N: Optional[str] = typer.Option(None, "--N", help="Tokens incl. prefix tokens: 197, 4,8 or 197..1025:64"),
    C: Optional[str] = typer.Option(None, "--C", help="Channels (embedding dim), same list/range syntax"),
    L: Optional[int] = typer.Option(None, "--L", help="Layers " + default("12, or the model's")),
    H: Optional[int] = typer.Option(None, "--H", help="Heads " + default("C/64, or the model's")),
    P: Optional[str] = typer.Option(None, "--P", help="Tokens removed per layer, e.g. 8, 4,8 or 0..14 " + default("8")),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Profile name, profile YAML or timm model name"),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also show N_l and every cost term per layer"),
    method: Optional[str] = typer.Option(None, "--method", help=f"Which methods' columns: one or a comma list of {METHODS_TEXT} " + default("all")),
    hp: Optional[list[str]] = HpOpt,
    fmt: str = FormatOpt,
    output: Optional[Path] = OutputOpt,
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the overhead against the swept N, C or P (.png, .svg, .pdf; .json: the plot's data)"),
):
    """Analytic overhead of each reduction method (GTP Eq. 15, ToMe Eq. 14, TC-ViT's variants), exact sums next to the printed closed forms."""
    from . import files
    from .config.options import hparams, methods, positive
    from .config.ranges import parse_values
    from .cost.analytic import Arch
    from .measure.complexity import MAX_ROWS, complexity_result
    from .report.tables import emit, render_complexity

    check_format(fmt)
    if output is not None:
        files.check_output(output, "--output")
    if plot is not None:
        files.check_output(plot, "--plot", FIGURE_FORMATS)
    positive(L, "--L")
    positive(H, "--H")
    if model is None and (N is None or C is None):
        raise GtpcliError("give --N and --C, or --model NAME")
    name, base = _arch_for(model) if model is not None else (None, Arch(N=1, C=1))
    keep_heads = model is not None and C is None  # the model's H holds only for the model's C
    arch = replace(base, L=L if L is not None else base.L, H=H if H is not None else (base.H if keep_heads else None))
    Ns = parse_values(N, "--N") if N is not None else [base.N]
    Cs = parse_values(C, "--C") if C is not None else [base.C]
    Ps = parse_values(P, "--P") if P is not None else [8]
    rows = len(Ns) * len(Cs) * len(Ps)
    if rows > MAX_ROWS:
        raise GtpcliError(f"--N x --C x --P gives {rows:,} rows ({len(Ns):,} x {len(Cs):,} x {len(Ps):,}); "
                          f"at most {MAX_ROWS:,}: use a step, e.g. 197..1025:64")
    chosen = methods(method) if method is not None else list(scheduled())
    result = complexity_result(arch, Ns, Cs, Ps, name, layers=per_layer, methods=chosen, hparams=hparams(hp, chosen))
    if plot is not None:
        from .report import plots
        write_figure(plots.overhead([plots.Source(plot, result)]), plot)
    emit(result, fmt, output, render_complexity)


FIGURE_FORMATS = ("png", "svg", "pdf", "json")


def invocation(ctx: typer.Context) -> str:
    """The running command as a user would type it again: its name and every parameter given on the
    command line (not the defaults), for a report to say what made it."""
    import shlex

    words = ["gtpcli", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE" or value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if param.param_type_name != "option":
            words += [str(v) for v in values]
        elif param.is_flag:
            words.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
        else:
            words += [part for v in values for part in (param.opts[0], str(v))]
    return shlex.join(words)


def write_figure(figure, path: Path) -> None:
    """A figure as an image, or (.json) the data it draws."""
    from . import files

    if path.suffix.lower() == ".json":
        files.atomic_write(path, json.dumps(figure.to_dict(), indent=2) + "\n", "--plot")
    else:
        from .report.draw import save
        save(figure, path)
    err.print(f"figure written: {path}", highlight=False, soft_wrap=True)


@command()
@friendly
def plot(
    results: list[Path] = typer.Argument(..., help="Result files: gtpcli profile -o or gtpcli compare -o, or the --format json of complexity or trace; several overlay"),
    kind: str = typer.Option("tradeoff", "--kind", "-k", help="tradeoff (profile or compare results), speedup, tokens (profile results), overhead (complexity), stages (trace), gap (compare or trace: where the ideal speed-up went, a stacked bar per row)"),
    output: Path = typer.Option(..., "--output", "-o", help="The figure: .png, .svg or .pdf; .json writes the data it draws"),
):
    """Draw a result as the paper's figures: accuracy/speed trade-off, speed-up against the ideal, overhead curves, tokens per block, stage shares, where the ideal went."""
    from . import files
    from .report import plots

    files.check_output(output, "--output", FIGURE_FORMATS)
    write_figure(plots.figure(kind, results), output)


@command("profiles")
@friendly
def list_profiles(fmt: str = FormatOpt,
                  families: bool = typer.Option(False, "--families", help="Instead: which method runs on which timm "
                                                "model family, found by running each on the family's smallest "
                                                "model (random weights, one small image; about a minute)")):
    """List the built-in profiles (any command also takes the path of your own profile YAML)."""
    from .models.profiles import builtin_names, load_profile
    from .report.tables import emit, table

    if families:
        return list_families(check_format(fmt))

    rows = []
    for name in builtin_names():
        p = load_profile(name)
        a = p.arch
        rows.append({"name": p.name, "timm": p.model["timm"], "N": a.N, "C": a.C, "L": a.L, "H": a.heads,
                     "P": p.P, "reference": "; ".join(dict.fromkeys(r["source"] for r in p.reference)) or None,
                     "description": p.description})

    def render(result, console):
        columns = [(k, "left") for k in ("name", "timm", "N", "C", "L", "H", "P", "reference")]
        console.print(table("Built-in profiles", columns, [[r[k] or "-" for k, _ in columns] for r in result["rows"]]))

    emit({"rows": rows}, check_format(fmt), None, render)


def list_families(fmt: str) -> None:
    """The families x methods table: "runs" (with the tokens the first and last blocks attend over) or
    "no [n]", the refusals listed once below it."""
    from .models import families
    from .report.tables import emit, table

    rows = families.table()
    reasons = list(dict.fromkeys(s["why"] for r in rows for s in r["methods"].values() if not s["runs"]))

    def cell(found: dict) -> str:
        if not found["runs"]:
            return f"no [{reasons.index(found['why']) + 1}]"
        tokens = found["tokens"]  # empty for a method that runs the blocks itself (TPC-ViT)
        return f"runs ({tokens[0]}->{tokens[-1]})" if tokens else "runs"

    def render(result, console):
        names = list(REGISTRY)
        columns = [("family", "left"), ("model", "left"), ("traits", "left")] + [(n, "left") for n in names]
        body = [[r["family"], f"{r['model']} @{r['img_size']}", r["traits"]] + [cell(r["methods"][n]) for n in names]
                for r in result["rows"]]
        refusals = "\n".join(f"[{number}] {escape(why)}" for number, why in enumerate(reasons, start=1))
        console.print(table("Methods on timm model families (random weights, P = 1 or the method's defaults; "
                            "runs: tokens the first->last block attends over)", columns, body,
                            caption=refusals or None, keys=2))

    emit({"rows": rows, "refusals": reasons}, fmt, None, render)


GTP = "GTP hyperparameters"
RUN = "Measurement"
ACC = "Accuracy (your weights and images)"
SEARCH = "Best over settings (Table 1/4/5 style)"


DtypeOpt = typer.Option("float32", help="float32, float16 or bfloat16 (model and input are cast)", rich_help_panel=RUN)
AmpOpt = typer.Option(None, help="Autocast to bf16 or fp16 (the model stays float32, as mixed-precision evaluation runs) " + default("off"), rich_help_panel=RUN)
DataOpt = typer.Option(None, "--data", help="Folder of class sub-folders, or a .tar of them (timm's readers), for top-1/top-5; a flat folder of images works with --fidelity", rich_help_panel=ACC)
LimitOpt = typer.Option(None, "--limit", help="Evaluate a fixed random subset of N images (95% interval shown) " + default("every image"), rich_help_panel=ACC)
FidelityOpt = typer.Option(False, "--fidelity/--no-fidelity", help="Agreement (top-1, KL) with the unreduced model at full input size, on the same images", rich_help_panel=ACC)
ClassMapOpt = typer.Option(None, "--class-map", help="Text file, one class folder name per line in the head's order (timm's class map): labels of --data whose classes are not the head's", rich_help_panel=ACC)
ConfigOpt = typer.Option(None, "--config", help="Options from a YAML file of option: value, or a result file "
                         "(replays the run that wrote it); flags given here win " + default("none"))


def given(ctx: typer.Context, apart: tuple[str, ...] = ()) -> dict:
    """The options the user typed (not their defaults), so a --config file's values stand unless overridden;
    `apart`: options of the command that are not run settings."""
    def typed(name: str) -> bool:  # by name: typer may bundle its own copy of click's ParameterSource
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    return {name: value for name, value in ctx.params.items() if name not in ("config", *apart) and typed(name)}


def run_config(ctx: typer.Context, config: Optional[Path], apart: tuple[str, ...] = ()):
    """The RunConfig of this command: defaults, then the --config file, then the typed flags."""
    from .config.run import RunConfig, load

    return RunConfig().merged(load(config) if config is not None else {}).merged(given(ctx, apart))


@command()
@friendly
def profile(
    ctx: typer.Context,
    model: str = typer.Argument("deit_s", help="Profile name, profile YAML path or timm model name; a comma list or a timm wildcard ('vit_*_patch16_224'; VisionTransformer, Eva and BEiT models) profiles each"),
    P: Optional[str] = typer.Option(None, "--P", help="Tokens removed per layer: 8, 4,8,12 or 0..14 " + default("the profile's, or 0..8")),
    method: Optional[str] = typer.Option(None, "--method", help=f"One or a comma list of {METHODS_TEXT} " + default("the profile's, or gtp")),
    alpha: Optional[str] = typer.Option(None, help="Propagation strength alpha, >= 0; a list or range (0.1,0.3 or 0..0.4:0.1) is a grid for --search " + default("the profile's, or 0.1"), rich_help_panel=GTP),
    sparsity: Optional[str] = typer.Option(None, help="Attention sparsity theta in (0, 1], 1 = off; or a list/range, e.g. 0.5..1.0:0.1 " + default("the profile's, or 1"), rich_help_panel=GTP),
    M: Optional[str] = typer.Option(None, "--M", help="Semantic neighbours per token; or a list/range, e.g. 4,8,16 " + default("the profile's, or 8"), rich_help_panel=GTP),
    selection: Optional[str] = typer.Option(None, help="mixed, diag, broad, cls, cossim, random, or a comma list " + default("the profile's, or mixed"), rich_help_panel=GTP),
    graph: Optional[str] = typer.Option(None, help="mixed, spatial, semantic, none, or a comma list " + default("the profile's, or mixed"), rich_help_panel=GTP),
    head_fusion: Optional[str] = typer.Option(None, help="max or mean " + default("the profile's, or max"), rich_help_panel=GTP),
    variant: Optional[str] = typer.Option(None, help="paper (its equations) or authors (the released code, README) " + default("the profile's, or paper"), rich_help_panel=GTP),
    prop_attn: Optional[bool] = typer.Option(None, "--prop-attn/--no-prop-attn", help="Proportional attention (GTP and ToMe; TC-ViT: --hp tcvit.track_sizes=true) " + default("the profile's, or on")),
    hp: Optional[list[str]] = HpOpt,
    delta: Optional[str] = typer.Option(None, "--delta", help="TPC's halting threshold, the sweep axis of the input-dependent method (no retraining): 0.01, 0.01,0.05, 0.01..0.1:0.01, or 0.001..0.2 (6 log-spaced values) " + default("the checkpoint's, or 0.01")),
    bins: Optional[str] = typer.Option(None, "--bins", help="paper: every method at its published setting for each GMACs bin of GTP's Table 2 (deit_s) or 3 (deit_b), in that table's layout, the paper's figures beside"),
    config: Optional[Path] = ConfigOpt,
    checkpoint: Optional[Path] = typer.Option(None, help="Local weights (.pth/.pt/.bin/.tar, .safetensors, .npz); random otherwise", rich_help_panel=RUN),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's published weights, through timm's hub loading (needs network, or the hub cache); a pretrained tag (NAME.TAG) or hf-hub:ORG/REPO picks them", rich_help_panel=RUN),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Require the checkpoint to fit exactly", rich_help_panel=RUN),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N", rich_help_panel=RUN),
    dtype: str = DtypeOpt,
    amp: Optional[str] = AmpOpt,
    compile: bool = typer.Option(False, "--compile", help="torch.compile stock and reduced models alike; compile time is reported apart from img/s, graph breaks and recompiles as warnings", rich_help_panel=RUN),
    compile_mode: str = typer.Option("default", help="torch.compile mode with --compile: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs", rich_help_panel=RUN),
    batch_size: Optional[str] = typer.Option(None, help="Images per timed batch, or a list to sweep (1,8,32,128; stock at each) " + default("128 on CUDA as in the paper, 16 on CPU"), rich_help_panel=RUN),
    img_size: Optional[str] = typer.Option(None, help="Input resolution, or a list to sweep (224,384; stock at each) " + default("the model's"), rich_help_panel=RUN),
    seed: int = typer.Option(0, help="Seed of the timed random input batch and of the order of each timing round", rich_help_panel=RUN),
    runs: Optional[int] = typer.Option(None, help="Timed batches per point, spread over the rounds " + default("30 on CUDA, 20 on CPU"), rich_help_panel=RUN),
    rounds: Optional[int] = typer.Option(None, help="Interleaved rounds: each times the stock model and every point for an equal slice, in a shuffled order; img/s is the median over rounds, a speed-up the median of per-round ratios; 1 = the sequential order " + default("10, at most one per timed batch"), rich_help_panel=RUN),
    warmup: Optional[int] = typer.Option(None, help="Untimed batches per point " + default("10 on CUDA, 1 on CPU"), rich_help_panel=RUN),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="Measure throughput (--no-speed: skip it)", rich_help_panel=RUN),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count MACs (--no-flops: skip it)", rich_help_panel=RUN),
    resume: bool = typer.Option(False, "--resume", help="Reuse the points of this setting already in the output file instead of measuring them again", rich_help_panel=RUN),
    data: Optional[Path] = DataOpt,
    limit: Optional[int] = LimitOpt,
    fidelity: bool = FidelityOpt,
    class_map: Optional[Path] = ClassMapOpt,
    shard_points: bool = typer.Option(False, "--shard-points", help="Under torchrun: give each process whole sweep points (all images) instead of a share of every point's images; results merged into one file", rich_help_panel=ACC),
    search: bool = typer.Option(False, "--search", help="Run every setting of the GTP hyperparameters given as lists at each P on --data (accuracy, or with --fidelity agreement with the unreduced model): every row kept, the best per P shown with the settings tried and the runner-up margin", rich_help_panel=SEARCH),
    holdout: Optional[int] = typer.Option(None, "--holdout", help="Also measure each P's winner on N further images, disjoint from the --limit ones chosen on", rich_help_panel=SEARCH),
    best_per: Optional[str] = typer.Option(None, "--best-per", help="Also the best per value of one searched hyperparameter, over the others: graph gives Table 4's layout, sparsity Table 5's", rich_help_panel=SEARCH),
    write_profile: Optional[Path] = typer.Option(None, "--write-profile", help="Write the profile with the winners as its per_P block (.yaml), for later sweeps", rich_help_panel=SEARCH),
    yes: bool = typer.Option(False, "--yes", help=f"Run a grid above {SEARCH_GUARD:,} image evaluations (settings x images, printed first)", rich_help_panel=SEARCH),
    fmt: str = FormatOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Result file (.json or .yaml), updated after every point; points of earlier runs are kept " + default("gtpcli-results/MODEL.json, with what sets the run apart added: MODEL-w-bfloat16.json for --checkpoint w.pth --dtype bfloat16")),
):
    """Sweep P over a backbone: real GMACs (fvcore), real img/s, speed-ups, and the paper's row (Table-1 style)."""
    from .commands.profile import run_profile
    from .commands.search import run_search

    cfg = run_config(ctx, config)
    check_format(cfg.fmt)
    (run_search if cfg.search else run_profile)(cfg)


@command()
@friendly
def trace(
    ctx: typer.Context,
    model: str = typer.Argument("deit_s", help="Profile name, profile YAML path or timm model name"),
    P: Optional[int] = typer.Option(None, "--P", help="Tokens removed per layer " + default("8; EViT, Evo-ViT and ATS: their own schedule")),
    method: Optional[str] = typer.Option(None, "--method", help=f"One of {METHODS_TEXT} " + default("gtp")),
    hp: Optional[list[str]] = HpOpt,
    config: Optional[Path] = ConfigOpt,
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    dtype: str = DtypeOpt,
    amp: Optional[str] = AmpOpt,
    batch_size: Optional[int] = typer.Option(None, help="Images per forward pass " + default("128 on CUDA, 16 on CPU")),
    img_size: Optional[int] = typer.Option(None, help="Input resolution " + default("the model's")),
    checkpoint: Optional[Path] = typer.Option(None, help="Local weights; random otherwise"),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's published weights, through timm's hub loading (needs network, or the hub cache)"),
    steps: int = typer.Option(3, help="Profiled forward passes (after 1 skipped and 1 warm-up), in the trace files and in each profiled pass of the stage shares"),
    rounds: Optional[int] = typer.Option(None, help="Profiled passes of the stock model and of the method, alternating in a shuffled order; each stage's time is its median over them " + default("3")),
    out: Path = typer.Option(Path("gtpcli-results/trace"), "--out", help="Directory for the TensorBoard profile and trace.json (created if missing)"),
    token_similarity: bool = typer.Option(False, "--token-similarity", help="Instead of timing: over-smoothing as in GTP's Fig. 6, the average cosine similarity between image tokens after each block, stock and reduced"),
    data: Optional[Path] = typer.Option(None, help="--token-similarity: images to measure on (any folder; random images otherwise)"),
    limit: Optional[int] = typer.Option(None, help="--token-similarity: a fixed random subset of N images of --data"),
    fmt: str = FormatOpt,
):
    """Where the time goes: PyTorch profiler over labelled stages, TensorBoard and Chrome traces."""
    from . import files
    from .commands.trace import similarity_result, trace_result
    from .report.tables import emit, render_similarity, render_trace

    cfg = run_config(ctx, config, apart=("out", "token_similarity"))
    check_format(cfg.fmt)
    if token_similarity:
        emit(similarity_result(cfg), cfg.fmt, None, render_similarity)
        return
    if cfg.data is not None or cfg.limit is not None:
        raise GtpcliError("--data and --limit belong to --token-similarity (a trace times random images)")
    files.check_output_dir(out, "--out")
    emit(trace_result(cfg, out), cfg.fmt, None, render_trace)


@command()
@friendly
def check(
    ctx: typer.Context,
    spec: Path = typer.Argument(..., help="Check spec YAML (a 'check:' section, alone or in a profile)"),
    baseline: Optional[Path] = typer.Option(None, help="Baseline (.json or .yaml) to compare with: what --update-baseline or gtpcli profile --output wrote"),
    update_baseline: Optional[Path] = typer.Option(None, help="Measure and write this baseline (.json or .yaml) instead of comparing"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    dtype: str = DtypeOpt,
    amp: Optional[str] = AmpOpt,
    compile: bool = typer.Option(False, "--compile", help="torch.compile stock and reduced models alike (the speed-up metric)", rich_help_panel=RUN),
    junit: Optional[Path] = typer.Option(None, help="Also write JUnit XML (.xml) for CI systems"),
    fmt: str = FormatOpt,
):
    """CI regression check: exit 0 within tolerance, 1 on a regression (named on stderr), 2 on bad input."""
    from . import files
    from .commands import check as regress
    from .config import options
    from .config.run import RunConfig
    from .report.tables import console, emit, render_check
    from .results import write

    check_format(fmt)
    run = RunConfig(device="cpu").merged(given(ctx, apart=("spec", "baseline", "update_baseline", "junit")))
    options.device(run.device, choices=("cpu", "cuda", "cuda:N", "auto"))
    options.dtype(run.dtype)
    options.amp(run.amp, run.dtype)
    if (baseline is None) == (update_baseline is None):
        raise GtpcliError("give exactly one of --baseline FILE or --update-baseline FILE")
    if update_baseline is not None:
        files.check_output(update_baseline, "--update-baseline", regress.BASELINE_FORMATS)
    if junit is not None:
        files.check_output(junit, "--junit", None)
    checks = regress.load_spec(spec)
    base = regress.load_baseline(baseline) if baseline else None
    status = console(stderr=True)
    with status.status("measuring") as progress:
        rows, env = regress.measure(checks, run, lambda label: progress.update(f"measuring {label}"))
    if update_baseline is not None:
        write({"rows": rows, "env": env, "config": run.record()}, update_baseline, "--update-baseline")
        status.print(f"baseline written: {update_baseline} ({len(rows)} rows)", highlight=False)
        return
    result = regress.verdicts(checks, rows, env, base)
    if junit is not None:
        regress.write_junit(result, junit)
    emit(result, fmt, None, render_check)
    for gap in result["environment_differs"]:
        status.print(f"[yellow]note:[/] the baseline was measured with another {gap}", highlight=False, soft_wrap=True)
    failed = [r for r in result["rows"] if r["verdict"] != "pass"]
    for r in failed:
        at = r["P"] if isinstance(r["P"], str) else f"P={r['P']}"   # an adaptive method's point: "delta=0.01"
        status.print(f"regression: {r['model']} {r['method']} {at} {r['metric']}: baseline {r['baseline']}, "
                     f"now {r['now']} (tolerance {r['tolerance']}"
                     + (", from the rounds' spread)" if r.get("tolerance_from") == "spread" else ")"),
                     highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@command()
@friendly
def compare(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Profile name, profile YAML path or timm model name"),
    gmacs: Optional[str] = typer.Option(None, "--gmacs", help="Target costs in GMACs, e.g. 3.5,3.0,2.6"),
    speedup: Optional[str] = typer.Option(None, "--speedup", help="Instead of --gmacs, measured-speed targets over the stock model, e.g. 1.2,1.5: each method at the setting that reaches the speed-up, solved from a short timing of its ideal setting"),
    bins: Optional[str] = typer.Option(None, "--bins", help="paper: instead of --gmacs, the GMACs bins of GTP-ViT's Table 2 (deit_s) or 3 (deit_b), with the paper's figures and settings beside each method (reference, not results)"),
    method: Optional[str] = typer.Option(None, "--method", help=f"Which methods: one or a comma list of {METHODS_TEXT} " + default("all")),
    hp: Optional[list[str]] = HpOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (each target's setting per method, solved from the cost model, and the resolution baseline) and stop"),
    checkpoint: Optional[Path] = typer.Option(None, help="Local weights (.pth/.pt/.bin/.tar, .safetensors, .npz); random otherwise", rich_help_panel=RUN),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's published weights, through timm's hub loading (needs network, or the hub cache)", rich_help_panel=RUN),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N", rich_help_panel=RUN),
    dtype: str = DtypeOpt,
    batch_size: Optional[int] = typer.Option(None, help="Images per timed batch " + default("128 on CUDA, 16 on CPU"), rich_help_panel=RUN),
    seed: int = typer.Option(0, help="Seed of the timed random input batch and of the order of each timing round", rich_help_panel=RUN),
    runs: Optional[int] = typer.Option(None, help="Timed batches per row, spread over the rounds " + default("30 on CUDA; on CPU one per round, 10"), rich_help_panel=RUN),
    rounds: Optional[int] = typer.Option(None, help="Interleaved rounds per target: each times the stock model and every row of the target for an equal slice, in a shuffled order " + default("10, at most one per timed batch"), rich_help_panel=RUN),
    warmup: Optional[int] = typer.Option(None, help="Untimed batches per row " + default("10 on CUDA, 1 on CPU"), rich_help_panel=RUN),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already measured in the result file instead of measuring them again", rich_help_panel=RUN),
    breakdown: bool = typer.Option(True, "--breakdown/--no-breakdown", help="After a target's timing, where each row's ideal speed-up went (own stages, attention, MLP, rest): "
                                   f"{breakdown_cost()} (--no-breakdown: skip them)", rich_help_panel=RUN),
    data: Optional[Path] = DataOpt,
    limit: Optional[int] = LimitOpt,
    fidelity: bool = FidelityOpt,
    class_map: Optional[Path] = ClassMapOpt,
    fmt: str = FormatOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Result file (.json or .yaml), saved after every row; with --dry-run, the plan (.json, .csv or .yaml) " + default("gtpcli-results/MODEL-compare.json, named by the setting as profile's")),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a report folder: README.md (the conditions, the tables, the figures), the result as JSON and each figure its rows can draw"),
):
    """Every method at matched cost (or matched measured speed, --speedup): for each target GMACs, each method at its nearest setting and the random and resolution baselines, measured with the stock model in interleaved rounds (with --data, their accuracy or fidelity on the same images)."""
    from . import files
    from .commands.compare import cost_line, measure, paper_targets, plan, plan_speedups, speedup_targets, targets
    from .config.options import hparams, methods
    from .config.run import RunConfig
    from .report.compare import check_report_dir, render_measured, render_plan, write_report
    from .report.tables import emit

    check_format(fmt)
    if report is not None:
        if dry_run:
            raise GtpcliError("--report writes what was measured; leave out --dry-run")
        check_report_dir(report)
    chosen = methods(method) if method is not None else list(REGISTRY)
    if [gmacs, speedup, bins].count(None) != 2:
        raise GtpcliError("give the targets: --gmacs 3.5,3.0,2.6, --speedup 1.2,1.5 or --bins paper (one of them)")
    if dry_run and output is not None:
        files.check_output(output, "--output")
    name, timm_name, arch = _model_for(model)
    given_hp = hparams(hp, chosen)
    if speedup is not None:
        planned = plan_speedups(name, arch, speedup_targets(speedup), given_hp, chosen)
    else:
        wanted = targets(gmacs) if gmacs is not None else paper_targets(bins, timm_name)
        planned = plan(name, arch, wanted, given_hp, chosen, timm_name)
    say = lambda text: err.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    if dry_run:
        say(cost_line(planned))
        emit(planned, fmt, output, render_plan)
        return
    run = RunConfig(model=model, method=",".join(chosen), hp=list(hp or []), checkpoint=checkpoint,
                    pretrained=pretrained, device=device, dtype=dtype,
                    batch_size=None if batch_size is None else str(batch_size), seed=seed, runs=runs,
                    rounds=rounds, warmup=warmup, resume=resume, data=data, limit=limit, fidelity=fidelity,
                    class_map=class_map, fmt=fmt, output=output)
    measured = measure(run, planned, say, breakdown=breakdown, arch=arch, hparams=given_hp)
    emit(measured, fmt, None, render_measured)
    if report is not None:
        say(f"report written: {write_report(measured, report, invocation(ctx))}")


@command()
@friendly
def bench(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="The first case only (DeiT-S, batch 16, P = 8)"),
    tcvit: bool = typer.Option(False, "--tcvit", help="Instead: GTP, ToMe and TC-ViT's series, lazy and newton solvers at equal P, each solver against the series"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    rounds: Optional[int] = typer.Option(None, help="Interleaved rounds per case " + default("as profile: 10")),
    runs: Optional[int] = typer.Option(None, help="Timed batches per configuration " + default("as profile: 20 on CPU")),
    output: Path = typer.Option(Path("gtpcli-results/bench.json"), "--output", "-o", help="The rows and the targets (.json or .yaml)"),
    fmt: str = FormatOpt,
):
    """GTP's speed targets (a benchmark, never a test): each case a plain `gtpcli profile` run, stock timm and the methods in the same interleaved rounds."""
    from . import files
    from .commands.bench import bench_result, render_bench
    from .config.run import RunConfig
    from .report.tables import console, emit

    check_format(fmt)
    files.check_output(output, "--output", ("json", "yaml"))
    run = RunConfig(device="cpu").merged(given(ctx, apart=("quick", "tcvit", "output")))
    status = console(stderr=True)
    with status.status("benchmarking") as progress:
        result = bench_result(run, quick, tcvit, lambda label: progress.update(label),
                              lambda text: status.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True))
    emit(result, fmt, output, render_bench)


def _arch_for(model: str):
    """(name, Arch) for a profile name or path (no torch needed) or any timm ViT name (built on the meta
    device, without weights); unknown names get close matches."""
    name, _, arch = _model_for(model)
    return name, arch


def _model_for(model: str):
    """(name, timm name, Arch) for a profile name or path (no torch needed) or any timm ViT name."""
    from .models.profiles import find_profile

    profile = find_profile(model)
    if profile is not None:
        return profile.name, profile.model["timm"], profile.arch
    from .models import backbones

    _, timm_name = backbones.resolve(model)
    return timm_name, timm_name, backbones.arch_for(timm_name)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
