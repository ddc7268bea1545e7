"""Rendering of `gtpcli compare`: the plan or the measured comparison, one table per target, then each
skipped method's reason once (a target nothing reaches: one line); and the report folder (`--report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import GtpcliError
from .layout import table
from .plots import GAP_PARTS, speedup_of, target_text
from .tables import _share, _times


def setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in setting.items())


def render_plan(result: dict[str, Any], console: Console) -> None:
    columns = [("method", "left"), ("setting", "left"), ("GMACs (analytic)", "right"), ("vs target", "right")]
    paper = any("paper" in r for r in result["rows"])
    for target in result["targets_gmacs"]:
        rows = [[r["method"], setting_text(r["setting"]), gmacs_text(r["gmacs"]), f"{r['gap']:+.1%}"]
                + ([paper_text(r)] if paper else []) for r in result["rows"] if r["target_gmacs"] == target]
        caption = f"stock {gmacs_text(result['stock_gmacs'])} GMACs; settings from the cost model, not measured"
        if speedup_of(result, target):
            caption += (f"; the ideal cost of {target_text(target, speedup_of(result, target))}: each setting is "
                        "corrected by a short timing before the measurement")
        console.print(table(f"{result['model']} at {title(result, target)}", columns + [PAPER_COLUMN] * paper, rows,
                            caption=caption + paper_caption(result)))
    render_skipped(result, console)


PAPER_COLUMN = ("paper top-1", "left")


def paper_text(row: dict[str, Any]) -> str:
    """The paper's top-1 for the row's method at its target, and the setting the paper ran it at."""
    paper = row.get("paper")
    return f"{paper['acc']:.1f} ({setting_text(paper['setting'])})" if paper else "-"


def paper_caption(result: dict[str, Any]) -> str:
    """What the paper's column is: published, under the paper's conditions, never measured here."""
    source = next((r["paper"]["source"] for r in result["rows"] if "paper" in r), None)
    return (f". Paper top-1: % without finetuning at the paper's own setting (in brackets), as published in {source}; "
            "a reference, not measured here") if source else ""


def title(result: dict[str, Any], target: float) -> str:
    """A target's table title: "3.5 GMACs", or for a speed target "1.5x (ideal 3.067 GMACs)"."""
    speedup = speedup_of(result, target)
    return f"{speedup:g}x (ideal {gmacs_text(target)} GMACs)" if speedup else target_text(target)


def render_skipped(result: dict[str, Any], console: Console) -> None:
    """Each reason once: a target nothing reaches in one line, then each method's reason at the others."""
    unreached = {missed["target_gmacs"] for missed in result.get("unreached", [])}
    for missed in result.get("unreached", []):
        console.print(f"skipped: {missed['reason']}", highlight=False, soft_wrap=True)
    for reason in dict.fromkeys(s["reason"] for s in result["skipped"] if s["target_gmacs"] not in unreached):
        console.print(f"skipped: {reason}", highlight=False, soft_wrap=True)


def gmacs_text(value: float | None) -> str:
    """GMACs to three decimals, or four significant digits for a model below 0.1 GMACs."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4g}"


def speedup_text(row: dict[str, Any]) -> str:
    """The median of per-round ratios with its quartiles, ! where the rounds disagree."""
    if row.get("speedup") is None:
        return "-"
    text = f"{row['speedup']:.2f}x"
    if row.get("speedup_q1") is not None:
        text += f" ({row['speedup_q1']:.2f}-{row['speedup_q3']:.2f})"
    return text + (" !" if row.get("rounds_disagree") else "")


def conditions(result: dict[str, Any]) -> str:
    """What every figure of a measured comparison depends on, for the tables' caption."""
    env, rows = result.get("env") or {}, result["rows"]
    batch = next((r.get("timed_batch_size") or r.get("batch_size") for r in rows if r.get("img_s")), env.get("batch_size"))
    rounds = env.get("rounds")
    return (f"{result.get('weights', 'random weights')}; {env.get('device_name') or env.get('device')}, "
            f"{env.get('dtype')}, batch {batch}; {rounds} interleaved rounds: stock and every row of the target, "
            f"shuffled per round. Speed-up: median of per-round ratios to stock (quartiles; ! where the rounds "
            f"disagree); ideal: stock GMACs / row GMACs; GMACs counted (fvcore)" + data_text(result))


QUALITY = (("acc", "top-1 (%)", "top-1: accuracy"),
           ("fidelity_top1", "agrees (%)", "agrees: top-1 agreement with the stock model at full size"))


def quality_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(key, header, meaning) of what --data measured in these rows: accuracy, and with --fidelity agreement."""
    return [column for column in QUALITY if any(r.get(column[0]) is not None for r in rows)]


def data_text(result: dict[str, Any]) -> str:
    """For the caption: what the quality columns mean, and on which images (every row saw the same ones,
    each at its own input size)."""
    if not result.get("data"):
        return ""
    rows = result["rows"]
    n = next((r["acc_n"] for r in rows if r.get("acc_n")), result.get("limit"))
    meaning = "".join(f"; {text}" for _, _, text in quality_columns(rows))
    return (f". Data: {Path(result['data']).name} ({f'{n} images' if n else 'every image'}), the same images for "
            f"every row, each resized by the model's eval transform to the row's input size{meaning}")


def render_measured(result: dict[str, Any], console: Console) -> None:
    """One table per measured target: counted GMACs, img/s, the speed-up and the share of the ideal reached,
    and with --data the accuracy (or agreement) of each row."""
    quality = quality_columns(result["rows"])
    columns = [("method", "left"), ("setting", "left"), ("GMACs", "right"), ("vs target", "right"),
               ("img/s", "right"), ("speed-up (quartiles)", "left"), ("ideal", "right"), ("of ideal", "right")]
    columns += [(header, "right") for _, header, _ in quality]
    paper = any("paper" in r for r in result["rows"])
    columns += [PAPER_COLUMN] * paper
    caption = conditions(result) + paper_caption(result)
    for target in result["targets_gmacs"]:
        rows = [r for r in result["rows"] if r["target_gmacs"] == target]
        if not rows:
            continue
        cells = [[r["method"], setting_text(r["setting"]) or "-", gmacs_text(r.get("gmacs")), vs_target(r),
                  "-" if r.get("img_s") is None else f"{r['img_s']:.1f}", speedup_text(r),
                  "-" if r.get("ideal_speedup") is None else f"{r['ideal_speedup']:.2f}x",
                  "-" if r.get("share_of_ideal") is None else f"{r['share_of_ideal']:.0%}"]
                 + ["-" if r.get(key) is None else f"{r[key]:.1f}" for key, _, _ in quality]
                 + [paper_text(r)] * paper for r in rows]
        speed = speedup_of(result, target)
        console.print(table(f"{result['model']} at {title(result, target)}", columns, cells,
                            caption=caption + (SPEED_CAPTION if speed else "")))
        render_gap(result, target, rows, console)
    render_skipped(result, console)
    for warning in dict.fromkeys(f"{r['method']} {setting_text(r['setting'])}: {w}".replace(" : ", ": ")
                                 for r in result["rows"] for w in r.get("warnings") or []):
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)


SPEED_CAPTION = (". Speed target: each row's setting solved at the GMACs where, at the share of its ideal a short "
                 "timing measured, it reaches the speed-up; vs target: measured speed-up against it")


def vs_target(row: dict[str, Any]) -> str:
    """How far a row is from its target: its speed-up against a speed target, else its GMACs against a cost one."""
    if row["method"] == "stock":
        return "-"
    gap = row.get("speedup_gap") if row.get("target_speedup") else row.get("gap")
    return "-" if gap is None else f"{gap:+.1%}"


def render_gap(result: dict[str, Any], target: float, rows: list[dict[str, Any]], console: Console) -> None:
    """Where each row's ideal went (the rows with a breakdown): the ideal, measured and lost milliseconds per
    batch, and the parts of the loss, each with its speed-up or share of the gap on a second line."""
    found = [r for r in rows if r.get("ideal_gap")]
    if not found:
        return
    columns = [("method", "left"), ("ideal", "right"), ("measured", "right"), ("gap", "right")]
    columns += [(header, "right") for header in GAP_PARTS.values()]
    cells = [[r["method"], *gap_cells(r["ideal_gap"])] for r in found]
    console.print(table(f"{result['model']} at {title(result, target)}: where the ideal went (ms per batch)", columns,
                        cells, caption=gap_caption(result)))


def gap_cells(split: dict[str, Any]) -> list[str]:
    """ideal, measured, gap and each part: milliseconds, then the speed-up over stock or the share of the gap."""
    found = [f"{split['ideal_ms']:.1f}\n{_times(split['ideal_speedup'])}",
             f"{split['measured_ms']:.1f}\n{_times(split['measured_speedup'])}",
             f"{split['gap_ms']:+.1f}\n{_share(1.0 if split['gap_ms'] else None)}"]
    parts = split["parts"]
    return found + [f"{parts[name]['ms']:+.1f}\n{_share(parts[name]['share'])}" if name in parts else "-"
                    for name in GAP_PARTS]


def gap_caption(result: dict[str, Any]) -> str:
    """How the breakdown was measured and what each part means, once per table."""
    passes = result.get("breakdown") or {}
    how = (f"{passes['rounds']} profiled passes of {passes['steps']} forwards"
           if passes.get("rounds") and passes.get("steps") else "profiled passes")
    return (f"From {how} of each row and of stock, interleaved, on the timed batch: each stage's median. Ideal: "
            "stock ms x row GMACs / stock GMACs (counted); gap = measured - ideal = own stages (the method's "
            "labelled stages) + attention + MLP (the row's time there beyond stock's scaled by that stage's MAC "
            "ratio: the path the method forces) + rest (embedding, head, gathers and copies outside the labels). "
            "Second lines: speed-up over stock, share of the gap")


# --- the report: a folder a user pastes into a paper or an issue ---------------------------------------------

REPORT_PAGE = "README.md"
REPORT_DATA = "compare.json"
REPORT_MARK = "# gtpcli compare:"  # the page's first line: how a folder is known to hold an earlier report


def check_report_dir(directory: Path) -> None:
    """Before anything is measured: the folder is new, empty, or an earlier report (rewritten); never a folder
    of the user's own files."""
    if directory.exists() and not directory.is_dir():
        raise GtpcliError(f"--report {directory} is a file; give a folder")
    if directory.is_dir() and any(directory.iterdir()):
        page = directory / REPORT_PAGE
        first = page.read_text(errors="replace").splitlines()[:1] if page.is_file() else []
        if not (first and first[0].startswith(REPORT_MARK)):
            raise GtpcliError(f"--report {directory} holds files that are not a gtpcli compare report; give a new "
                              "or empty folder")


def report_figures(result: dict[str, Any]) -> list[str]:
    """The `gtpcli plot` kinds a comparison's rows can draw: the trade-off where accuracy or fidelity was
    measured, where the ideal went where the rows were broken down."""
    rows = result["rows"]
    kinds = []
    if any(r.get("acc") is not None or r.get("fidelity_top1") is not None for r in rows if r["method"] != "stock"):
        kinds.append("tradeoff")
    if any(r.get("ideal_gap") for r in rows):
        kinds.append("gap")
    return kinds


def report_conditions(result: dict[str, Any], command: str) -> list[str]:
    """What every number of the report depends on, one item each."""
    env = result.get("env") or {}
    data = result.get("data")
    images = f"{data} (first {result['limit']} images)" if data and result.get("limit") else data
    return [f"command: `{command}`",
            f"model: {result['model']} (timm `{result.get('timm')}`), {result.get('weights', 'random weights')}",
            f"data: {images}" if data else "data: none (cost and speed only; no accuracy or fidelity)",
            f"hardware: {env.get('device_name')} ({env.get('device')}), {env.get('threads')} torch threads of "
            f"{env.get('cpus')} CPUs",
            f"software: torch {env.get('torch')}, timm {env.get('timm')}, Python {env.get('python')}",
            f"timing: {env.get('dtype')}, batch {env.get('batch_size')}, {env.get('rounds')} interleaved rounds of "
            f"{env.get('batches_per_round')} batch(es) per row, order shuffled per round (seed {env.get('seed')})",
            "GMACs: counted by fvcore on one image, checked against the analytic cost model"]


def report_page(result: dict[str, Any], command: str, figures: dict[str, str]) -> str:
    """The report as Markdown: the conditions, the tables as the terminal shows them, the figures with their
    captions, and where the data is."""
    from .markup import render

    speedups = result.get("targets_speedup")
    targets = (", ".join(f"{t:g}x" for t in speedups) if speedups
               else ", ".join(f"{t:g}" for t in result["targets_gmacs"]) + " GMACs")
    lines = [f"{REPORT_MARK} {result['model']} at {targets}", "",
             *(f"- {item}" for item in report_conditions(result, command)), "",
             render(result, render_measured, "markdown")]
    for kind, caption in figures.items():
        lines += ["", f"![{kind}]({kind}.png)", "", caption]
    lines += ["", f"Every row, whole, as data: [{REPORT_DATA}]({REPORT_DATA}) (the fields: gtpcli's docs/compare.md)."]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], directory: Path, command: str) -> Path:
    """The report folder: the Markdown page, the result as JSON, and each figure its rows can draw (as PNG,
    drawn from the JSON copy, so the page and its figures show the same rows)."""
    from ..files import atomic_write
    from ..results import write
    from . import draw, plots

    data = directory / REPORT_DATA
    write(result, data, "--report")
    figures = {}
    for kind in report_figures(result):
        figure = plots.figure(kind, [data])
        draw.save(figure, directory / f"{kind}.png")
        figures[kind] = figure.caption
    page = directory / REPORT_PAGE
    atomic_write(page, report_page(result, command, figures), "--report")
    return page
