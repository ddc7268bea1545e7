"""The token-reduction methods, one folder each, registered in one table.

`patch`, `profile`, `trace`, `check`, `complexity` and the help texts read `REGISTRY`; none of them names a
method. Adding one: a folder `gtpcli/methods/<name>/` with a torch-free `card.py` that builds a `Method` (see
`base.py`) and names its `patch.py`, its name in `_MODULES`, a profile entry and its tests (docs/architecture.md).
Importing this package imports the cards only, never torch (`gtpcli complexity` and `--help` stay instant).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Mapping, Sequence

from ..errors import GtpcliError
from .base import Column, HParam, Method

_MODULES = ("gtp", "tome", "tcvit", "evit", "evo", "ats", "tpc", "random")
CENTRE = "gtp"  # the method gtpcli is built around: the default, with its own flags, per-P best settings and --search

REGISTRY: dict[str, Method] = {}
for _module in _MODULES:
    _method = import_module(f"{__name__}.{_module}.card").METHOD
    REGISTRY[_method.name] = _method


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Method:
    """The registered method, or a one-line error listing the known ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise GtpcliError(f"unknown method {name!r} (choose from {', '.join(REGISTRY)})") from None


def scheduled() -> tuple[str, ...]:
    """The methods with one token schedule per model (swept by P, with an analytic `complexity`)."""
    return tuple(name for name, method in REGISTRY.items() if not method.adaptive)


def adaptive() -> tuple[str, ...]:
    """The methods whose token counts depend on the image (measured by E[GMACs], gtpcli/cost/adaptive.py)."""
    return tuple(name for name, method in REGISTRY.items() if method.adaptive)


def stages() -> tuple[str, ...]:
    """Every method's trace stage labels, in registry order."""
    return tuple(label for method in REGISTRY.values() for label in method.stages)


def implemented_overhead(arch, method: str, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """MACs the patched model adds to the backbone, as a MAC counter sees them (0 for the stock model)."""
    if method == "stock":
        return 0
    return get(method).implemented_overhead(arch, removals, hparams or {})


def backbone_macs(arch, method: str, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The backbone's analytic MACs (embed, blocks, head) under the method's token schedule."""
    from ..cost.analytic import backbone_macs as removed

    own = get(method).backbone_macs if method != "stock" else None
    return own(arch, removals, hparams or {}) if own is not None else removed(arch, removals)


def choices_text(sep: str = ", ") -> str:
    """`gtp, tome, tcvit` for help texts."""
    return sep.join(REGISTRY)


__all__ = ["Column", "HParam", "Method", "REGISTRY", "CENTRE", "get", "names", "scheduled", "adaptive", "stages",
           "implemented_overhead", "backbone_macs", "choices_text"]
