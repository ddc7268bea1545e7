"""Rich rendering of results. Every command builds a plain result `{"rows": [...], ...}` first;
tables and files are rendered from that object, never the other way round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from ..cost.adaptive import MODES, RANDOM_SOURCE
from ..results import dumps, write
from .layout import console, table

FORMATS = ("table", "json", "csv", "yaml", "markdown", "latex")


def emit(result: dict[str, Any], fmt: str, output: Path | None, render) -> None:
    """Print the table (or a format) to stdout and optionally write the result to a file."""
    if output is not None:
        write(result, output)
    if fmt == "table":
        render(result, console())
    elif fmt in ("markdown", "latex"):
        from .markup import render as markup
        print(markup(result, render, fmt), end="")
    else:
        print(dumps(result, fmt), end="")


def thousands(value: int | float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def mmacs(value: int | float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.3f}"


def render_complexity(result: dict[str, Any], console: Console) -> None:
    """One column per method column the registry declares (in MMACs), the printed-minus-exact gaps, ToMe/GTP."""
    from ..methods import REGISTRY

    rows = result["rows"]
    methods = [REGISTRY[m] for m in result.get("methods", REGISTRY) if m in REGISTRY]
    # the methods whose papers print a closed form (GTP, ToMe) first, with its gap to the exact sum and their
    # ratio, so a table split to fit a terminal leads with them; the other methods' columns after
    printed = [m for m in methods if any(f"{m.name}_closed_form_diff" in r for r in rows)]
    pair = [c for m in printed for c in m.columns]
    others = [c for m in methods if m not in printed for c in m.columns]
    diffs = [(m.title, f"{m.name}_closed_form_diff") for m in printed]
    with_ratio = any(r.get("ratio") is not None for r in rows)
    with_backbone = any("backbone_macs" in r for r in rows)
    columns = [(k, "right") for k in ("N", "C", "L", "H", "P")] + [(c.header, "right") for c in pair]
    if diffs:
        columns.append(("Eq. - sum (MACs)", "right"))
    if with_ratio:
        columns.append(("ToMe/GTP", "right"))
    if with_backbone:
        columns.append(("backbone GMACs", "right"))
    columns += [(c.header, "right") for c in others]
    cells = []
    for r in rows:
        cell = [r["N"], r["C"], r["L"], r["H"], r["P"], *(mmacs(r.get(c.key)) for c in pair)]
        if diffs:
            diff = " ".join(_diff_cell(r.get(key), title) for title, key in diffs).strip()
            cell.append(diff or "[green]0[/]")
        if with_ratio:
            cell.append(f"{r['ratio']:.2f}" if r.get("ratio") else "-")
        if with_backbone:
            cell.append(f"{r['backbone_macs'] / 1e9:.3f}")
        cells.append(cell + [mmacs(r.get(c.key)) for c in others])
    title = "Extra MMACs of the reduction method itself (" + ", ".join(_sources(m) for m in methods) + ")"
    if result.get("model"):
        title += f" - {result['model']}"
    tokens: dict[str, list[str]] = {}
    for m in methods:
        for c in m.columns:
            tokens.setdefault(c.tokens, [])
            if m.title not in tokens[c.tokens]:
                tokens[c.tokens].append(m.title)
    notes = list(result.get("notes", []))
    if len(tokens) > 1:
        notes.append("Token counts: " + "; ".join(f"{', '.join(t)}: {what}" for what, t in tokens.items()) + ".")
    if result.get("hparams"):
        notes.append("Settings: " + "; ".join(f"{m} " + ", ".join(f"{k}={v}" for k, v in values.items())
                                               for m, values in result["hparams"].items()) + ".")
    console.print(table(title, columns, cells, caption="\n".join(notes) or None, keys=5))
    for r in rows:
        if "layers" in r:
            _render_layers(r, console)


def _sources(method) -> str:
    return method.complexity_source or method.title


def _diff_cell(diff: int | float | None, label: str) -> str:
    return "" if not diff else f"[yellow]{label} {diff:+,}[/]"


def _render_layers(row: dict[str, Any], console: Console) -> None:
    """One table for the methods with few terms and the backbone; one per variant of a method with many
    (TC-ViT: keys tcvit_<variant>_<term>)."""
    layers = row["layers"]
    fixed = ("layer", "N_l", "n_l")
    keys = [k for k in dict.fromkeys(k for layer in layers for k in layer) if k not in fixed]
    by_method: dict[str, list[str]] = {}
    for k in keys:
        by_method.setdefault(k.split("_")[0], []).append(k)
    groups: dict[str, list[str]] = {}
    for method, found in by_method.items():
        for k in found:
            groups.setdefault("" if len(found) <= 6 else "_".join(k.split("_")[:2]), []).append(k)
    where = f"N={row['N']} C={row['C']} L={row['L']} H={row['H']} P={row['P']}"
    for group, found in groups.items():
        used = [layer for layer in layers if any(k in layer for k in found)]
        prefix = f"{group}_" if group else ""
        cells = [[layer["layer"], layer["N_l"], layer.get("n_l", "-"), *(thousands(layer.get(k)) for k in found)]
                 for layer in used]
        title = f"Per layer, {where} (MACs)" + (f": {group}" if group else "")
        headers = [("layer", "right"), ("N_l", "right"), ("n_l", "right")] + [(k[len(prefix):], "right") for k in found]
        console.print(table(title, headers, cells, keys=3))


def render_profile(result: dict[str, Any], console: Console) -> None:
    """Table-1 style: one block per method (and per batch and image size of a grid), P across, measured
    rows then the paper's reference rows. Several models' results: each its own blocks."""
    if "results" in result:
        for one in result["results"]:
            render_profile(one, console)
        return
    combos = list(dict.fromkeys(_combo(r) for r in result["rows"]))
    for combo in combos:
        _render_blocks(result, [r for r in result["rows"] if _combo(r) == combo], console, grid=len(combos) > 1)


def _combo(row: dict[str, Any]) -> tuple:
    return row.get("batch_size"), json.dumps(row.get("img_size"))


def _measurement(row: dict[str, Any]) -> str:
    """How a row was timed: precision, autocast, compile mode, batch (and the batch out-of-memory left)."""
    parts = [row.get("dtype") or "", f"autocast {row['amp']}" if row.get("amp") else "",
             f"compiled ({row['compile']})" if row.get("compile") else "eager" if "compile" in row else ""]
    batch = row.get("batch_size")
    if batch is not None:
        timed = row.get("timed_batch_size")
        parts.append(f"batch {batch}" + (f" (timed at {timed}: out of memory)" if timed and timed != batch else ""))
    if row.get("img_size") is not None:
        parts.append(f"{row['img_size']} px")
    return ", ".join(p for p in parts if p)


def _render_blocks(result: dict[str, Any], rows: list[dict[str, Any]], console: Console, grid: bool) -> None:
    """One table per method, one column per point: every line whose figures the rows hold (an
    input-dependent method's E[GMACs] and distributions, throughput and the rounds' quartiles, memory,
    accuracy, the paper's figures); then per-block token distributions where the rows carry them."""
    stock = next((r for r in rows if r["method"] == "stock"), None)
    env = result.get("env", {})
    first = rows[0] if rows else {}
    setting = f"{result.get('weights', 'random weights')}, {env.get('device', '?')} " + (
        _measurement(first) if "dtype" in first else f"{env.get('dtype', '')}, batch {env.get('batch_size', '?')}")
    if result.get("distributed"):  # several processes under torchrun: who measured what
        setting += f"; {result['distributed']}"
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "stock"):
        block = [r for r in rows if r["method"] == method]
        source = next((r["paper_source"] for r in block if r.get("paper_source")), "")
        lines = _cost_lines(block, stock) + _speed_lines(block) + _quality_lines(block, source) + _paper_lines(block, source)
        title = f"{result['model']} + {method}" + (f", batch {first.get('batch_size')}, {first.get('img_size')} px" if grid else "")
        settings = list(dict.fromkeys(r["setting"] for r in block if r.get("setting") and not r.get("adaptive")))
        if len(settings) == 1:  # e.g. "gtpcli variant: equal P, ...": never mistaken for the method's own schedule
            title += f" ({settings[0]})"
        if any(r.get("tokens_dist") for r in block):
            title += " (token counts depend on the image)"
        caption = "; ".join(part for part in (setting, _stock_caption(block, stock), _timing_caption(block, env),
                                              _images_caption(block, method), _paper_caption(block, source)) if part)
        console.print(table(title, [("", "left")] + [(_point(r), "right") for r in block],
                            [[label, *cells] for label, cells in lines], caption=caption,
                            paper=[at for at, (label, _) in enumerate(lines) if label.startswith("paper ")]))
        _render_distributions(result["model"], method, block, console)
    for r in rows:
        for warning in r.get("warnings", []):
            console.print(f"[yellow]warning[/] {r['method']} {_point(r)}: {warning}", highlight=False)


def _point(row: dict[str, Any]) -> str:
    """A point's column header: P, or an input-dependent method's own setting ("delta=0.01")."""
    return row["setting"] if row.get("adaptive") else f"P={row['P']}"


def _digits(rows: list[dict[str, Any]], stock: dict[str, Any] | None) -> int:
    """Enough decimals that a small model's GMACs are not all 0.00."""
    smallest = min([r["gmacs"] for r in rows + ([stock] if stock else []) if r.get("gmacs")], default=1.0)
    return 2 if smallest >= 1 else 3 if smallest >= 0.1 else 4


def _cost_lines(block: list[dict[str, Any]], stock: dict[str, Any] | None) -> list[tuple[str, list[str]]]:
    """GMACs; for counts that depend on the image, E[GMACs] with its spread, percentiles, the cost at the mean
    counts and the gap to it (Jensen), the mean tokens per block and each batching mode's executed MACs."""
    if not any(r.get("gmacs_std") is not None for r in block):
        return [("GMACs", [_num(r["gmacs"], 2) for r in block])]
    d = _digits(block, stock)
    found = [
        ("E[GMACs] ± std", [f"{_num(r['gmacs'], d)} ± {_num(r['gmacs_std'], d)}" for r in block]),
        ("GMACs p5 / p50 / p95", [" / ".join(_num(r[k], d) for k in ("gmacs_p5", "gmacs_p50", "gmacs_p95")) for r in block]),
        ("GMACs at mean tokens", [_num(r["gmacs_at_mean_tokens"], d) for r in block]),
        ("Jensen gap (E - at mean)", [f"{_num(r['jensen_gap_gmacs'], d)} ({r['jensen_gap_gmacs'] / r['gmacs_at_mean_tokens']:+.2%})"
                                      for r in block]),
    ]
    if any(r.get("useful_gmacs") != r["gmacs"] for r in block):   # where the output stops changing ([CLS] halts)
        found.append(("useful GMACs (to [CLS] halt)", [_num(r.get("useful_gmacs"), d) for r in block]))
    found.append(("mean tokens per block", [" ".join(f"{n:.0f}" for n in r["tokens"]) for r in block]))
    if stock and stock.get("gmacs"):
        found.append(("E[GMACs] / stock", [f"{r['gmacs'] / stock['gmacs']:.2f}x" for r in block]))
    for mode in MODES:
        cells = [r.get("batching", {}).get(mode) for r in block]
        if any(c and c.get("img_s") is not None for c in cells):
            size = next(c["batch_size"] for c in cells if c)
            found.append((f"img/s {mode} (batch {size})", [_num(c and c.get("img_s"), 1) for c in cells]))
        found.append((f"{mode}: executed / ideal GMACs", [
            "-" if not c else f"{_num(c['executed_gmacs'], d)} / {_num(c['ideal_gmacs'], d)} ({c['ratio']:.2f}x)"
            for c in cells]))
    return found


def _speed_lines(block: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """img/s and its spread, the speed-ups (with the rounds' quartiles, flagged `!` where the rounds disagree),
    latency, peak memory and compile time, each where the rows hold it."""
    found = [
        ("img/s", [_num(r.get("img_s"), 1) for r in block]),
        ("IQR img/s", [_num(r.get("img_s_spread"), 1) for r in block]),
        ("speed-up vs stock", [_times(r.get("speedup")) + (" !" if r.get("rounds_disagree") else "") for r in block]),
    ]
    if any(r.get("speedup_q1") is not None for r in block):
        found.append(("speed-up quartiles", [_range(r.get("speedup_q1"), r.get("speedup_q3")) for r in block]))
    if any(r.get("P") is not None for r in block):
        found.append(("speed-up vs P=0", [_times(r.get("speedup_vs_p0")) for r in block]))
    if any(r.get("latency_ms_p50") is not None for r in block):
        found.append(("ms/batch p50 / p90 / p99", [_latency(r) for r in block]))
    memory_keys = [k for k in MEMORY_LABELS if any(r.get(k) is not None for r in block)]
    for key in memory_keys:
        found.append((MEMORY_LABELS[key], [_num(r.get(key), 1) for r in block]))
    if memory_keys:
        found.append(("memory saving vs stock", [_share(r.get("memory_saving")) for r in block]))
    if any(r.get("compile_s") is not None for r in block):
        found.append(("compile s (apart from img/s)", [_num(r.get("compile_s"), 1) for r in block]))
    return found


def _finetuned(source: str) -> bool:
    return "finetun" in source and "no finetuning" not in source  # never side by side unlabelled


def _best_of(block: list[dict[str, Any]], source: str) -> bool:
    return "best over settings" in source and not any(r.get("grid") for r in block)


def _quality_lines(block: list[dict[str, Any]], source: str) -> list[tuple[str, list[str]]]:
    found = []
    if any(r.get("acc") is not None for r in block):
        label = "Acc (%), no finetuning" if _finetuned(source) else "Acc (%), one setting" if _best_of(block, source) else "Acc (%)"
        found.append((label, [_num(r.get("acc"), 1) for r in block]))
        if any(r.get("acc_ci95") for r in block):
            found.append(("Acc 95% interval", [_interval(r.get("acc_ci95")) for r in block]))
    if any(r.get("fidelity_top1") is not None for r in block):
        found.append(("agrees with stock (%)", [_num(r.get("fidelity_top1"), 1) for r in block]))
        found.append(("KL to stock", [_num(r.get("fidelity_kl"), 4) for r in block]))
    return found


def _paper_lines(block: list[dict[str, Any]], source: str) -> list[tuple[str, list[str]]]:
    if not any("paper_gmacs" in r for r in block):
        return []
    digits = 2 if any(r.get("paper_gmacs") is not None and r["paper_gmacs"] < 1 for r in block) else 1
    found = [("paper GMACs", [_num(r.get("paper_gmacs"), digits) for r in block]),
             ("GMACs - paper", [_delta(r.get("gmacs"), r.get("paper_gmacs")) for r in block])]
    if any(r.get("paper_img_s") is not None for r in block):
        found.append(("paper img/s (A6000)", [_num(r.get("paper_img_s"), 1) for r in block]))
    if any(r.get("paper_acc") is not None for r in block):
        label = ("paper Acc (%), finetuned" if _finetuned(source) else "paper Acc (%), best over settings"
                 if _best_of(block, source) else "paper Acc (%)")
        found.append((label, [_num(r.get("paper_acc"), 1) for r in block]))
    return found


def _stock_caption(block: list[dict[str, Any]], stock: dict[str, Any] | None) -> str:
    """The stock model's own figures, measured in the same run."""
    if not stock:
        return ""
    text = (f"stock timm: {_num(stock.get('gmacs'), _digits(block, stock))} GMACs, {_num(stock.get('img_s'), 1)} img/s "
            f"(IQR {_num(stock.get('img_s_spread'), 1)})")
    if stock.get("latency_ms_p50") is not None:
        text += f", {_latency(stock)} ms/batch"
    for key in (k for k in MEMORY_LABELS if stock.get(k) is not None and any(r.get(k) is not None for r in block)):
        text += f", {MEMORY_LABELS[key]} {_num(stock[key], 1)}"
    if stock.get("compile_s") is not None:
        text += f", compiled in {_num(stock['compile_s'], 1)} s"
    if stock.get("acc") is not None:
        text += f", Acc {stock['acc']:.1f}%"
    return text


def _timing_caption(block: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """How the speed figures were taken: interleaved rounds, or the sequential order (docs/timing.md)."""
    timed = next((r for r in block if r.get("rounds")), None)
    if timed is None:
        return ""
    if timed["rounds"] == 1:
        return ("timed in the sequential order (--rounds 1): each point's batches in turn, stock first; img/s the "
                "median over batches, speed-ups the ratios of those medians, so a slow phase of the machine lands in them")
    margin = env.get("disagree_margin")
    return (f"timed in {timed['rounds']} interleaved rounds (stock and every point, {env.get('batches_per_round', '?')} "
            "batch(es) each per round, in a shuffled order): img/s the median over rounds, a speed-up the median of "
            "the per-round ratios to stock, with its quartiles" +
            (f"; ! where they lie more than {margin:.0%} of it apart (the rounds disagree)" if margin is not None else ""))


def _images_caption(block: list[dict[str, Any]], method: str) -> str:
    """Where an input-dependent method's counts come from, and what they can be trusted for."""
    first = next((r for r in block if r.get("counts_source")), None)
    if first is None:
        return ""
    parts = [f"{first['images']} images, {first['counts_source']}"]
    if first["counts_source"] == RANDOM_SOURCE:
        parts.append("give --data DIR for the real distribution")
    if any(r.get("untrained_controller") for r in block):
        parts.append(f"untrained controller (no {method} mapping in the checkpoint)")
    parts.append("E[GMACs] = mean of per-image GMACs, never the GMACs at the mean counts")
    return "; ".join(parts)


def _paper_caption(block: list[dict[str, Any]], source: str) -> str:
    parts = [f"paper rows: {source}"] if source else []
    if _best_of(block, source) and any(r.get("acc") is not None for r in block):
        parts.append("the paper's accuracy is the best over hyperparameter settings per P, ours one fixed setting, "
                     "which lands at or below it: profile --search makes the comparable row")
    return "; ".join(parts)


def _render_distributions(model: str, method: str, block: list[dict[str, Any]], console: Console) -> None:
    """Per point whose counts depend on the image: the tokens entering each block over its images."""
    for r in (r for r in block if r.get("tokens_dist")):
        cells = [[str(layer + 1), f"{dist['mean']:.1f}", f"{dist['std']:.1f}", str(dist["min"]), f"{dist['p50']:g}",
                  str(dist["max"])] for layer, dist in enumerate(r["tokens_dist"])]
        columns = [("block", "right"), ("mean", "right"), ("std", "right"), ("min", "right"), ("p50", "right"),
                   ("max", "right")]
        console.print(table(f"{model} + {method} {r['setting']}: tokens entering each block over {r['images']} "
                            "images", columns, cells))


def render_bins(result: dict[str, Any], console: Console) -> None:
    """GTP's Table 2/3 layout: per GMACs bin, each method at its published setting, measured GMACs next to
    the bin's nominal value, img/s and the ratio to the slowest measured method of the bin, then the paper's
    figures as labelled reference columns (and the published rows of methods gtpcli does not run)."""
    from ..reference.bins import NOTES, PAPER_ONLY, TITLES, reference_rows, table_for

    measured = [r for r in result["rows"] if r.get("bin_gmacs") is not None]
    paper_only = reference_rows(result["timm"], {r["method"] for r in measured})
    with_acc = any(r.get("acc") is not None for r in measured)
    columns = [("GMACs bin", "right"), ("method", "left"), ("setting", "left"), ("GMACs", "right"),
               ("img/s", "right"), ("ratio", "right")] + ([("Acc (%)", "right")] if with_acc else []) + [
        ("paper Acc, no FT", "right"), ("paper Acc, FT", "right"), ("paper img/s (A6000)", "right"),
        ("paper ratio", "right")]
    cells = []
    for nominal in table_for(result["timm"])["bins"]:
        for r in [r for r in measured if r["bin_gmacs"] == nominal] + [r for r in paper_only if r["bin_gmacs"] == nominal]:
            run = r in measured
            cell = [f"{nominal:g}", TITLES.get(r["method"], r["method"]) + ("" if run else " (paper only)"),
                    _bin_setting(r.get("bin_setting", r.get("setting", {})), r["method"]),
                    _bin_gmacs(r), _num(r.get("img_s"), 1), _times(r.get("bin_ratio"))]
            if with_acc:
                cell.append(_num(r.get("acc"), 1))
            cell += [_num(r.get("paper_acc"), 1), _num(r.get("paper_acc_ft"), 1), _num(r.get("paper_img_s"), 1),
                     _times(r.get("paper_ratio"))]
            cells.append(cell)
    env = result.get("env", {})
    caption = [f"Measured: {result.get('weights', 'random weights')}, {env.get('device', '?')} {env.get('dtype', '')}, "
               f"batch {env.get('batch_size', '?')}; ratio = img/s over the slowest measured method of the bin, as "
               "the paper does.",
               f"paper columns: {table_for(result['timm'])['table']} of GTP-ViT (A6000, batch 128); no FT = without "
               "finetuning, FT = 30 epochs of finetuning (reference figures, not results).", *NOTES.get(result["timm"], [])]
    if paper_only:   # said once here, not in every row: the method column stays narrow enough to repeat
        untrained = [TITLES[m] for m in dict.fromkeys(r["method"] for r in paper_only) if m in PAPER_ONLY]
        caption.append("(paper only): the published row of a method not run here" +
                       (f"; {' and '.join(untrained)} need training." if untrained else "."))
    stock = next((r for r in result["rows"] if r["method"] == "stock"), None)
    if stock:
        caption.insert(1, f"stock timm: {_num(stock.get('gmacs'), 2)} GMACs, {_num(stock.get('img_s'), 1)} img/s.")
    adaptive = next((r for r in measured if r.get("adaptive")), None)
    if adaptive:
        caption.insert(1, f"E = E[GMACs], the mean of per-image GMACs (+- their std) over {adaptive['images']} "
                          f"images ({adaptive['counts_source']}); img/s batches padded to their widest image.")
    console.print(table(f"{result['model']}: GTP's {table_for(result['timm'])['table']} bins", columns, cells,
                        caption="\n".join(caption), keys=2))
    for r in measured:
        for warning in r.get("warnings", []):
            console.print(f"[yellow]warning[/] {r['method']} {r['bin_gmacs']:g} GMACs bin: {warning}", highlight=False)


def _bin_gmacs(row: dict[str, Any]) -> str:
    """Measured GMACs; E[GMACs] +- std for an input-dependent method."""
    if row.get("adaptive") and row.get("gmacs") is not None:
        return f"E {row['gmacs']:.2f} +- {row.get('gmacs_std', 0):.2f}"
    return _num(row.get("gmacs"), 2)


def _bin_setting(setting: dict[str, Any], method: str) -> str:
    """A published setting as its paper writes it (ToMe's r for P: the card's alias)."""
    from ..methods import REGISTRY

    card = REGISTRY.get(method)
    own = {api: alias for alias, api in card.aliases.items()} if card else {}
    names = {"P": own.get("P", "P"), "keep_rate": "k", "keep_ratio": "p", "layers": "ATS blocks"}
    return ", ".join(f"{names.get(k, k)}={v}" for k, v in setting.items()) or "-"


MEMORY_LABELS = {"cuda_peak_allocated_mib": "peak allocated MiB", "cuda_peak_reserved_mib": "peak reserved MiB",
                 "rss_peak_delta_mib": "resident growth MiB"}  # what each means: measure/memory.py


def _latency(row: dict[str, Any]) -> str:
    values = [row.get(f"latency_ms_p{p}") for p in (50, 90, 99)]
    return " / ".join(_num(v, 1) for v in values) if values[0] is not None else "-"


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _share(value) -> str:
    return "-" if value is None else f"{value:+.0%}"


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _range(low, high) -> str:
    return "-" if low is None or high is None else f"{low:.2f}-{high:.2f}"


def _interval(bounds) -> str:
    return "-" if not bounds else f"{bounds[0]:.1f}-{bounds[1]:.1f}"


def _times(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _delta(value, reference) -> str:
    if value is None or reference is None:
        return "-"
    gap = value - reference
    colour = "green" if abs(gap) <= 0.1 else "red"
    return f"[{colour}]{gap:+.2f}[/]"


def render_trace(result: dict[str, Any], console: Console) -> None:
    """Each stage's time and share with the method, beside the stock model's where the trace has it (stage
    medians over interleaved profiled passes), then the top operators and where the trace files are."""
    where = f"P={result['P']}" if result.get("P") is not None else f"({result.get('setting')})"
    title = (f"{result['model']} + {result['method']} {where}: {result['forward_ms']:.1f} ms per forward "
             f"({result['device']}, batch {result['batch_size']})")
    stock = {s["stage"]: s for s in result.get("stock_stages", [])}
    columns = [("stage", "left"), ("ms", "right"), ("share", "right")]
    if stock:
        columns += [("share quartiles", "right"), ("stock ms", "right"), ("stock share", "right")]
    cells = []
    for s in result["stages"]:
        line = [s["stage"], f"{s['ms']:.2f}", _percent(s["share"])]
        if stock:
            other = stock.get(s["stage"], {})
            line += [f"{_percent(s.get('share_q1'))}-{_percent(s.get('share_q3'))}",
                     _num(other.get("ms"), 2), _percent(other.get("share"))]
        cells.append(line)
    caption = (f"{result['method']}'s own stages: {result['method_time_share']:.1%} of the time, "
               f"{result['method_macs_share']:.2%} of the MACs ({result['method_macs'] / 1e6:.1f} MMACs of "
               f"{result['total_macs'] / 1e9:.2f} GMACs, analytic)")
    if result.get("time_per_mac_ratio"):
        caption += (f"; its time share is {result['time_per_mac_ratio']:.1f}x its MAC share: "
                    + ("memory- or launch-bound" if result["time_per_mac_ratio"] > 2 else "roughly compute-bound"))
    if stock:
        caption += (f"; each stage's median over {result['rounds']} profiled passes of {result['steps']} forwards, the "
                    f"stock model's and the method's alternating in a shuffled order; stock timm: "
                    f"{result['stock_forward_ms']:.1f} ms per forward; the method's forward {result['forward_speedup']:.2f}x "
                    "as fast (median of the per-pass ratios" +
                    (f", quartiles {_range(result.get('forward_speedup_q1'), result.get('forward_speedup_q3'))})"
                     if result.get("forward_speedup_q1") is not None else ")"))
    console.print(table(title, columns, cells, caption=caption))
    if result.get("ideal_gap"):
        _render_ideal_gap(result["method"], result["ideal_gap"], console)
    ops = [[o["op"], f"{o['self_ms']:.2f}", o["calls"]] for o in result["top_ops"]]
    console.print(table("Top operators (self time per forward)", [("op", "left"), ("ms", "right"), ("calls", "right")], ops))
    console.print(f"tensorboard --logdir {result['tensorboard_dir']}    (Chrome/Perfetto: {result['chrome_trace']})",
                  highlight=False, soft_wrap=True)


IDEAL_GAP_PARTS = {"own_stages": "own stages", "attention": "attention", "mlp": "mlp",
                   "rest": "rest (embed, other, between labels)"}


def _render_ideal_gap(method: str, split: dict[str, Any], console: Console) -> None:
    """The time lost against the ideal speed-up (stock time over the MAC ratio), part by part, summing to it."""
    cells = [[IDEAL_GAP_PARTS.get(name, name), f"{part['ms']:+.2f}", _share(part["share"])]
             for name, part in split["parts"].items()]
    cells.append(["gap: measured - ideal", f"{split['gap_ms']:+.2f}", _share(1.0 if split["gap_ms"] else None)])
    scaled = ("each stage's MAC ratio" if split["mac_ratios_from"] == "stages" else "the whole model's MAC ratio")
    ratios = ", ".join(f"{stage} {ratio:.2f}" for stage, ratio in split["mac_ratios"].items())
    caption = (f"ideal {_times(split['ideal_speedup'])} (stock over {method} MACs, analytic): {split['ideal_ms']:.1f} "
               f"ms; measured {_times(split['measured_speedup'])}: {split['measured_ms']:.1f} ms (stock "
               f"{split['stock_ms']:.1f} ms, stage medians); attention and mlp: {method}'s time beyond stock's "
               f"scaled by {scaled} ({ratios})")
    console.print(table(f"Where the ideal went: {method}", [("part", "left"), ("ms", "right"), ("of gap", "right")],
                        cells, caption=caption))


def render_similarity(result: dict[str, Any], console: Console) -> None:
    """Per block: stock and reduced average cosine similarity between image tokens (Fig. 6's curves)."""
    method = result["method"]
    cells = [[r["block"], _num(r["stock"], 4), _num(r[method], 4), f"{r['difference']:+.4f}"] for r in result["rows"]]
    cells.append(["mean", _num(result["mean_stock"], 4), _num(result[f"mean_{method}"], 4),
                  f"{result[f'mean_{method}'] - result['mean_stock']:+.4f}"])
    where = f"P={result['P']}" if result.get("P") is not None else "its own schedule"
    console.print(table(f"{result['model']}: average cosine similarity between image tokens after each block",
                        [("block", "right"), ("stock", "right"), (f"{method} {where}", "right"), ("difference", "right")],
                        cells, caption=f"{result['images']} images, {result['images_source']}; higher = more over-smoothed "
                                       "(GTP Fig. 6 plots this for finetuned DeiT-S)"))


def render_check(result: dict[str, Any], console: Console) -> None:
    columns = [(h, "left" if h in ("model", "method", "metric", "verdict") else "right")
               for h in ("model", "method", "P", "metric", "baseline", "now", "delta", "tolerance", "verdict")]
    cells = []
    for r in result["rows"]:
        verdict = "[green]pass[/]" if r["verdict"] == "pass" else f"[red]FAIL[/] {r.get('why', '')}".strip()
        tolerance = f"{r['tolerance']} ({r['tolerance_from']})" if r.get("tolerance_from") else r["tolerance"]
        cells.append([r["model"], r["method"], r["P"], r["metric"], _short(r["baseline"]), _short(r["now"]),
                      _short(r["delta"]), tolerance, verdict])
    failed = sum(r["verdict"] != "pass" for r in result["rows"])
    title = f"gtpcli check: {len(cells) - failed} passed, {failed} failed"
    notes = list(result.get("notes", []))
    if result.get("environment_differs"):
        notes.append("[yellow]baseline from a different environment:[/] " + "; ".join(result["environment_differs"]))
    console.print(table(title, columns, cells, caption="\n".join(notes) or None, keys=4))


def _short(value) -> str:
    if isinstance(value, list):
        return f"[{value[0]}..{value[-1]}] ({len(value)})" if len(value) > 4 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else thousands(value)


def render_search(result: dict[str, Any], console: Console) -> None:
    """`profile --search`: the best setting per P (a best-over-settings row, labelled so next to the paper's),
    then every setting's value at every P when the grid is small enough to read."""
    best, meta = result["best"], result["search"]
    fidelity = meta["objective"] != "acc"
    value = "agrees with stock (%)" if fidelity else "Acc (%)"
    held = meta.get("holdout")
    columns = [("P", "right"), ("settings", "right"), ("best setting", "left"), (f"{value}, best", "right"),
               ("95% interval", "right"), ("margin to runner-up", "right"), ("tied", "right")]
    if held:
        columns += [(f"held-out {value}", "right"), ("held-out stock", "right"), ("optimism", "right")]
    columns.append(("GMACs (analytic)", "right"))
    with_paper = any(b.get("paper_acc") is not None for b in best) and not fidelity
    if with_paper:
        columns.append(("paper Acc (%), best over settings", "right"))
    ablation = next((b["paper_ablation"] for b in best if b.get("paper_ablation")), None) if not fidelity else None
    if ablation:
        columns.append((f"paper Acc (%), {ablation.split(' (')[0]}", "right"))
    cells = []
    for b in best:
        margin = "-" if b["margin"] is None else f"{b['margin']:+.2f} ({b['margin_images']} img)"
        row = [b["P"], b["settings"], _setting(b["best"]), _num(b["value"], 2), _interval(b.get("ci95")), margin, b["tied"]]
        if held:
            row += [_num(b.get("holdout"), 2), _num(b.get("holdout_stock"), 2), _num(b.get("optimism"), 2)]
        row.append(_num(b["gmacs_analytic"], 3))
        if with_paper:
            row.append(_num(b.get("paper_acc"), 1))
        if ablation:
            row.append(_num(b.get("paper_ablation_acc"), 1))
        cells.append(row)
    stock = next((r for r in result["rows"] if r["method"] == "stock"), {})
    images = best[0]["images"] if best else 0
    caption = (f"{result.get('weights')}; best over the grid {_grid(meta['grid'])} per P, chosen on {images} images "
               f"(seed-0 subset of {result.get('data')}); unreduced model: {_num(stock.get(meta['objective']), 2)}")
    if held:
        caption += (f"; held-out: the winner and the unreduced model on {held} further images; optimism = "
                    "(best - stock) chosen on minus (best - stock) held out")
    source = next((b.get("paper_source") for b in best if b.get("paper_source")), None)
    if with_paper and source:
        caption += f"; paper: {source}"
    if ablation:
        caption += f"; paper: {ablation}"
    console.print(table(f"{result['model']} + {meta['method']}: best over settings per P", columns, cells, caption=caption,
                        paper=[]))
    for b in best:
        for name in b.get("at_edge", []):
            console.print(f"[yellow]note[/] P={b['P']}: the best {name} ({b['best'][name]:g}) is at the edge of the "
                          "grid; a wider range may do better", highlight=False)
    if result.get("best_per"):
        _render_best_per(result["best_per"], [b["P"] for b in best], value, console)
    settings = list(dict.fromkeys(json.dumps(r["grid"], sort_keys=True) for r in result["rows"] if "grid" in r))
    if 1 < len(settings) <= 48:
        Ps = [b["P"] for b in best]
        winners = {(b["P"], json.dumps(b["best"], sort_keys=True)) for b in best}
        found = {(r["P"], json.dumps(r["grid"], sort_keys=True)): r for r in result["rows"] if "grid" in r}
        grid_rows = []
        for key in settings:
            line = [_setting(json.loads(key))]
            for P in Ps:
                r = found.get((P, key))
                text = _num(r.get(meta["objective"]) if r else None, 2)
                line.append(f"{text}*" if (P, key) in winners else text)
            grid_rows.append(line)
        console.print(table(f"Every setting: {value} (*: the best per P)", [("setting", "left")] +
                            [(f"P={P}", "right") for P in Ps], grid_rows))


def _render_best_per(grouped: dict[str, Any], Ps: list[int], value: str, console: Console) -> None:
    """Tables 4/5's layout: one line per value of the grouped hyperparameter (the best over the others), each
    followed by the published row it reproduces, in italics."""
    name, entries = grouped["name"], grouped["rows"]
    lines, paper = [], []
    for group in dict.fromkeys(e[name] for e in entries):
        mine = {e["P"]: e for e in entries if e[name] == group}
        tried = next(iter(mine.values()))["settings"]
        lines.append([f"{name}={group:g}" if isinstance(group, float) else f"{name}={group}", tried,
                      *(_num(mine[P]["value"], 2) if P in mine else "-" for P in Ps)])
        label = next((e["paper"] for e in mine.values() if e.get("paper")), None)
        if label:
            paper.append(len(lines))
            lines.append([f"paper: {label.split(' (')[0]}", "-",
                          *(_num(mine[P].get("paper_acc"), 1) if P in mine else "-" for P in Ps)])
    columns = [(name, "left"), ("settings", "right")] + [(f"P={P}", "right") for P in Ps]
    caption = "paper rows: no finetuning, best over the other settings (authors' code)" if paper else None
    console.print(table(f"Best {value} per {name}, over the other settings", columns, lines, caption=caption, paper=paper))


def _setting(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) or "-"


def _grid(axes: dict[str, list]) -> str:
    return " x ".join(f"{k} {{{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}}}"
                      for k, values in axes.items())
