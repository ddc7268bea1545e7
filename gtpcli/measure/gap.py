"""Where the ideal speed-up went: the gap between the time the MACs promise and the time measured, split by
the profiler's stage labels into parts that add up to it exactly. Plain numbers in, a plain dict out (no
torch), so a trace, a comparison or a plot can all use it on recorded stage times."""

from __future__ import annotations

from typing import Collection, Mapping

ATTENTION, MLP = "attention", "mlp"
DIGITS = 3  # milliseconds, as the trace's stage table rounds them


def ideal_ms(stock_ms: float, stock_macs: float, method_macs: float) -> float:
    """The method's time if time followed MACs: the stock model's time over the ideal speed-up."""
    return stock_ms / ideal_speedup(stock_macs, method_macs)


def ideal_speedup(stock_macs: float, method_macs: float) -> float:
    """Stock MACs over the method's (its own MACs included): the speed-up the cost model promises."""
    return stock_macs / method_macs


def scaled_stock(stage: str, stock_ms: Mapping[str, float], ratio: float) -> float:
    """What the stock model's `stage` would take at the method's MACs for it: its time times their ratio."""
    return stock_ms.get(stage, 0.0) * ratio


def stage_ratio(stage: str, stage_macs: Mapping[str, tuple[float, float]] | None, whole: float) -> float:
    """The method's MACs in `stage` over the stock model's; the whole model's ratio where the split is unknown."""
    if stage_macs is None:
        return whole
    stock, method = stage_macs[stage]
    return method / stock


def excess(stage: str, stock_ms: Mapping[str, float], method_ms: Mapping[str, float], ratio: float) -> float:
    """The method's time in `stage` beyond the stock model's scaled to the method's MACs there: what the
    path the method forces (explicit attention, an attention summary, smaller GEMMs) costs above the ideal."""
    return method_ms.get(stage, 0.0) - scaled_stock(stage, stock_ms, ratio)


def where_the_ideal_went(stock_ms: Mapping[str, float], method_ms: Mapping[str, float], stock_macs: float,
                         method_macs: float, own_stages: Collection[str],
                         stage_macs: Mapping[str, tuple[float, float]] | None = None) -> dict:
    """Split the measured time lost against the ideal into parts: the method's own stages (all of their time:
    the ideal gives them none), attention and MLP (each beyond the stock model's time scaled by that stage's
    MAC ratio, `stage_macs[stage] = (stock, method)`, or by the whole model's where not given), and the rest
    (patch embedding, unlabelled time, gathers and copies between the labels, and what the per-stage ratios
    leave of the whole ratio). `stock_ms` and `method_ms` map stage labels to milliseconds from the same
    passes. The rest is the gap minus the others, after rounding, so the parts add up to the gap exactly."""
    stock_total, measured = sum(stock_ms.values()), sum(method_ms.values())
    whole = method_macs / stock_macs
    ratios = {stage: stage_ratio(stage, stage_macs, whole) for stage in (ATTENTION, MLP)}
    ideal = ideal_ms(stock_total, stock_macs, method_macs)
    gap = round(measured - ideal, DIGITS)
    parts = {"own_stages": round(sum(method_ms.get(stage, 0.0) for stage in own_stages), DIGITS)}
    parts |= {stage: round(excess(stage, stock_ms, method_ms, ratio), DIGITS) for stage, ratio in ratios.items()}
    parts["rest"] = round(gap - sum(parts.values()), DIGITS)
    return {
        "stock_ms": round(stock_total, DIGITS), "measured_ms": round(measured, DIGITS),
        "ideal_ms": round(ideal, DIGITS), "gap_ms": gap,
        "ideal_speedup": round(ideal_speedup(stock_macs, method_macs), 4),
        "measured_speedup": round(stock_total / measured, 4) if measured else None,
        "mac_ratios": {stage: round(ratio, 4) for stage, ratio in ratios.items()},
        "mac_ratios_from": "stages" if stage_macs else "whole model",
        "parts": {name: {"ms": ms, "share": round(ms / gap, 4) if gap else None} for name, ms in parts.items()},
    }
