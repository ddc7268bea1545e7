"""The Typer app: one small function per subcommand; the work lives in the modules they call."""

from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import GtpcliError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", add_completion=False,
                  help="Analyse and profile token reduction (GTP, ToMe) in Vision Transformers.")
err = Console(stderr=True)

FormatOpt = typer.Option("table", "--format", "-f", help="table, json, csv or yaml (to stdout)")
OutputOpt = typer.Option(None, "--output", "-o", help="Also write the result to FILE (.json/.csv/.yaml)")


def friendly(command):
    """Bad input ends in one red line and exit code 2, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GtpcliError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def check_format(fmt: str) -> str:
    from .report import FORMATS
    if fmt not in FORMATS:
        raise GtpcliError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return fmt


@app.command()
@friendly
def complexity(
    N: Optional[str] = typer.Option(None, "--N", help="Tokens incl. prefix tokens: 197, 4,8 or 197..1025:64"),
    C: Optional[str] = typer.Option(None, "--C", help="Channels (embedding dim), same list/range syntax"),
    L: Optional[int] = typer.Option(None, "--L", help="Layers [default: 12, or the model's]"),
    H: Optional[int] = typer.Option(None, "--H", help="Heads [default: C/64, or the model's]"),
    P: Optional[str] = typer.Option(None, "--P", help="Tokens removed per layer [default: 8], e.g. 0..14"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Profile name, profile YAML or timm name"),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also show N_l and every cost term per layer"),
    fmt: str = FormatOpt,
    output: Optional[Path] = OutputOpt,
):
    """Analytic overhead of GTP vs ToMe (paper appendix C.4), exact sums next to the printed closed forms."""
    from .analytic import Arch
    from .complexity import complexity_result
    from .ranges import parse_values
    from .report import emit, render_complexity

    check_format(fmt)
    if model is None and (N is None or C is None):
        raise GtpcliError("give --N and --C, or --model NAME")
    profile = _profile_for(model) if model is not None else None
    base = profile.arch if profile else Arch(N=1, C=1)
    keep_heads = profile is not None and C is None  # the model's H holds only for the model's C
    arch = replace(base, L=L or base.L, H=H if H is not None else (base.H if keep_heads else None))
    Ns = parse_values(N, "--N") if N is not None else [base.N]
    Cs = parse_values(C, "--C") if C is not None else [base.C]
    Ps = parse_values(P, "--P") if P is not None else [8]
    result = complexity_result(arch, Ns, Cs, Ps, profile.name if profile else None, layers=per_layer)
    emit(result, fmt, output, render_complexity)


@app.command("profiles")
@friendly
def list_profiles(fmt: str = FormatOpt):
    """List the built-in profiles (any command also takes the path of your own profile YAML)."""
    from .profiles import builtin_names, load_profile
    from .report import emit, table

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


GTP = "GTP hyperparameters"
RUN = "Measurement"
ACC = "Accuracy (your weights and images)"


@app.command()
@friendly
def profile(
    model: str = typer.Argument("deit_s", help="Profile name, profile YAML path or timm model name"),
    P: Optional[str] = typer.Option(None, "--P", help="Tokens removed per layer: 8, 4,8,12 or 0..14 [default: the profile's]"),
    method: Optional[str] = typer.Option(None, "--method", help="gtp, tome or gtp,tome [default: the profile's]"),
    alpha: Optional[float] = typer.Option(None, help="Propagation strength alpha", rich_help_panel=GTP),
    sparsity: Optional[float] = typer.Option(None, help="Attention sparsity theta (1 = off)", rich_help_panel=GTP),
    M: Optional[int] = typer.Option(None, "--M", help="Semantic neighbours per token", rich_help_panel=GTP),
    selection: Optional[str] = typer.Option(None, help="mixed, diag, broad, cls, cossim, random", rich_help_panel=GTP),
    graph: Optional[str] = typer.Option(None, help="mixed, spatial, semantic, none", rich_help_panel=GTP),
    head_fusion: Optional[str] = typer.Option(None, help="max or mean", rich_help_panel=GTP),
    prop_attn: Optional[bool] = typer.Option(None, "--prop-attn/--no-prop-attn", help="Proportional attention (GTP and ToMe)"),
    checkpoint: Optional[Path] = typer.Option(None, help="Local weights (.pth/.pt/.bin/.tar, .safetensors, .npz); random otherwise", rich_help_panel=RUN),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Require the checkpoint to fit exactly", rich_help_panel=RUN),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N", rich_help_panel=RUN),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16 (model and input are cast)", rich_help_panel=RUN),
    batch_size: Optional[int] = typer.Option(None, help="[default: 128 on CUDA as in the paper, 16 on CPU]", rich_help_panel=RUN),
    img_size: Optional[int] = typer.Option(None, help="Input resolution [default: the model's]", rich_help_panel=RUN),
    runs: Optional[int] = typer.Option(None, help="Timed batches per point (at least)", rich_help_panel=RUN),
    warmup: Optional[int] = typer.Option(None, help="Untimed batches per point", rich_help_panel=RUN),
    no_speed: bool = typer.Option(False, "--no-speed", help="Skip throughput", rich_help_panel=RUN),
    no_flops: bool = typer.Option(False, "--no-flops", help="Skip MAC counting", rich_help_panel=RUN),
    resume: bool = typer.Option(False, "--resume", help="Reuse the points already saved in the output file", rich_help_panel=RUN),
    data: Optional[Path] = typer.Option(None, help="ImageFolder (class sub-folders) for top-1/top-5; a flat folder of images works with --fidelity", rich_help_panel=ACC),
    limit: Optional[int] = typer.Option(None, help="Evaluate a fixed random subset of N images (95% interval shown)", rich_help_panel=ACC),
    fidelity: bool = typer.Option(False, "--fidelity", help="Agreement (top-1, KL) with the unreduced model on the same images", rich_help_panel=ACC),
    fmt: str = FormatOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Result file, rewritten after every point [default: gtpcli-results/MODEL.json]"),
):
    """Sweep P over a backbone: real GMACs (fvcore), real img/s, speed-ups, and the paper's row (Table-1 style)."""
    from .profile_command import ProfileOptions, run_profile

    check_format(fmt)
    hparams = {"alpha": alpha, "sparsity": sparsity, "M": M, "selection": selection, "graph": graph,
               "head_fusion": head_fusion}
    run_profile(ProfileOptions(model, P, method, {k: v for k, v in hparams.items() if v is not None}, prop_attn,
                               checkpoint, strict, device, dtype, batch_size, img_size, runs, warmup,
                               not no_speed, not no_flops, resume, fmt, output, data, limit, fidelity))


@app.command()
@friendly
def trace(
    model: str = typer.Argument("deit_s", help="Profile name, profile YAML path or timm model name"),
    P: int = typer.Option(8, "--P", help="Tokens removed per layer"),
    method: str = typer.Option("gtp", "--method", help="gtp or tome"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    batch_size: Optional[int] = typer.Option(None, help="[default: 128 on CUDA, 16 on CPU]"),
    img_size: Optional[int] = typer.Option(None, help="Input resolution [default: the model's]"),
    checkpoint: Optional[Path] = typer.Option(None, help="Local weights; random otherwise"),
    steps: int = typer.Option(3, help="Profiled forward passes (after 1 skipped and 1 warm-up)"),
    out: Path = typer.Option(Path("gtpcli-results/trace"), "--out", help="Directory for the TensorBoard profile and trace.json"),
    fmt: str = FormatOpt,
):
    """Where the time goes: PyTorch profiler over labelled stages, TensorBoard and Chrome traces."""
    from .report import emit, render_trace
    from .trace_command import trace_result

    check_format(fmt)
    if steps < 1:
        raise GtpcliError(f"--steps must be >= 1, got {steps}")
    emit(trace_result(model, method, P, device, batch_size, out, img_size, checkpoint, steps), fmt, None, render_trace)


@app.command()
@friendly
def check(
    spec: Path = typer.Argument(..., help="Check spec YAML (a 'check:' section, alone or in a profile)"),
    baseline: Optional[Path] = typer.Option(None, help="Baseline JSON to compare with (gtpcli profile --output, or --update-baseline)"),
    update_baseline: Optional[Path] = typer.Option(None, help="Measure and write this baseline instead of comparing"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    junit: Optional[Path] = typer.Option(None, help="Also write JUnit XML for CI systems"),
    fmt: str = FormatOpt,
):
    """CI regression check: exit 0 within tolerance, 1 on a regression (named on stderr), 2 on bad input."""
    from . import regress
    from .report import console, emit, render_check, write

    check_format(fmt)
    if (baseline is None) == (update_baseline is None):
        raise GtpcliError("give exactly one of --baseline FILE or --update-baseline FILE")
    checks = regress.load_spec(spec)
    base = regress.load_baseline(baseline) if baseline else None
    status = console(stderr=True)
    with status.status("measuring") as progress:
        rows, env = regress.measure(checks, device, lambda label: progress.update(f"measuring {label}"))
    if update_baseline is not None:
        write({"rows": rows, "env": env}, update_baseline)
        status.print(f"baseline written: {update_baseline} ({len(rows)} rows)")
        return
    result = regress.verdicts(checks, rows, env, base)
    if junit is not None:
        regress.write_junit(result, junit)
    emit(result, fmt, None, render_check)
    failed = [r for r in result["rows"] if r["verdict"] != "pass"]
    for r in failed:
        status.print(f"regression: {r['model']} {r['method']} P={r['P']} {r['metric']}: baseline {r['baseline']}, "
                     f"now {r['now']} (tolerance {r['tolerance']})", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _profile_for(model: str):
    """A profile by name, path or timm model name; unknown names get close matches."""
    from .profiles import builtin_names, find_profile, suggest

    profile = find_profile(model)
    if profile is None:
        raise GtpcliError(f"unknown model {model!r}{suggest(model, builtin_names())}")
    return profile


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
