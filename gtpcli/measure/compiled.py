"""torch.compile for a sweep point, and what dynamo did: graphs captured, graph breaks and their reasons.

Each point is compiled afresh (the patch changes the forward), after a dynamo reset so caches and counters
belong to this point alone. A method that breaks the graph, or makes dynamo compile again while the
timed passes run (a shape that changes from call to call), is a finding: it is reported, not hidden.
"""

from __future__ import annotations

from typing import Any

import torch


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """A freshly compiled wrapper of `model` (dynamo's caches and counters emptied first)."""
    import torch._dynamo

    torch._dynamo.reset()
    _counters().clear()
    return torch.compile(model, mode=None if mode == "default" else mode)


def stats() -> dict[str, Any]:
    """What dynamo has done since `compile_model`: graphs captured and graph breaks with their reasons."""
    counters = _counters()
    breaks = dict(counters.get("graph_break", {}))
    return {"graphs": int(counters.get("stats", {}).get("unique_graphs", 0)), "graph_breaks": sum(breaks.values()),
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
