"""Every registered method at the setting whose analytic cost is nearest a target (`gtpcli compare`): each
card's knob (`base.Knob`: P, EViT's keep_rate, ...) gives the candidate values and their token schedules,
the cost model their MACs. Nothing is measured. A method without an analytic cost (its token counts depend
on the image), or a target out of its reach, gets a one-line reason and the others are still solved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..cost.analytic import Arch
from ..cost.solve import Miss, nearest, stock_macs
from ..errors import GtpcliError
from . import REGISTRY, backbone_macs, implemented_overhead
from .base import Method


@dataclass(frozen=True)
class Setting:
    """A method's solved setting: what to run it with, and its analytic MACs at batch 1."""

    method: str
    knob: str
    value: Any
    macs: int

    @property
    def kwargs(self) -> dict[str, Any]:
        """The patch's keywords for the knob ({"P": 8}, {"keep_rate": 0.7})."""
        return {self.knob: self.value}


def analytic_macs(arch: Arch, method: str, removals: Sequence[int], hparams: Mapping[str, Any]) -> int:
    """The patched model's analytic MACs: the backbone under the schedule plus what the method adds."""
    return (sum(backbone_macs(arch, method, removals, hparams).values())
            + implemented_overhead(arch, method, removals, hparams))


def candidates(arch: Arch, card: Method, hparams: Mapping[str, Any] | None = None) -> list[tuple[Any, int]]:
    """(knob value, analytic MACs) for every value of the card's knob this model can run, in knob order; when
    none can, the first value's one-line error (e.g. EViT's drop_loc 3,6,9 on a 4-block model)."""
    knob = card.matched_cost_knob()
    resolved = card.resolved(hparams or {})
    found, refused = [], []
    for value in knob.values(arch):
        hp = {**resolved, knob.name: value} if knob.name in resolved else resolved
        try:
            found.append((value, analytic_macs(arch, card.name, knob.removals(arch, value, hp), hp)))
        except GtpcliError as exc:  # a value this model cannot run (e.g. a keep ratio that keeps no token)
            refused.append(exc)
    if not found and refused:
        raise refused[0]
    return found


def solve(arch: Arch, card: Method, target: int, hparams: Mapping[str, Any] | None = None) -> Setting | Miss:
    """The card's setting whose analytic MACs are nearest `target` MACs, or why there is none."""
    knob = card.matched_cost_knob()
    if knob is None:
        return Miss(f"{card.title}: its token counts depend on the image, so no setting has an analytic cost "
                    f"to solve for (measure its E[GMACs] over images: gtpcli profile --method {card.name})")
    try:
        found = nearest(target, candidates(arch, card, hparams), stock_macs(arch), knob.name)
    except GtpcliError as exc:
        return Miss(f"{card.title}: {exc}")
    if isinstance(found, Miss):
        return Miss(f"{card.title}: {found.reason}")
    return Setting(card.name, knob.name, found.value, found.macs)


def solve_all(arch: Arch, target: int, hparams: Mapping[str, Mapping[str, Any]] | None = None,
              methods: Sequence[str] | None = None) -> dict[str, Setting | Miss]:
    """Every registered method (or the named ones), in registry order, at `target` MACs."""
    names = methods if methods is not None else list(REGISTRY)
    return {name: solve(arch, REGISTRY[name], target, (hparams or {}).get(name)) for name in names}


__all__ = ["Miss", "Setting", "analytic_macs", "candidates", "solve", "solve_all"]
