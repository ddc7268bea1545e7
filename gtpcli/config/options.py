"""One validation layer for the options every command shares: a bad value is refused in one line, never
silently replaced by a default (`--L 0` is an error, not 12)."""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import GtpcliError
from ..methods import REGISTRY

METHOD_NAMES = tuple(REGISTRY)  # the method registry, which imports no torch
DTYPES = ("float32", "float16", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def at_least(value: int | float | None, low: int | float, flag: str) -> int | float | None:
    """None (not given) passes; a given value must be >= low."""
    if value is not None and value < low:
        raise GtpcliError(f"{flag} must be >= {low}, got {value}")
    return value


def positive(value: int | None, flag: str) -> int | None:
    return at_least(value, 1, flag)


def one(text: str | int | None, flag: str, low: int) -> int | None:
    """A single integer >= low given as text (a run setting that is a list elsewhere, e.g. for trace)."""
    from .ranges import parse_values

    if text is None:
        return None
    values = parse_values(text, flag)
    if len(values) != 1:
        raise GtpcliError(f"{flag}: trace takes one value, got {text!r}")
    return at_least(values[0], low, flag)


def device(value: str, flag: str = "--device", choices: Iterable[str] = ("auto", "cpu", "cuda", "cuda:N")) -> str:
    """auto, cpu, cuda or cuda:N (what torch can run gtpcli's measurements on)."""
    if not _DEVICE.match(value or "") or (value == "auto" and "auto" not in choices):
        raise GtpcliError(f"{flag} must be {', '.join(choices)}, got {value!r}")
    return value


def dtype(value: str) -> str:
    if value not in DTYPES:
        raise GtpcliError(f"--dtype must be {', '.join(DTYPES)}, got {value!r}")
    return value


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
AMP = {"bf16": "bfloat16", "fp16": "float16", "bfloat16": "bfloat16", "float16": "float16"}


def amp(value: str | None, dtype_name: str = "float32") -> str | None:
    """--amp bf16|fp16 as the torch dtype name autocast runs in; autocast over a model already cast to a
    half type would measure nothing new, so that pairing is refused."""
    if value is None:
        return None
    if value not in AMP:
        raise GtpcliError(f"--amp must be bf16 or fp16, got {value!r}")
    if dtype_name != "float32":
        raise GtpcliError(f"--amp {value} autocasts a float32 model: leave --dtype at float32 (got {dtype_name})")
    return AMP[value]


def compile_mode(value: str | None) -> str | None:
    """--compile MODE: one of torch.compile's modes ("default" is torch's own default)."""
    if value is not None and value not in COMPILE_MODES:
        raise GtpcliError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return value


def methods(text: str, flag: str = "--method", single: bool = False) -> list[str]:
    """One registered method or a comma list (`gtp,tome,tcvit`); an empty name or an unknown one is refused."""
    names = [name.strip() for name in str(text).split(",")]
    if not all(names):
        raise GtpcliError(f"{flag}: empty method name in {text!r} (choose from {', '.join(METHOD_NAMES)})")
    unknown = [name for name in names if name not in METHOD_NAMES]
    if unknown:
        raise GtpcliError(f"{flag}: unknown method {unknown[0]!r} (choose from {', '.join(METHOD_NAMES)})")
    if single and len(names) != 1:
        raise GtpcliError(f"{flag} takes one method here, got {text!r}")
    return names


def used_by_P(P_given: bool, methods: list[str], chosen: dict[str, dict], own_schedule_hint: str) -> None:
    """Nothing the run is given goes unused in silence: --P where no chosen method has a P (their token counts
    depend on the image), and, when P is given, a hyperparameter that only a method's own schedule reads
    (EViT's keep_rate: with P it runs gtpcli's equal-P variant instead)."""
    if not P_given:
        return
    if methods and all(REGISTRY[m].adaptive for m in methods):
        card = REGISTRY[methods[0]]
        raise GtpcliError(f"--P: {card.name} has no P (its token counts depend on the image); set "
                          f"--hp {card.name}.{card.sweep_key}=... instead")
    for method in methods:
        own = [h.name for h in REGISTRY[method].hparams if h.own_schedule and h.name in chosen.get(method, {})]
        if own:
            raise GtpcliError(f"--hp {method}.{own[0]} sets {REGISTRY[method].title}'s own schedule, which a P "
                              f"replaces (P runs gtpcli's equal-P variant); {own_schedule_hint}")


def hparams(items: Iterable[str] | None, chosen: Iterable[str], flag: str = "--hp") -> dict[str, dict]:
    """`METHOD.NAME=VALUE` (or `NAME=VALUE` when exactly one of the chosen methods has NAME) to
    {method: {name: value}}, each checked by the method's own module. VALUE is read as YAML (8, 0.5, true,
    lazy), or kept as text for a hyperparameter that is text (block lists such as 3 or 3,6,9)."""
    from ..files import load_yaml

    chosen = list(chosen)
    found: dict[str, dict] = {}
    for item in items or []:
        name, sep, text = str(item).partition("=")
        if not sep or not name.strip() or not text.strip():
            raise GtpcliError(f"{flag}: expected METHOD.NAME=VALUE (e.g. tcvit.K=4), got {item!r}")
        method, dot, key = name.strip().rpartition(".")
        if dot:
            methods(method, flag, single=True)
        else:
            having = [m for m in chosen if key in {h.name for h in REGISTRY[m].hparams}]
            if len(having) != 1:
                where = f"{' and '.join(having)} both have it" if having else f"none of {', '.join(chosen)} has it"
                raise GtpcliError(f"{flag} {item!r}: say which method ({where}), e.g. "
                                  f"{(having or chosen or ['tcvit'])[0]}.{key}={text}")
            method = having[0]
        card = REGISTRY[method]
        textual = {h.name for h in card.hparams if h.kind is str}
        if card.aliases.get(key, key) in textual:  # evo.stages=4 is the text "4", as YAML would make it a number
            value = text.strip()
        else:
            try:
                value = load_yaml(text, f"{flag} {item!r}")  # the one safe loader: no alias bombs here either
            except GtpcliError:
                value = text
        found.setdefault(method, {}).update(REGISTRY[method].validate({key: value}, f"{flag} {method}:"))
    return found
