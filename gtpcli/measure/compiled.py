"""torch.compile for the points of a sweep, and what dynamo did: graphs captured, graph breaks and their reasons.

One compiled wrapper serves every point of a combination, as one set of weights does: each point's first
pass compiles it (dynamo's guards see the swapped block classes and keep one graph per point), so the
rounds switch between compiled points without compiling again. A method that breaks the graph, or makes
dynamo compile again while the timed rounds run (a shape that changes from call to call), is a finding: it
is reported, not hidden.
"""

from __future__ import annotations

from typing import Any

import torch


def compile_model(model: torch.nn.Module, mode: str, points: int = 1) -> torch.nn.Module:
    """A freshly compiled wrapper of `model` (dynamo's caches and counters emptied first), allowed one
    compiled graph per point of the sweep before dynamo would fall back to eager."""
    import torch._dynamo

    torch._dynamo.reset()
    _counters().clear()
    config = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit"):  # the name changed between torch versions
        if hasattr(config, limit):
            setattr(config, limit, max(getattr(config, limit), 2 * points + 8))
    return torch.compile(model, mode=None if mode == "default" else mode)


def snapshot() -> dict[str, Any]:
    """dynamo's counters now, to take what one point's first pass added."""
    counters = _counters()
    return {"graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
            "breaks": dict(counters.get("graph_break", {}))}


def stats(since: dict[str, Any] | None = None) -> dict[str, Any]:
    """What dynamo has done since `compile_model` (or since the `snapshot` given): graphs captured and
    graph breaks with their reasons."""
    now, before = snapshot(), since or {"graphs": 0, "breaks": {}}
    breaks = {reason: count - before["breaks"].get(reason, 0) for reason, count in now["breaks"].items()}
    breaks = {reason: count for reason, count in breaks.items() if count > 0}
    return {"graphs": now["graphs"] - before["graphs"], "graph_breaks": sum(breaks.values()),
            "graph_break_reasons": sorted(breaks)[:5]}


def findings(warm: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The lines a researcher should see: graph breaks, and compiling again during the timed passes."""
    found = []
    if warm["graph_breaks"]:
        found.append(f"torch.compile: {warm['graph_breaks']} graph break(s), {warm['graphs']} graphs "
                     f"({'; '.join(warm['graph_break_reasons'])})")
    if after["graphs"] > warm["graphs"]:
        found.append(f"torch.compile: recompiled during the timed passes ({after['graphs'] - warm['graphs']} "
                     "new graphs): the timed figures include compiling")
    return found


def _counters():
    from torch._dynamo.utils import counters
    return counters
