"""Rendering of `gtpcli compare`: the plan or the measured comparison, one table per target, then each
skipped method's reason once (a target nothing reaches: one line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .layout import table


def setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in setting.items())


def render_plan(result: dict[str, Any], console: Console) -> None:
    columns = [("method", "left"), ("setting", "left"), ("GMACs (analytic)", "right"), ("vs target", "right")]
    for target in result["targets_gmacs"]:
        rows = [[r["method"], setting_text(r["setting"]), gmacs_text(r["gmacs"]), f"{r['gap']:+.1%}"]
                for r in result["rows"] if r["target_gmacs"] == target]
        caption = f"stock {gmacs_text(result['stock_gmacs'])} GMACs; settings from the cost model, not measured"
        console.print(table(f"{result['model']} at {target:g} GMACs", columns, rows, caption=caption))
    render_skipped(result, console)


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
    caption = conditions(result)
    for target in result["targets_gmacs"]:
        rows = [r for r in result["rows"] if r["target_gmacs"] == target]
        if not rows:
            continue
        cells = [[r["method"], setting_text(r["setting"]) or "-", gmacs_text(r.get("gmacs")),
                  "-" if r.get("gap") is None or r["method"] == "stock" else f"{r['gap']:+.1%}",
                  "-" if r.get("img_s") is None else f"{r['img_s']:.1f}", speedup_text(r),
                  "-" if r.get("ideal_speedup") is None else f"{r['ideal_speedup']:.2f}x",
                  "-" if r.get("share_of_ideal") is None else f"{r['share_of_ideal']:.0%}"]
                 + ["-" if r.get(key) is None else f"{r[key]:.1f}" for key, _, _ in quality] for r in rows]
        console.print(table(f"{result['model']} at {target:g} GMACs", columns, cells, caption=caption))
    render_skipped(result, console)
    for warning in dict.fromkeys(f"{r['method']} {setting_text(r['setting'])}: {w}".replace(" : ", ": ")
                                 for r in result["rows"] for w in r.get("warnings") or []):
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
