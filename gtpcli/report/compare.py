"""Rendering of `gtpcli compare`'s plan: one table per target, then each skipped method's reason once."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from .layout import table


def setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in setting.items())


def render_plan(result: dict[str, Any], console: Console) -> None:
    columns = [("method", "left"), ("setting", "left"), ("GMACs (analytic)", "right"), ("vs target", "right")]
    for target in result["targets_gmacs"]:
        rows = [[r["method"], setting_text(r["setting"]), f"{r['gmacs']:.3f}", f"{r['gap']:+.1%}"]
                for r in result["rows"] if r["target_gmacs"] == target]
        caption = f"stock {result['stock_gmacs']:.3f} GMACs; settings from the cost model, not measured"
        console.print(table(f"{result['model']} at {target:g} GMACs", columns, rows, caption=caption))
    for reason in dict.fromkeys(skip["reason"] for skip in result["skipped"]):
        console.print(f"skipped: {reason}", highlight=False, soft_wrap=True)
