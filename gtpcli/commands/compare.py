"""`gtpcli compare`: every method at matched cost. This module builds the plan, as data and without torch:
for each target GMACs, every registered method at the setting whose analytic GMACs are nearest
(gtpcli/methods/solve.py), and the `resolution` baseline, the stock model at the input size whose GMACs
match (gtpcli/cost/solve.py). What cannot be solved is one line (a method whose cost depends on the image,
a target out of its reach) and the rest of the plan stands. Measuring the plan belongs to the profile
lane's point measurement in interleaved rounds (issue 27), not on main yet: only the plan is offered."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..config.ranges import parse_numbers
from ..cost.analytic import Arch
from ..cost.solve import Miss, resolution, stock_macs
from ..errors import GtpcliError
from ..methods import REGISTRY
from ..methods.solve import solve_all

RESOLUTION = "resolution"  # the baseline that lowers the input size instead of the tokens per block
MAX_TARGETS = 32


def targets(text: str) -> list[float]:
    """`3.5,3.0,2.6` to GMACs, each positive and none twice, in the order given."""
    found = parse_numbers(text, "--gmacs", limit=MAX_TARGETS)
    if any(value <= 0 for value in found):
        raise GtpcliError(f"--gmacs: every target must be positive, got {text!r}")
    if len(set(found)) != len(found):
        raise GtpcliError(f"--gmacs: {text!r} names a target twice")
    return found


def setting_row(target: float, method: str, setting: dict[str, Any], macs: int) -> dict[str, Any]:
    """One planned run: the method at its setting, its analytic GMACs and how far they are from the target."""
    return {"target_gmacs": target, "method": method, "setting": setting, "gmacs": macs / 1e9,
            "gap": macs / (target * 1e9) - 1}


def plan_target(arch: Arch, target: float, hparams: Mapping[str, Mapping[str, Any]],
                methods: Sequence[str] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The planned rows at one target (each method, then the resolution baseline), and what was skipped."""
    macs = round(target * 1e9)
    rows, skipped = [], []
    for method, found in solve_all(arch, macs, hparams, methods).items():
        if isinstance(found, Miss):
            skipped.append({"target_gmacs": target, "method": method, "reason": found.reason})
        else:
            rows.append(setting_row(target, method, found.kwargs, found.macs))
    size = resolution(arch, macs)
    if isinstance(size, Miss):
        skipped.append({"target_gmacs": target, "method": RESOLUTION, "reason": f"resolution: {size.reason}"})
    else:
        rows.append(setting_row(target, RESOLUTION, {"img_size": size.value}, size.macs))
    return rows, skipped


def refuse_solved_hparams(hparams: Mapping[str, Mapping[str, Any]]) -> None:
    """A hyperparameter the solver sets (EViT's keep_rate) would be overridden in silence: one line instead."""
    for method, given in hparams.items():
        knob = REGISTRY[method].matched_cost_knob()
        if knob is not None and knob.name in given:
            raise GtpcliError(f"--hp {method}.{knob.name}: compare solves {knob.name} for each target; leave it out")


def plan(name: str, arch: Arch, gmacs: Sequence[float], hparams: Mapping[str, Mapping[str, Any]] | None = None,
         methods: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole comparison's plan: every target's rows and skipped methods, nothing measured yet."""
    refuse_solved_hparams(hparams or {})
    rows, skipped = [], []
    for target in gmacs:
        found, missed = plan_target(arch, target, hparams or {}, methods)
        rows += found
        skipped += missed
    return {"model": name, "stock_gmacs": stock_macs(arch) / 1e9, "targets_gmacs": list(gmacs),
            "measured": False, "rows": rows, "skipped": skipped}


def cost_line(result: dict[str, Any]) -> str:
    """Said before a comparison starts: how many runs it holds, and how many lines were skipped."""
    targets_, rows = result["targets_gmacs"], result["rows"]
    methods = len({row["method"] for row in rows})
    reasons = len({skip["reason"] for skip in result["skipped"]})
    plural = "s" if len(targets_) != 1 else ""
    return (f"compare {result['model']}: {len(rows)} runs to measure ({len(targets_)} target{plural}, {methods} "
            f"methods and baselines)" + (f"; {reasons} skipped, each said below" if reasons else ""))
