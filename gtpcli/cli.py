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
                     "P": p.P, "reference": (p.reference or {}).get("source"), "description": p.description})

    def render(result, console):
        columns = [(k, "left") for k in ("name", "timm", "N", "C", "L", "H", "P", "reference")]
        console.print(table("Built-in profiles", columns, [[r[k] or "-" for k, _ in columns] for r in result["rows"]]))

    emit({"rows": rows}, check_format(fmt), None, render)


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
