"""Matching a target cost from the analytic model alone: of a knob's candidate values, the one whose MACs
are nearest the target, or why the target is out of reach; and the stock model's input size that matches
it (the `resolution` baseline of `gtpcli compare`). No torch, no registry: the candidates of a method
come from its card (gtpcli/methods/solve.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

from .analytic import Arch, backbone_macs


@dataclass(frozen=True)
class Match:
    """The candidate nearest the target: its knob value and analytic MACs."""

    value: Any
    macs: int


@dataclass(frozen=True)
class Miss:
    """Why a target has no match: one line."""

    reason: str


def nearest(target: int, candidates: Sequence[tuple[Any, int]], stock: int, knob: str) -> Match | Miss:
    """The (value, MACs) candidate nearest `target` MACs, the first in knob order on ties. Out of reach: a
    target above the stock model's MACs (nothing to remove), or more than one step below the cheapest
    candidate (a step: from the cheapest candidate to the next dearer one)."""
    if not candidates:
        return Miss(f"no value of {knob} runs on this model")
    if target > stock:
        return Miss(f"{target / 1e9:.3f} GMACs is above the stock model's {stock / 1e9:.3f}: nothing to remove")
    costs = sorted({macs for _, macs in candidates})
    step = costs[1] - costs[0] if len(costs) > 1 else 0
    if target < costs[0] - step:
        value = next(v for v, macs in candidates if macs == costs[0])
        return Miss(f"{target / 1e9:.3f} GMACs is out of reach: the cheapest setting, {knob}={value}, "
                    f"costs {costs[0] / 1e9:.3f} GMACs")
    value, macs = min(candidates, key=lambda c: abs(c[1] - target))
    return Match(value, macs)


def stock_macs(arch: Arch) -> int:
    """The stock model's analytic MACs at batch 1."""
    return sum(backbone_macs(arch, 0).values())


def at_grid(arch: Arch, side: int) -> Arch:
    """The same model fed a side x side grid of patches."""
    return replace(arch, N=side * side + arch.prefix)


def resolution(arch: Arch, target: int) -> Match | Miss:
    """The input size (pixels, a multiple of the patch size) at which the stock model's MACs are nearest
    `target`; a square grid of patches no larger than the model's own."""
    side = math.isqrt(arch.N - arch.prefix)
    if side * side != arch.N - arch.prefix:
        return Miss(f"the model's {arch.N - arch.prefix} patches are not a square grid")
    candidates = [(s * arch.patch_size, stock_macs(at_grid(arch, s))) for s in range(1, side + 1)]
    return nearest(target, candidates, stock_macs(arch), "input size")
