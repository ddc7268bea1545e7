"""What a registered reduction method declares about itself, without importing torch.

A method's card (`gtpcli/methods/<name>/card.py`) builds one `Method`: its hyperparameters with their
checks, its trace stage labels, its analytic overhead (the paper's formula and what the patched model
runs), its `gtpcli complexity` columns, and the name of its torch patch (`<name>/patch.py`, imported on
first use: a card never imports it). `gtpcli/methods/__init__.py` puts every card in one table.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable, Mapping, Sequence

from ..cost.analytic import Arch, Number
from ..errors import GtpcliError


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its keyword (the API), default, type and allowed values."""

    name: str
    default: Any
    help: str
    kind: type = float                    # int, float, bool or str
    choices: tuple | None = None          # allowed values (str, or int for e.g. newton_steps)
    low: float | None = None              # inclusive lower bound (exclusive with low_open)
    high: float | None = None             # inclusive upper bound
    low_open: bool = False
    own_schedule: bool = False            # read only by the method's own schedule, not when P is given

    def check(self, value: Any, where: str) -> Any:
        """The value, coerced to its kind (an int where a float is expected), or a one-line error."""
        label = f"{where} {self.name}" if where else self.name
        if value is None and self.default is None:  # "not set": the method decides (see its help)
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise GtpcliError(f"{label} must be true or false, got {value!r}")
            return value
        if self.kind is tuple:  # a fixed-length tuple of non-negative ints (TPC's gate_dims)
            if (not isinstance(value, (list, tuple)) or len(value) != len(self.default)
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)):
                raise GtpcliError(f"{label} must be {len(self.default)} non-negative integers, got {value!r}")
            return tuple(value)
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GtpcliError(f"{label} must be a number, got {value!r}")
            if self.kind is int and int(value) != value:
                raise GtpcliError(f"{label} must be an integer, got {value!r}")
            value = self.kind(value)
            if isinstance(value, float) and math.isnan(value):
                raise GtpcliError(f"{label} must be a number, got nan")
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                bound = f"> {self.low}" if self.low_open else f">= {self.low}"
                raise GtpcliError(f"{label} must be {bound}, got {value!r}")
            if self.high is not None and value > self.high:
                raise GtpcliError(f"{label} must be <= {self.high}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise GtpcliError(f"{label} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.kind is str and not isinstance(value, str):
            raise GtpcliError(f"{label} must be a string, got {value!r}")
        return value

    def describe(self) -> str:
        """For help texts: `name` (choices or range, default)."""
        if self.choices is not None:
            allowed = "|".join(map(str, self.choices))
        elif self.kind is bool:
            allowed = "true|false"
        elif self.low is not None:
            allowed = f"{'>' if self.low_open else '>='} {self.low:g}" + (f", <= {self.high:g}" if self.high is not None else "")
        else:
            allowed = self.kind.__name__
        return f"{self.name} ({allowed}; default {self.default})"


@dataclass(frozen=True)
class Column:
    """One `gtpcli complexity` column: the result key, its header, and which token count it uses."""

    key: str
    header: str
    tokens: str = "N_l incl. prefix"


@dataclass(frozen=True)
class Knob:
    """The one setting a comparison at matched cost turns (gtpcli/methods/solve.py): `P`, or a hyperparameter
    of the method's own schedule; the values it may take on a model, and the token schedule each one gives,
    from which the analytic cost follows. A value the model cannot run is a GtpcliError of `removals`."""

    name: str                                                       # "P", or one of the card's hyperparameters
    values: Callable[[Arch], Sequence[Any]]                         # the candidates on this model, in knob order
    removals: Callable[[Arch, Any, Mapping[str, Any]], list[int]]   # tokens each block removes at a value

    def setting(self, value: Any) -> dict[str, Any]:
        """What a run is given: {"P": 8} or {"keep_rate": 0.7}."""
        return {self.name: value}


def uniform_p_values(arch: Arch) -> range:
    """P from 0 to the largest that leaves every block an image token: (N - prefix - 1) // L."""
    return range((arch.N - arch.prefix - 1) // arch.L + 1)


def uniform_p_removals(arch: Arch, P: int, hparams: Mapping[str, Any]) -> list[int]:
    from ..cost.analytic import per_layer, token_schedule

    token_schedule(arch.N, arch.L, P, arch.prefix)  # refuses a P that empties a block
    return per_layer(P, arch.L)


# The knob of a method with one P for every block (GTP, ToMe's unclamped range, TC-ViT, random, ...).
P_KNOB = Knob("P", uniform_p_values, uniform_p_removals)


def rates(step: float = 0.01) -> list[float]:
    """(0, 1] in steps: 0.01, 0.02, ... 1.0, the knob values of a keep rate."""
    count = round(1 / step)
    return [round((i + 1) * step, 10) for i in range(count)]


@dataclass(frozen=True)
class Method:
    """Everything the commands need to know about one reduction method."""

    name: str                                           # the registry key: `--method NAME`, patch(model, NAME)
    title: str                                          # as papers write it
    summary: str                                        # one line for help texts
    hparams: tuple[HParam, ...]
    stages: tuple[str, ...]                             # trace labels, each "<name>.<stage>"
    patch: str                                          # "module:Class" of its torch patch, imported on first use
    implemented_overhead: Callable[[Arch, Sequence[int], Mapping[str, Any]], int]
    complexity_row: Callable[[Arch, int, Mapping[str, Any]], dict[str, Number]]
    complexity_layers: Callable[[Arch, int, Mapping[str, Any]], list[dict[str, Number]]]
    columns: tuple[Column, ...]                         # which keys of complexity_row the table shows
    complexity_notes: Callable[[Sequence[Mapping[str, Any]]], list[str]] = lambda rows: []
    complexity_once: Callable[[Arch, Mapping[str, Any]], dict[str, Number]] | None = None  # per image, not per layer
    complexity_hparams: tuple[str, ...] = ()            # hyperparameters the analytic overhead depends on
    complexity_source: str | None = None                # where its overhead's closed form is printed ("GTP Eq. 15")
    aliases: Mapping[str, str] = field(default_factory=dict)   # other keyword -> API keyword (ToMe's r -> P)
    needs_cls: str | None = None                        # why some settings need a [CLS] token (docs)
    # The backbone's MACs under this method's schedule, where they are not `analytic.backbone_macs` of the
    # removals (Evo-ViT: skipped tokens come back for the head, and a block's MLP sees what its attention saw).
    backbone_macs: Callable[[Arch, Sequence[int], Mapping[str, Any]], dict[str, int]] | None = None
    # What a comparison at matched cost turns (`Knob`). None: `P_KNOB` for a method with one token schedule
    # per model; an input-dependent method without a knob has no analytic cost to solve for.
    knob: Knob | None = None
    # Input-dependent methods (token counts differ per image): `adaptive` rows carry E[GMACs] and
    # distributions (gtpcli/cost/adaptive.py) instead of one schedule; `sweep_key` is their sweep axis
    # in place of P (TPC: "delta"); `cost(arch, hparams)` gives their per-block MACs as an adaptive.Cost.
    # `level` "model": `load()` returns a class whose `patch(model, **hp)` / `remove(model)` replace the
    # model's forward (no per-block Reduction, no P); "block": the class is a Reduction.
    # The method's own token schedule when no P is given (EViT: "keep_rate at drop_loc"); None: P is required.
    schedule: str | None = None
    adaptive: bool = False
    sweep_key: str | None = None
    cost: Callable[[Arch, Mapping[str, Any]], Any] | None = None
    level: str = "block"
    # A method that saves its hyperparameters with its trained weights (TPC-ViT's `tpc` mapping): the
    # "module:function" reading them from a checkpoint file (None when it has none), imported on first use
    # like `patch`, and the warning for a run whose checkpoint carries none (an untrained controller).
    checkpoint_hparams: str | None = None
    untrained: str | None = None

    def load(self) -> type:
        """The patch class (a Reduction, or a model-level patcher): imports torch, so only when asked."""
        return _named(self.patch)

    def saved_hparams(self, checkpoint) -> dict[str, Any] | None:
        """The hyperparameters saved in `checkpoint` for this method, or None (no file, no mapping, or a
        method that saves none)."""
        if checkpoint is None or self.checkpoint_hparams is None:
            return None
        return _named(self.checkpoint_hparams)(checkpoint)

    def untrained_warning(self, checkpoint) -> str | None:
        """The one warning line for a learned method run without its trained hyperparameters, or None."""
        if self.untrained is None or self.saved_hparams(checkpoint) is not None:
            return None
        return self.untrained

    def matched_cost_knob(self) -> Knob | None:
        """The knob a comparison at matched cost turns: the card's own, else P for a method with one token
        schedule per model; None for an input-dependent method (no analytic cost to solve for)."""
        return self.knob or (None if self.adaptive else P_KNOB)

    def require_cls(self, model) -> None:
        """A one-line error for a model without a [CLS] token, when every setting of the method reads it."""
        if getattr(model, "cls_token", None) is None:
            raise GtpcliError(f"{self.name} needs a [CLS] token ({self.needs_cls}), and this "
                              f"{type(model).__name__} has none")

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hparams}

    def validate(self, values: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
        """Known names with valid values (coerced); anything else is a one-line GtpcliError."""
        where = where or f"{self.name}:"
        known = {h.name: h for h in self.hparams}
        checked = {}
        for key, value in values.items():
            key = self.aliases.get(key, key)
            if key not in known:
                raise GtpcliError(f"{where} unknown hyperparameter {key!r}{_suggest(key, list(known))}")
            checked[key] = known[key].check(value, where)
        return checked

    def resolved(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults, overridden by `values` (validated)."""
        return {**self.defaults(), **self.validate(values)}


def _named(path: str) -> Any:
    """The object a "module:name" string names, imported now."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(choices)})"


def parse_blocks(text: str, depth: int, what: str, low: int = 0) -> tuple[int, ...]:
    """Block indices counted from 0 as the baselines' codes count them: '3,6,9', '7-11' or a mix, each in
    [low, depth); anything else is a one-line error naming `what` (e.g. "evit drop_loc")."""
    try:
        found: set[int] = set()
        for part in str(text).split(","):
            first, dash, last = part.partition("-")
            found |= set(range(int(first), int(last) + 1)) if dash else {int(first)}
    except ValueError:
        raise GtpcliError(f"{what} must be block indices like 3,6,9 or a range like 7-11, got {text!r}") from None
    blocks = tuple(sorted(found))
    if not blocks or blocks[0] < low or blocks[-1] >= depth:
        raise GtpcliError(f"{what} {text!r}: blocks are counted from 0, from {low} to {depth - 1} in this model")
    return blocks


def image_schedule(arch: Arch, removals: Sequence[int]) -> list[tuple[int, int]]:
    """(image tokens entering the block, tokens it removes) for every block, prefix tokens excluded."""
    from ..cost.analytic import token_schedule

    schedule = token_schedule(arch.N, arch.L, list(removals), arch.prefix)
    return [(N_l - arch.prefix, P) for N_l, P in zip(schedule, removals)]
