"""Render a `plots.Figure` with matplotlib: no display needed (the Agg canvas, no pyplot state), the
Okabe-Ito colour-blind-safe palette, titles, axis labels with units and the environment in a caption line.
Every decision about what to draw is made in `plots.py`; this module only draws it."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from ..errors import GtpcliError
from .plots import NEUTRAL, STOCK, Figure, Panel, Series

FORMATS = ("png", "svg", "pdf")
# Okabe & Ito (2008), distinguishable with every common colour-vision deficiency; black is kept for stock
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
GREYS = ("#4D4D4D", "#8C8C8C", "#BFBFBF", "#E6E6E6")  # the backbone's stages, by lightness alone
HATCHES = ("", "//", "..", "xx")  # a second round of the palette is told apart by hatching
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")
DPI = 100


def save(figure: Figure, path: Path) -> None:
    """Write the figure as PNG, SVG or PDF (from the suffix), atomically."""
    from matplotlib.figure import Figure as Canvas

    from ..files import atomic_write

    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise GtpcliError(f"-o {path}: a figure is .png, .svg or .pdf (or .json for its data)")
    columns = min(len(figure.panels), 3)
    rows = -(-len(figure.panels) // columns)
    fig = Canvas(figsize=(5.6 * columns, 4.2 * rows + 0.5), dpi=DPI, layout="constrained")
    colours, hatches = colour_map(figure), hatch_map(figure)
    for panel, ax in zip(figure.panels, fig.subplots(rows, columns, squeeze=False).flat):
        draw_panel(ax, panel, colours, hatches)
    for ax in fig.axes[len(figure.panels):]:
        ax.set_visible(False)
    fig.suptitle(figure.title, fontsize=12)
    width = 95 * columns  # characters of 7-point text across the figure
    fig.supxlabel("\n".join(textwrap.wrap(figure.caption, width)), fontsize=7, color="#444444")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI)
    atomic_write(path, buffer.getvalue(), "-o")


def colour_map(figure: Figure) -> dict[str, str]:
    """One colour per group across all panels; P=... groups (the tokens kind) run along a sequential map."""
    groups = list(dict.fromkeys(s.group for p in figure.panels for s in p.series if s.group != STOCK))
    sequential = [g for g in groups if g.startswith("P=")]
    colours = {STOCK: "#000000"}
    if sequential:
        from matplotlib import colormaps

        ramp = colormaps["viridis"]
        colours |= {g: _hex(ramp(at / max(len(sequential) - 1, 1) * 0.9)) for at, g in enumerate(sequential)}
    colours |= {g: GREYS[at % len(GREYS)] for at, g in enumerate(g for g in NEUTRAL if g in groups)}
    others = [g for g in groups if g not in colours]
    colours |= {g: PALETTE[at % len(PALETTE)] for at, g in enumerate(others)}
    return colours


def hatch_map(figure: Figure) -> dict[str, str]:
    """Groups past the palette's length get a hatch on top of the repeated colour."""
    groups = [g for g in dict.fromkeys(s.group for p in figure.panels for s in p.series)
              if g not in NEUTRAL and g != STOCK and not g.startswith("P=")]
    return {g: HATCHES[(at // len(PALETTE)) % len(HATCHES)] for at, g in enumerate(groups)}


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def draw_panel(ax, panel: Panel, colours: dict[str, str], hatches: dict[str, str]) -> None:
    stacks: dict[bool, list[float]] = {}  # the tops of the positive stacks and the bottoms of the negative ones
    boxes = [s for s in panel.series if s.mark == "box"]
    for series in panel.series:
        colour = colours.get(series.group, "#000000")
        if series.mark == "bar":
            _stacked(ax, series, colour, hatches.get(series.group, ""), stacks)
        elif series.mark == "box":
            _boxes(ax, series, colour, boxes.index(series), len(boxes))
        else:
            _line(ax, series, colour)
    if boxes:
        ax.plot([], [], " ", label="per image: box = quartiles, whiskers = min/max, diamond = mean")
    if any(y < 0 for s in panel.series if s.mark == "bar" for y in s.y):
        ax.axhline(0.0, color="#000000", linewidth=0.8)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_xscale(panel.xscale)
    ax.set_yscale(panel.yscale)
    if panel.xticks is not None:
        crowded = len(panel.xticks) > 3  # long names side by side would run into each other: slanted
        ax.set_xticks(range(len(panel.xticks)), panel.xticks, fontsize=8 if not crowded else 7,
                      rotation=30 if crowded else 0, ha="right" if crowded else "center", rotation_mode="anchor")
        ax.set_xlim(-0.7, max(len(panel.xticks), 2) - 0.3)  # one bar: as wide as one of two, not the whole panel
    elif all(isinstance(x, int) for s in panel.series for x in s.x):  # blocks, P: no tick at 2.5
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles and panel.xticks is not None:  # stacked bars fill the panel: the legend goes beside it
        ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif handles:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)


def _stacked(ax, s: Series, colour: str, hatch: str, stacks: dict[bool, list[float]]) -> None:
    """One segment per x on its stack: a positive value on top of the positive ones before it, a negative one
    below the negative ones, so parts of opposite signs never hide each other."""
    for sign in (True, False):
        stacks.setdefault(sign, [0.0] * len(s.x))
    bottoms = [stacks[y >= 0][at] for at, y in enumerate(s.y)]
    ax.bar(s.x, s.y, bottom=bottoms, color=colour, label=s.label, width=0.6, hatch=hatch, edgecolor="white",
           linewidth=0.5)
    for at, y in enumerate(s.y):
        stacks[y >= 0][at] += y


def _line(ax, s: Series, colour: str) -> None:
    style = LINESTYLES[s.style % len(LINESTYLES)]
    marker = MARKERS[s.style % len(MARKERS)]
    if s.mark in ("line", "baseline"):  # a sanity baseline: dotted, crosses, told apart from the methods at a glance
        look = (dict(linestyle=style, marker=marker, markersize=4) if s.mark == "line"
                else dict(linestyle=":", linewidth=1.5, marker="x", markersize=6))
        ax.plot(s.x, s.y, color=colour, label=s.label, **look)
        if s.xbounds or s.ybounds:
            ax.errorbar(s.x, s.y, xerr=_spans(s.x, s.xbounds), yerr=_spans(s.y, s.ybounds), fmt="none",
                        ecolor=colour, elinewidth=0.8, capsize=2, alpha=0.7)
    elif s.mark == "paper":
        ax.plot(s.x, s.y, color=colour, linestyle="none", marker=marker, markersize=7, markerfacecolor="none",
                markeredgewidth=1.2, label=s.label)
    elif s.mark == "ideal":
        ax.plot(s.x, s.y, color=colour, linestyle=(0, (5, 3)), linewidth=1.2, label=s.label)
    elif s.mark == "stock":
        ax.plot(s.x, s.y, color=colour, linestyle="none", marker="*", markersize=13, label=s.label)
    elif s.mark == "pareto":
        ax.plot(s.x, s.y, color="#000000", linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                markeredgewidth=0.9, label=s.label)
    elif s.mark == "total":
        ax.plot(s.x, s.y, color=colour, linestyle="none", marker="_", markersize=22, markeredgewidth=2.5,
                label=s.label)
    elif s.mark == "reference":
        ax.plot(s.x, s.y, color="#666666", linestyle=":", linewidth=1, label=s.label)
    else:
        raise ValueError(f"unknown mark {s.mark!r}")
    for x, y, text in zip(s.x, s.y, s.point_labels):
        if s.mark in ("line", "baseline") or (s.mark == "paper" and text in (s.point_labels[0], s.point_labels[-1])):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colour)


def _spans(values, bounds):
    """matplotlib's asymmetric error bars (distances below and above) from [low, high] bounds."""
    if not bounds:
        return None
    return [[v - low for v, (low, _) in zip(values, bounds)], [high - v for v, (_, high) in zip(values, bounds)]]


def _boxes(ax, s: Series, colour: str, at: int, count: int) -> None:
    """One box per block; several settings of one method sit side by side around the block number."""
    width = 0.7 / count
    positions = [x - 0.35 + width * (at + 0.5) for x in s.x]
    ax.bxp(s.boxes, positions=positions, widths=width * 0.85, showmeans=True, showfliers=False, patch_artist=True,
           boxprops={"facecolor": colour, "alpha": 0.45, "edgecolor": colour},
           medianprops={"color": colour}, whiskerprops={"color": colour}, capprops={"color": colour},
           meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": colour, "markersize": 3},
           manage_ticks=False)
    ax.plot([], [], color=colour, linewidth=6, alpha=0.45, label=s.label)
