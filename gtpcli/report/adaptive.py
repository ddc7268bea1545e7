"""The Table-1-style block of an input-dependent method (TPC-ViT): E[GMACs] with its spread where a fixed-P
method shows GMACs, the cost at the mean counts and the gap to it, each batching mode's img/s next to the
MACs it executes, and one table per setting with the per-block token distribution. Reads plain rows
(gtpcli/cost/adaptive.py's contract) only."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from ..cost.adaptive import MODES, RANDOM_SOURCE
from .layout import table


def _g(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _digits(rows: list[dict[str, Any]], stock: dict[str, Any] | None) -> int:
    """Enough decimals that a small model's GMACs are not all 0.00."""
    smallest = min([r["gmacs"] for r in rows if r.get("gmacs")] + ([stock["gmacs"]] if stock and stock.get("gmacs") else []),
                   default=1.0)
    return 2 if smallest >= 1 else 3 if smallest >= 0.1 else 4


def lines(block: list[dict[str, Any]], stock: dict[str, Any] | None) -> list[tuple[str, list[str]]]:
    d = _digits(block, stock)
    found = [
        ("E[GMACs] ± std", [f"{_g(r['gmacs'], d)} ± {_g(r['gmacs_std'], d)}" for r in block]),
        ("GMACs p5 / p50 / p95", [" / ".join(_g(r[k], d) for k in ("gmacs_p5", "gmacs_p50", "gmacs_p95"))
                                  for r in block]),
        ("GMACs at mean tokens", [_g(r["gmacs_at_mean_tokens"], d) for r in block]),
        ("Jensen gap (E - at mean)", [f"{_g(r['jensen_gap_gmacs'], d)} ({r['jensen_gap_gmacs'] / r['gmacs_at_mean_tokens']:+.2%})"
                                      for r in block]),
        ("mean tokens per block", [" ".join(f"{n:.0f}" for n in r["tokens"]) for r in block]),
    ]
    if any(r.get("useful_gmacs") != r["gmacs"] for r in block):   # TPC: [CLS] halts before the last block
        found.insert(4, ("useful GMACs (to [CLS] halt)", [_g(r.get("useful_gmacs"), d) for r in block]))
    if stock and stock.get("gmacs"):
        found.append(("E[GMACs] / stock", [f"{r['gmacs'] / stock['gmacs']:.2f}x" for r in block]))
    for mode in MODES:
        cells = [r.get("batching", {}).get(mode) for r in block]
        if any(c and c.get("img_s") is not None for c in cells):
            size = next(c["batch_size"] for c in cells if c)
            found.append((f"img/s {mode} (batch {size})", [_g(c and c.get("img_s"), 1) for c in cells]))
        found.append((f"{mode}: executed / ideal GMACs", [
            "-" if not c else f"{_g(c['executed_gmacs'], d)} / {_g(c['ideal_gmacs'], d)} ({c['ratio']:.2f}x)"
            for c in cells]))
    if any(r.get("speedup") is not None for r in block):
        found.append(("speed-up vs stock", ["-" if r.get("speedup") is None else f"{r['speedup']:.2f}x" for r in block]))
    if any(r.get("acc") is not None for r in block):
        found.append(("Acc (%)", [_g(r.get("acc"), 1) for r in block]))
    return found


def caption(block: list[dict[str, Any]], stock: dict[str, Any] | None) -> str:
    """The stock model's figures, where the counts come from and whether the controller was trained."""
    first = block[0]
    parts = []
    if stock:
        parts.append(f"stock timm: {_g(stock.get('gmacs'), _digits(block, stock))} GMACs"
                     + (f", {stock['img_s']:.1f} img/s" if stock.get("img_s") is not None else "")
                     + (f", Acc {stock['acc']:.1f}%" if stock.get("acc") is not None else ""))
    parts.append(f"{first['images']} images, {first['counts_source']}")
    if first["counts_source"] == RANDOM_SOURCE:
        parts.append("give --data DIR for the real distribution")
    if any(r.get("untrained_controller") for r in block):
        parts.append("untrained controller (no tpc mapping in the checkpoint)")
    parts.append("E[GMACs] = mean of per-image GMACs, never the GMACs at the mean counts")
    return "; ".join(parts)


def render_distributions(model: str, method: str, block: list[dict[str, Any]], console: Console) -> None:

    for r in block:
        rows = [[str(layer + 1), f"{dist['mean']:.1f}", f"{dist['std']:.1f}", str(dist["min"]), f"{dist['p50']:g}",
                 str(dist["max"])] for layer, dist in enumerate(r["tokens_dist"])]
        columns = [("block", "right"), ("mean", "right"), ("std", "right"), ("min", "right"), ("p50", "right"),
                   ("max", "right")]
        console.print(table(f"{model} + {method} {r['setting']}: tokens entering each block over {r['images']} "
                            "images", columns, rows))
