"""`gtpcli plot` as data: result files in, plain figure objects out (what each panel draws: its series,
their labels, the reference points, the caption). `draw.py` renders them with matplotlib; nothing here
imports it, so the data can be tested, and written as JSON, on its own.

Result files read: `gtpcli profile` (tradeoff, speedup, tokens), `gtpcli compare` (tradeoff, gap),
`gtpcli complexity --format json` (overhead) and `gtpcli trace --format json` (stages, gap).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import GtpcliError

STOCK = "stock"
IQR_NOTE = "; bars: interquartile range of the timed batches"
ROUNDS_NOTE = "; speed-ups: median of the per-round ratios to stock in interleaved rounds, bars: their quartiles"
LOG_SPREAD = 20  # an axis whose values span more than this factor is drawn on a log scale


@dataclass
class Series:
    """One thing drawn in a panel. `mark` says how: line (measured), baseline (a dotted line, crosses),
    paper (hollow markers of the same colour), ideal (dashed line), stock (a star), pareto (a black ring
    around points of other series), bar (one stacked segment per x: positive values stack up from 0, negative
    ones down from 0), total (a tick per x: the sum of a stack), box (one box per x)."""

    label: str
    x: list[Any]
    y: list[float | None]
    mark: str = "line"
    group: str = ""                  # same group, same colour
    style: int = 0                   # line style / marker: which result file it came from
    point_labels: list[str] = field(default_factory=list)
    boxes: list[dict[str, float]] = field(default_factory=list)  # mark == "box": med, q1, q3, whislo, whishi, mean
    xbounds: list[list[float]] = field(default_factory=list)      # per point [low, high]: the timing's IQR
    ybounds: list[list[float]] = field(default_factory=list)


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    xscale: str = "linear"
    yscale: str = "linear"
    xticks: list[str] | None = None  # category names (bars), drawn at x = 0, 1, ...


@dataclass
class Figure:
    kind: str
    title: str
    panels: list[Panel]
    caption: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Source:
    """A result file, read."""

    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem


def load(path: Path) -> Source:
    """A result file of any gtpcli command (JSON or YAML), checked to be a mapping with rows."""
    from .. import files

    data = files.load_data(Path(path), "result file")
    if not isinstance(data, dict) or not isinstance(data.get("rows", data.get("stages")), list):
        raise GtpcliError(f"{path} is not a gtpcli result (no 'rows' list): give what gtpcli profile -o, "
                          "gtpcli compare -o, gtpcli complexity --format json or gtpcli trace --format json wrote")
    return Source(Path(path), data)


def kind_of(source: Source) -> str:
    """profile, compare, complexity or trace, from the result's shape."""
    data = source.data
    if "stages" in data and "forward_ms" in data:
        return "trace"
    rows = data["rows"]
    if data.get("command") == "compare" or any(isinstance(r, dict) and "target_gmacs" in r for r in rows):
        return "compare"
    if rows and all(isinstance(r, dict) and "N" in r and "C" in r and "method" not in r for r in rows):
        return "complexity"
    if all(isinstance(r, dict) and isinstance(r.get("method"), str) for r in rows):
        return "profile"
    raise GtpcliError(f"{source.path}: cannot tell which gtpcli command wrote it")


MAKES = {"profile": "gtpcli profile MODEL -o FILE.json", "compare": "gtpcli compare MODEL --gmacs ... -o FILE.json",
         "complexity": "gtpcli complexity ... --format json > FILE.json",
         "trace": "gtpcli trace MODEL --format json > FILE.json"}


def expect(sources: Sequence[Source], wanted: str, kind: str) -> None:
    for source in sources:
        found = kind_of(source)
        if found != wanted:
            raise GtpcliError(f"{source.path} is a gtpcli {found} result; --kind {kind} reads gtpcli {wanted} "
                              f"results ({MAKES[wanted]})")
        if not source.data.get("rows") and wanted != "trace":
            raise GtpcliError(f"{source.path} has no rows")
        if wanted == "profile" and not _methods(source.data["rows"]):
            raise GtpcliError(f"{source.path}: only the stock model was measured; sweep a method into this file "
                              "with gtpcli profile MODEL --method NAME")
        for at, row in enumerate(source.data.get("rows") if wanted != "trace" else []):
            for key in numeric_keys(row):
                value = row.get(key)
                values = value if key == "tokens" and isinstance(value, list) else [value]
                if value is not None and not all(is_number(v) for v in values):
                    raise GtpcliError(f"{source.path}: rows[{at}].{key} is {value!r}, not a number; is the file "
                                      "hand-edited?")


NUMERIC = ("N", "C", "P", "target_gmacs", "img_s", "img_s_q1", "img_s_q3", "gmacs", "gmacs_p5", "gmacs_p95", "acc", "fidelity_top1",
           "paper_gmacs", "paper_img_s", "paper_acc", "tokens")


def numeric_keys(row: dict) -> list[str]:
    """The fields a plot computes with: the profile's measurements and every method's complexity column."""
    from ..methods import REGISTRY

    columns = {c.key for method in REGISTRY.values() for c in method.columns}
    return [k for k in row if k in NUMERIC or k in columns]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- labels shared by the kinds -----------------------------------------------------------------------

def title_of(method: str) -> str:
    from ..methods import REGISTRY

    return REGISTRY[method].title if method in REGISTRY else method


def device_of(data: dict[str, Any]) -> str:
    env = data.get("env", {})
    return env.get("device_name") or env.get("device") or data.get("device") or "?"


def caption(sources: Sequence[Source], more: Callable[[Source], list[str]] = lambda s: []) -> str:
    """The environment each file was measured in, one clause per file (`more`: a kind's own conditions)."""
    parts = []
    for s in sources:
        env = s.data.get("env", {})
        where = ", ".join(str(v) for v in (
            s.data.get("model"), s.data.get("weights"),
            f"{env.get('device', '?')} ({env['device_name']})" if env.get("device_name") else env.get("device"),
            env.get("dtype"), f"batch {env['batch_size']}" if env.get("batch_size") else None,
            f"torch {env['torch']}" if env.get("torch") else None,
            f"data {Path(s.data['data']).name}" if s.data.get("data") else None, *more(s)) if v)
        parts.append(where if len(sources) == 1 else f"{s.name}: {where}")
    return " | ".join(parts)


def hardware(source_text: str) -> str:
    """'A6000' from 'GTP-ViT Table 1 (A6000, batch 128, ...)': the first item in the parentheses."""
    inside = re.search(r"\(([^,)]+)", source_text or "")
    return inside.group(1).strip() if inside else "published"


def conditions(source_text: str, accuracy: bool) -> str:
    """What a published figure must be read with: its hardware, and for an accuracy whether the model was
    finetuned and whether it is the best over several settings."""
    text = source_text or ""
    tags = [hardware(text)]
    if "finetun" in text and "no finetuning" not in text:
        tags.append("finetuned")
    if accuracy and "best over settings" in text:
        tags.append("best over settings")
    return ", ".join(tags)


def scale(values: Sequence[float | None]) -> str:
    found = [v for v in values if v is not None and v > 0]
    return "log" if found and max(found) / min(found) > LOG_SPREAD else "linear"


def _methods(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows if r["method"] != STOCK))


def _need(source: Source, key: str, what: str, how: str) -> None:
    if not any(r.get(key) is not None for r in source.data["rows"]):
        raise GtpcliError(f"{source.path}: no {what} in any row; {how}")


def paper_label(seen: set[tuple], sources: Sequence[Source], source: Source, method: str,
                paper: Sequence[dict], accuracy: bool) -> str | None:
    """The legend of a method's published points: once per model, method and paper, however many files
    repeat them; None when there are none or they are drawn already."""
    if not paper:
        return None
    text = paper[0].get("paper_source", "")
    key = (source.data.get("model"), method, text)
    if key in seen:
        return None
    seen.add(key)
    model = f", {source.data.get('model')}" if len({s.data.get("model") for s in sources}) > 1 else ""
    return f"{title_of(method)} paper ({conditions(text, accuracy)}{model})"


def point_label(row: dict) -> str:
    """P=8, or for a method at its own schedule (P null) the setting it records."""
    if row.get("P") is not None:
        return f"P={row['P']}"
    return str(row.get("setting") or ", ".join(f"{k}={v}" for k, v in (row.get("hparams") or {}).items()) or row["method"])


def per_image_range(rows: Sequence[dict]) -> list[list[float]]:
    """[p5, p95] of the per-image GMACs of input-dependent rows (their GMACs is the mean over images)."""
    if not all(r.get("gmacs_p5") is not None and r.get("gmacs_p95") is not None for r in rows):
        return []
    return [[r["gmacs_p5"], r["gmacs_p95"]] for r in rows]


def iqr(rows: Sequence[dict]) -> list[list[float]]:
    """[q1, q3] of each row's timed batches (img/s), where every row has them."""
    if not all(r.get("img_s_q1") is not None and r.get("img_s_q3") is not None for r in rows):
        return []
    return [[r["img_s_q1"], r["img_s_q3"]] for r in rows]


def _suffix(sources: Sequence[Source], at: int) -> str:
    return f", {sources[at].name}" if len(sources) > 1 else ""


# --- tradeoff ---------------------------------------------------------------------------------------------

QUALITY = {"acc": "top-1 accuracy (%)", "fidelity_top1": "top-1 agreement with the unreduced model (%)"}
NO_QUALITY = ("measure it with gtpcli profile MODEL --checkpoint WEIGHTS --data IMAGEFOLDER (or --data DIR "
              "--fidelity for agreement with the unreduced model when there are no labels)")


def tradeoff(sources: Sequence[Source]) -> Figure:
    """Accuracy (or fidelity) against img/s and against GMACs: one line per method and file, points
    labelled by P, the stock model as a star, the paper's points hollow in the method's colour. Of
    `gtpcli compare` results: see `compare_tradeoff`."""
    kinds = {kind_of(s) for s in sources}
    if {"compare", "profile"} <= kinds:
        raise GtpcliError("--kind tradeoff draws gtpcli profile results or gtpcli compare results, not both in one figure")
    if "compare" in kinds:
        return compare_tradeoff(sources)
    expect(sources, "profile", "tradeoff")
    quality = quality_of(sources, NO_QUALITY)
    axes = tradeoff_axes(sources)
    panels = [_tradeoff_panel(sources, quality, key, label) for key, label in axes]
    note = unmeasured_note(axes)
    bars = IQR_NOTE if any(s.xbounds for p in panels if p.xlabel.startswith("throughput") for s in p.series) else ""
    if any(s.xbounds for p in panels if p.xlabel.startswith("GMACs") for s in p.series):
        bars += "; GMACs of input-dependent methods: the mean over images, bars from 5 % to 95 % of the images"
    return Figure("tradeoff", tradeoff_title(quality), panels, caption(sources) + note + bars)


def quality_of(sources: Sequence[Source], how: str) -> str:
    """What the y axis shows: accuracy where every file has it, else agreement with the unreduced model;
    a file with neither is one line saying how to measure it."""
    quality = "acc" if all(any(r.get("acc") is not None for r in s.data["rows"]) for s in sources) else "fidelity_top1"
    for s in sources:
        _need(s, quality, "accuracy" if quality == "acc" else "accuracy or fidelity", how)
    return quality


def tradeoff_axes(sources: Sequence[Source]) -> list[tuple[str, str]]:
    """(row key, axis label) of the costs measured: img/s, GMACs, or both."""
    axes = [(key, label) for key, label in (("img_s", "throughput (img/s)"), ("gmacs", "GMACs per image"))
            if any(r.get(key) is not None for s in sources for r in s.data["rows"])]
    if not axes:
        raise GtpcliError(f"{sources[0].path}: neither img/s nor GMACs measured; run gtpcli profile without "
                          "--no-speed or without --no-flops")
    return axes


def unmeasured_note(axes: list[tuple[str, str]]) -> str:
    missing = [label for key, label in (("img_s", "img/s"), ("gmacs", "GMACs")) if key not in dict(axes)]
    return f"; {missing[0]} not measured (--no-speed/--no-flops)" if missing else ""


def tradeoff_title(quality: str) -> str:
    return f"{QUALITY[quality].split(' (')[0].capitalize()} against cost"


def _tradeoff_panel(sources: Sequence[Source], quality: str, key: str, xlabel: str) -> Panel:
    series: list[Series] = []
    papers: set[tuple] = set()
    for at, s in enumerate(sources):
        rows = s.data["rows"]
        device = device_of(s.data)
        for method in _methods(rows):
            block = [r for r in rows if r["method"] == method and r.get(key) is not None and r.get(quality) is not None]
            if block:
                series.append(Series(f"{title_of(method)} measured ({device}{_suffix(sources, at)})",
                                     [r[key] for r in block], [r[quality] for r in block], "line", method, at,
                                     [point_label(r) for r in block],
                                     xbounds=iqr(block) if key == "img_s" else per_image_range(block)))
            paper = [r for r in rows if r["method"] == method and r.get(f"paper_{key}") is not None
                     and r.get("paper_acc") is not None]
            label = paper_label(papers, sources, s, method, paper, accuracy=True) if quality == "acc" else None
            if label:
                series.append(Series(label, [r[f"paper_{key}"] for r in paper], [r["paper_acc"] for r in paper],
                                     "paper", method, at, [point_label(r) for r in paper]))
        stock = next((r for r in rows if r["method"] == STOCK and r.get(key) is not None
                      and r.get(quality) is not None), None)
        if stock:
            series.append(Series(f"stock timm ({device}{_suffix(sources, at)})", [stock[key]], [stock[quality]],
                                 "stock", STOCK, at))
    return tradeoff_panel(series, quality, key, xlabel)


def tradeoff_panel(series: list[Series], quality: str, key: str, xlabel: str) -> Panel:
    xs = [x for s in series for x in s.x]
    return Panel(f"{QUALITY[quality].split(' (')[0]} vs {xlabel.split(' (')[0]}", xlabel, QUALITY[quality], series,
                 xscale=scale(xs) if key == "img_s" else "linear")


# --- tradeoff of a comparison (gtpcli compare) --------------------------------------------------------------

BASELINES = ("random", "resolution")  # compare's sanity baselines, drawn apart from the methods
NO_COMPARE_QUALITY = ("measure it with gtpcli compare MODEL --gmacs ... --checkpoint WEIGHTS --data IMAGEFOLDER "
                      "(or --data DIR --fidelity for agreement with the stock model when there are no labels)")
PARETO = "Pareto-optimal at its target"


def compare_tradeoff(sources: Sequence[Source]) -> Figure:
    """Accuracy (or fidelity) of a comparison against img/s and against GMACs: one line per method joining
    its rows across the targets (by GMACs), the random and resolution baselines dotted, points labelled by
    their target, the stock model once (the median of its rows, one per target), and each target's
    Pareto-optimal rows ringed."""
    expect(sources, "compare", "tradeoff")
    quality = quality_of(sources, NO_COMPARE_QUALITY)
    axes = tradeoff_axes(sources)
    panels = [compare_panel(sources, quality, key, label) for key, label in axes]
    stock = ("; stock: the median of its rows, one per target (each from its target's own rounds)"
             if any(s.mark == "stock" for p in panels for s in p.series) else "")
    bars = "; bars: quartiles of img/s over the target's rounds" if any(s.xbounds for p in panels for s in p.series) else ""
    return Figure("tradeoff", tradeoff_title(quality), panels,
                  caption(sources, compare_conditions) + unmeasured_note(axes) + stock + bars
                  + "; ringed: Pareto-optimal among the rows of its target")


def target_text(gmacs: float, speedup: float | None = None) -> str:
    """A comparison's target as the user gave it: "3.5 GMACs", or "1.5x" for a speed target (`--speedup`),
    which the result files under its ideal GMACs (the stock model's over the speed-up)."""
    return f"{speedup:g}x" if speedup else f"{gmacs:g} GMACs"


def speedup_of(result: dict, target: float) -> float | None:
    """The speed-up a target of a comparison stands for (None: a GMACs target)."""
    return dict(zip(result.get("targets_gmacs") or [], result.get("targets_speedup") or [])).get(target)


def compare_conditions(source: Source) -> list[str]:
    """A comparison's own conditions for the caption: its rounds and how many images."""
    rounds = (source.data.get("env") or {}).get("rounds")
    n = next((r["acc_n"] for r in source.data["rows"] if r.get("acc_n")), source.data.get("limit"))
    return [f"{rounds} interleaved rounds per target" if rounds else None, f"{n} images" if n else None]


def compare_panel(sources: Sequence[Source], quality: str, key: str, xlabel: str) -> Panel:
    series: list[Series] = []
    for at, s in enumerate(sources):
        rows = [r for r in s.data["rows"] if r.get(key) is not None and r.get(quality) is not None]
        where = f" ({device_of(s.data)}{_suffix(sources, at)})"
        for method in _methods(rows):
            block = sorted((r for r in rows if r["method"] == method), key=lambda r: r.get("gmacs") or r["target_gmacs"])
            baseline = method in BASELINES
            name = title_of(method)
            series.append(Series(f"{name[:1].upper()}{name[1:]}{' baseline' if baseline else ''}{where}",
                                 [r[key] for r in block], [r[quality] for r in block],
                                 "baseline" if baseline else "line", method, at,
                                 [target_text(r["target_gmacs"], r.get("target_speedup")) for r in block],
                                 xbounds=iqr(block) if key == "img_s" else []))
        stock = [r for r in rows if r["method"] == STOCK]
        if stock:
            series.append(Series(f"stock timm{where}", [statistics.median(r[key] for r in stock)],
                                 [statistics.median(r[quality] for r in stock)], "stock", STOCK, at))
        best = pareto(rows, key, quality)
        if best:  # black, as the stock star: a mark on the other series' points, no colour of its own
            series.append(Series("" if any(x.mark == "pareto" for x in series) else PARETO, [r[key] for r in best], [r[quality] for r in best],
                                 "pareto", STOCK, at))
    return tradeoff_panel(series, quality, key, xlabel)


def pareto(rows: Sequence[dict], key: str, quality: str) -> list[dict]:
    """The rows that no other row of the same target beats: at least as fast (img/s) or as cheap (GMACs)
    and as good, and strictly better in one of the two. The stock model is no row of a target."""
    sign = 1 if key == "img_s" else -1  # more img/s is better, fewer GMACs

    def beats(a: dict, b: dict) -> bool:
        at_least = sign * a[key] >= sign * b[key] and a[quality] >= b[quality]
        return at_least and (sign * a[key] > sign * b[key] or a[quality] > b[quality])

    rows = [r for r in rows if r["method"] != STOCK]
    return [r for r in rows if not any(o["target_gmacs"] == r["target_gmacs"] and beats(o, r) for o in rows)]


# --- speedup ----------------------------------------------------------------------------------------------

def speedup(sources: Sequence[Source]) -> Figure:
    """Measured speed-up over the stock model per P against the ideal one (stock GMACs / GMACs, dashed):
    the gap between them is what the method's own cost and the hardware leave."""
    expect(sources, "profile", "speedup")
    series: list[Series] = []
    papers: set[tuple] = set()
    for at, s in enumerate(sources):
        _need(s, "img_s", "throughput", "run gtpcli profile without --no-speed")
        _need(s, "gmacs", "GMACs", "run gtpcli profile without --no-flops")
        rows = s.data["rows"]
        stock = next((r for r in rows if r["method"] == STOCK), None)
        if stock is None or stock.get("img_s") is None or stock.get("gmacs") is None:
            raise GtpcliError(f"{s.path}: no measured stock row to take the speed-up against; run gtpcli profile "
                              "again into this file (every sweep measures the stock model first)")
        device = device_of(s.data)
        for method in _methods(rows):
            block = sorted((r for r in rows if r["method"] == method and r.get("P") is not None), key=lambda r: r["P"])
            if not block:
                continue
            timed = [r for r in block if r.get("img_s") is not None]
            counted = [r for r in block if r.get("gmacs")]
            ys, bounds = measured_speedups(timed, stock)
            series.append(Series(f"{title_of(method)} measured ({device}{_suffix(sources, at)})",
                                 [r["P"] for r in timed], ys, "line", method, at, ybounds=bounds))
            series.append(Series(f"{title_of(method)} ideal (GMACs ratio)", [r["P"] for r in counted],
                                 [round(stock["gmacs"] / r["gmacs"], 4) for r in counted], "ideal", method, at))
            paper = [r for r in block if r.get("paper_img_s") is not None]
            base = next((r["paper_img_s"] for r in paper if r["P"] == 0), None)
            label = paper_label(papers, sources, s, method, paper, accuracy=False) if base else None
            if label:
                series.append(Series(label, [r["P"] for r in paper], [round(r["paper_img_s"] / base, 4) for r in paper],
                                     "paper", method, at))
    own = sorted({title_of(r["method"]) for s in sources for r in s.data["rows"] if r.get("P") is None})
    if not series:
        raise GtpcliError(f"{sources[0].path}: no row has a P to draw the speed-up against; --kind tradeoff draws "
                          "methods at their own schedules")
    Ps = sorted({x for found in series for x in found.x})
    series.append(Series("stock", Ps, [1.0] * len(Ps), "reference", STOCK))
    panel = Panel("Speed-up over the stock model", "P (tokens removed per block)", "speed-up over stock (x)", series)
    skipped = f"; not on the P axis (own schedules): {', '.join(own)}" if own else ""
    rounds = all(r.get("speedup_q1") is not None for s in sources for r in s.data["rows"]
                 if r["method"] != STOCK and r.get("img_s") is not None)
    return Figure("speedup", "Measured against ideal speed-up", [panel],
                  caption(sources) + (ROUNDS_NOTE if rounds else IQR_NOTE) + skipped)


def measured_speedups(timed: Sequence[dict], stock: dict) -> tuple[list[float], list[list[float]]]:
    """Each row's speed-up over stock and its bars: the median of the per-round ratios and their quartiles
    where the rows were timed in interleaved rounds; for older rows the ratio of the two img/s, with the
    timed batches' IQR over the stock median."""
    if timed and all(r.get("speedup_q1") is not None and r.get("speedup") is not None for r in timed):
        return [r["speedup"] for r in timed], [[r["speedup_q1"], r["speedup_q3"]] for r in timed]
    return ([round(r["img_s"] / stock["img_s"], 4) for r in timed],
            [[round(v / stock["img_s"], 4) for v in b] for b in iqr(timed)])


# --- overhead ---------------------------------------------------------------------------------------------

AXES = {"N": "N (tokens)", "C": "C (channels)", "P": "P (tokens removed per block)"}


def overhead(sources: Sequence[Source]) -> Figure:
    """Each method's analytic overhead (exact sums solid, printed closed forms and variants in other line
    styles) against the one axis each complexity result sweeps: one panel per file (GTP's Figure 9)."""
    expect(sources, "complexity", "overhead")
    panels, zero = [], []
    for s in sources:
        rows = s.data["rows"]
        axis = varying(s)
        fixed = ", ".join(f"{k}={rows[0][k]}" for k in ("N", "C", "L", "H", "P")
                          if k in rows[0] and len({r.get(k) for r in rows}) == 1)
        series = []
        for method, column, header, at in columns_of(s):
            found = [r for r in rows if r.get(column) is not None]
            series.append(Series(header, [r[axis] for r in found], [r[column] / 1e6 for r in found], "line",
                                 method, at))
        if not series:
            raise GtpcliError(f"{s.path}: no method columns in its rows")
        yscale = scale([y for x in series for y in x.y])
        if yscale == "log":  # a method without MACs (Evo-ViT sorts) has no place on a log axis: said, not drawn
            zero += [x.label for x in series if not any(x.y)]
            series = [x for x in series if any(x.y)]
        panels.append(Panel(f"Overhead against {axis} ({fixed})", AXES[axis], "extra MMACs of the method",
                            series, yscale=yscale))
    note = f"; 0 MACs, not drawn on the log axis: {', '.join(dict.fromkeys(zero))}" if zero else ""
    return Figure("overhead", "Analytic overhead of each reduction method", panels, complexity_caption(sources) + note)


def varying(source: Source) -> str:
    """The one of N, C, P that the rows sweep."""
    rows = source.data["rows"]
    moving = [k for k in ("N", "C", "P") if len({r.get(k) for r in rows}) > 1]
    if len(moving) != 1:
        found = "none" if not moving else " and ".join(moving)
        raise GtpcliError(f"{source.path}: an overhead plot sweeps exactly one of N, C or P, this result sweeps "
                          f"{found}; e.g. gtpcli complexity --N 197..1025:64 --C 768 --format json")
    return moving[0]


def columns_of(source: Source) -> list[tuple[str, str, str, int]]:
    """(method, key, header, line style) of every registered column the rows hold."""
    from ..methods import REGISTRY

    rows = source.data["rows"]
    found = []
    for method in source.data.get("methods") or list(REGISTRY):
        if method not in REGISTRY:
            continue
        present = [c for c in REGISTRY[method].columns if any(c.key in r for r in rows)]
        found += [(method, c.key, c.header, at) for at, c in enumerate(present)]
    return found


def complexity_caption(sources: Sequence[Source]) -> str:
    parts = []
    for s in sources:
        text = "analytic MACs (no device)" + (f", {s.data['model']}" if s.data.get("model") else "")
        settings = s.data.get("hparams") or {}
        if settings:
            text += "; " + "; ".join(f"{m} " + ", ".join(f"{k}={v}" for k, v in values.items())
                                     for m, values in settings.items())
        parts.append((s.name, text))
    if len({text for _, text in parts}) == 1:
        return parts[0][1]
    return " | ".join(f"{name}: {text}" for name, text in parts)


# --- tokens -----------------------------------------------------------------------------------------------

def tokens(sources: Sequence[Source]) -> Figure:
    """Tokens entering each block: one line per P for fixed schedules, and for input-dependent methods
    (rows with "adaptive": true) one box per block from the per-image distribution ("tokens_dist")."""
    expect(sources, "profile", "tokens")
    panels = []
    for at, s in enumerate(sources):
        rows = [r for r in s.data["rows"] if r.get("tokens")]
        if not rows:
            raise GtpcliError(f"{s.path}: no token schedule in any row; rerun gtpcli profile into a new file")
        stock = next((r for r in rows if r["method"] == STOCK), None)
        for method in _methods(rows):
            block = [r for r in rows if r["method"] == method]
            adaptive = [r for r in block if r.get("adaptive")]
            series = [Series("stock", _blocks(stock["tokens"]), stock["tokens"], "reference", STOCK)] if stock else []
            series += [Series(point_label(r), _blocks(r["tokens"]), r["tokens"], "line", point_label(r), at)
                       for r in block if not r.get("adaptive")]
            labels = setting_labels(adaptive)
            series += [Series(label, _blocks(r["tokens"]), r["tokens"], "box", label, at,
                              boxes=[box_stats(d, s.path, r, b) for b, d in enumerate(_dist(r, s.path))])
                       for r, label in zip(adaptive, labels)]
            where = f" ({s.name})" if len(sources) > 1 else ""
            past = stock is not None and any(len(r["tokens"]) == len(stock["tokens"]) + 1 for r in block)
            xlabel = f"block ({len(stock['tokens']) + 1}: leaving the last block)" if past else "block"
            panels.append(Panel(f"{title_of(method)}{where}", xlabel, "tokens entering the block", series))
    return Figure("tokens", "Tokens per block", panels, caption(sources))


def _blocks(values: Sequence) -> list[int]:
    return list(range(1, len(values) + 1))


def _dist(row: dict, path: Path) -> list[dict]:
    dist = row.get("tokens_dist")
    if not isinstance(dist, list) or len(dist) != len(row["tokens"]):
        raise GtpcliError(f"{path}: {row['method']} is input-dependent but its row has no per-block "
                          "'tokens_dist'; measure it again with gtpcli profile")
    return dist


def setting_labels(rows: Sequence[dict]) -> list[str]:
    """What tells the adaptive rows of one method apart: the hyperparameters that differ between them."""
    if not rows:
        return []
    keys = sorted({k for r in rows for k in (r.get("hparams") or {})})
    differ = [k for k in keys if len({repr((r.get("hparams") or {}).get(k)) for r in rows}) > 1]
    if not differ:
        return [title_of(r["method"]) for r in rows]
    return [", ".join(f"{k}={(r.get('hparams') or {}).get(k)}" for k in differ) for r in rows]


def box_stats(entry: dict, path: Path, row: dict, block: int) -> dict[str, float]:
    """Box-plot statistics of one block: the median, quartiles read off the histogram (kept either side of
    the median), min and max as the whiskers, and the mean."""
    try:
        hist, med = entry["hist"], entry["p50"]
        if not all(is_number(v) for v in (med, entry["min"], entry["max"], entry["mean"], *hist["edges"], *hist["counts"])):
            raise ValueError("numbers")
        q1, q3 = (quantile(hist["edges"], hist["counts"], q) for q in (0.25, 0.75))
        return {"med": med, "q1": min(q1, med), "q3": max(q3, med), "whislo": entry["min"], "whishi": entry["max"],
                "mean": entry["mean"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise GtpcliError(f"{path}: {row['method']} tokens_dist[{block}] lacks {exc} (needs mean, min, p50, max "
                          "and hist.edges/counts)") from None


def quantile(edges: Sequence[int], counts: Sequence[int], q: float) -> float:
    """The q-quantile of a histogram of token counts (integers: bin [low, high) holds low .. high - 1), linear
    within the bin it falls in; exact when the bins are one token wide."""
    if len(edges) != len(counts) + 1 or not sum(counts):
        raise ValueError("a histogram with len(edges) = len(counts) + 1 and some counts")
    target = q * sum(counts)
    seen = 0.0
    for low, high, count in zip(edges, edges[1:], counts):
        if count and seen + count >= target:
            return low + (high - 1 - low) * max(target - seen, 0) / count
        seen += count
    return edges[-1] - 1


# --- stages -----------------------------------------------------------------------------------------------

BACKBONE_STAGES = ("patch_embed", "attention", "mlp")
NEUTRAL = BACKBONE_STAGES + ("other",)  # drawn in greys, so the methods' own stages stand out in colour


def stages(sources: Sequence[Source]) -> Figure:
    """Each trace as one bar of stage shares of the forward time, stacked: backbone stages first, then the
    methods' own, then what no label covers; a second panel holds the methods' own stages alone, whose few
    per cent would be slivers beside attention and the MLP."""
    expect(sources, "trace", "stages")
    names = list(BACKBONE_STAGES)
    for s in sources:
        for stage in s.data["stages"]:
            if not isinstance(stage, dict) or not is_number(stage.get("share")):
                raise GtpcliError(f"{s.path}: stage {stage!r} has no share (the forward took no time?); trace "
                                  "it again with more --steps")
            if stage["stage"] not in names and stage["stage"] not in NEUTRAL:
                names.append(stage["stage"])
    names.append("other")
    bars = [f"{s.data['method']} {point_label(s.data)}\n{s.data['forward_ms']:.0f} ms" for s in sources]
    series = []
    for name in names:
        shares = [next((round(st["share"] * 100, 2) for st in s.data["stages"] if st["stage"] == name), 0.0)
                  for s in sources]
        if any(shares):
            series.append(Series(name, list(range(len(sources))), shares, "bar", name))
    ylabel = "share of the forward time (%)"
    panels = [Panel("Where the forward time goes", "", ylabel, series, xticks=bars)]
    own = [s for s in series if s.label not in NEUTRAL]
    if own:
        panels.append(Panel("The methods' own stages", "", ylabel, own, xticks=bars))
    parts = dict.fromkeys(f"{s.data['model']}, {s.data['device']}, batch {s.data['batch_size']}" for s in sources)
    return Figure("stages", "Stage shares (PyTorch profiler)", panels, " | ".join(parts))


# --- gap: where the ideal went ------------------------------------------------------------------------------

GAP_PARTS = {"own_stages": "own stages", "attention": "attention", "mlp": "MLP", "rest": "rest"}  # and the table's
GAP_NOTE = ("; bars: measured - ideal ms per batch (ideal: the stock model's time x the MAC ratio), split by stage "
            "from profiled passes interleaved with stock: the method's own stages, attention and MLP beyond the stock "
            "time scaled by their MAC ratios, and the rest (embedding, head, time outside the labels); parts above 0 "
            "stack up from 0, parts below 0 (faster than the ideal there) stack down from 0; black tick: the gap, "
            "their sum; under each bar: the ideal and the measured speed-up of the passes")


def gap(sources: Sequence[Source]) -> Figure:
    """Where the ideal went: per target of a `gtpcli compare` result one panel, one stacked bar per row (its
    `ideal_gap` parts, in ms per batch) with the net gap marked; `gtpcli trace` results share one panel, a bar
    each."""
    kinds = [kind_of(s) for s in sources]
    for s, kind in zip(sources, kinds):
        if kind not in ("compare", "trace"):
            raise GtpcliError(f"{s.path} is a gtpcli {kind} result; --kind gap reads gtpcli compare results "
                              f"({MAKES['compare']}) or {MAKES['trace']}")
    compared = [s for s, kind in zip(sources, kinds) if kind == "compare"]
    traces = [s for s, kind in zip(sources, kinds) if kind == "trace"]
    panels = [panel for s in compared for panel in compare_gap_panels(s, len(compared) > 1)]
    if traces:
        panels.append(gap_panel("gtpcli trace", [(f"{s.data['method']} {point_label(s.data)}", trace_gap(s))
                                                 for s in traces]))
    where = [caption([s]) for s in compared] + [f"{s.data['model']}, {s.data['device']}, batch {s.data['batch_size']}"
                                                for s in traces]
    return Figure("gap", "Where the ideal went", panels, " | ".join(dict.fromkeys(where)) + GAP_NOTE)


def compare_gap_panels(source: Source, named: bool) -> list[Panel]:
    """One panel per target, a bar per row with a breakdown, in the result's order."""
    rows = {at: r for at, r in enumerate(source.data["rows"]) if r.get("ideal_gap") is not None}
    if not rows:
        raise GtpcliError(f"{source.path}: no row has a breakdown (ideal_gap); measure it with gtpcli compare "
                          "MODEL --gmacs ... (without --no-breakdown; --resume adds it to the rows already there)")
    for at, r in rows.items():
        if not is_number(r.get("target_gmacs")):
            raise GtpcliError(f"{source.path}: rows[{at}].target_gmacs is {r.get('target_gmacs')!r}, not a number; is "
                              "the file hand-edited?")
    where = f" ({source.name})" if named else ""
    panels = []
    for target in dict.fromkeys(r["target_gmacs"] for r in rows.values()):
        bars = [(gap_label(r), checked_gap(source, r["ideal_gap"], f"rows[{at}]"))
                for at, r in rows.items() if r["target_gmacs"] == target]
        panels.append(gap_panel(f"{source.data.get('model', '?')} at {target_text(target, speedup_of(source.data, target))}{where}", bars))
    return panels


def gap_label(row: dict) -> str:
    """A bar's name: the method and its setting."""
    setting = ", ".join(f"{k}={v}" for k, v in (row.get("setting") or {}).items())
    return f"{row['method']} {setting}".strip()


def trace_gap(source: Source) -> dict:
    """A trace's breakdown; traces written before it existed have none."""
    if source.data.get("ideal_gap") is None:
        raise GtpcliError(f"{source.path}: this trace has no ideal_gap; trace it again with this gtpcli")
    return checked_gap(source, source.data["ideal_gap"], "the trace")


def checked_gap(source: Source, split: Any, where: str) -> dict:
    """An `ideal_gap` whose gap and parts are numbers, or one line naming the file and the row."""
    try:
        if is_number(split["gap_ms"]) and all(is_number(split["parts"][name]["ms"]) for name in GAP_PARTS):
            return split
    except (KeyError, TypeError):
        pass
    raise GtpcliError(f"{source.path}: {where}.ideal_gap lacks gap_ms or parts.{{{','.join(GAP_PARTS)}}}.ms as "
                      "numbers; is the file hand-edited?")


def gap_panel(title: str, bars: list[tuple[str, dict]]) -> Panel:
    """Stacked bars of the parts (ms per batch) and a tick at each bar's gap; ticks name the bar and its ideal
    against its measured speed-up."""
    x = list(range(len(bars)))
    series = [Series(label, x, [split["parts"][name]["ms"] for _, split in bars], "bar", f"gap.{name}")
              for name, label in GAP_PARTS.items()]
    series.append(Series("gap: measured - ideal", x, [split["gap_ms"] for _, split in bars], "total", STOCK))
    ticks = [f"{label}\n{_times(split.get('ideal_speedup'))} -> {_times(split.get('measured_speedup'))}"
             for label, split in bars]
    return Panel(title, "", "ms per batch lost against the ideal", series, xticks=ticks)


def _times(value: Any) -> str:
    return f"{value:.2f}x" if is_number(value) else "?"


KINDS: dict[str, Callable[[Sequence[Source]], Figure]] = {
    "tradeoff": tradeoff, "speedup": speedup, "overhead": overhead, "tokens": tokens, "stages": stages, "gap": gap}


def figure(kind: str, paths: Sequence[Path]) -> Figure:
    if kind not in KINDS:
        raise GtpcliError(f"unknown --kind {kind!r} (choose from {', '.join(KINDS)})")
    if not paths:
        raise GtpcliError("give at least one result file")
    return KINDS[kind]([load(p) for p in paths])
