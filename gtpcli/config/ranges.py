"""Parse the value lists users type for N, C and P: `8`, `4,8,12`, `0..14`, `197..1025:64`."""

from __future__ import annotations

from dataclasses import replace

from ..errors import GtpcliError

MAX_VALUES = 10_000  # one option never expands to more values than this


def parse_values(text: str | int | list, name: str = "value", limit: int = MAX_VALUES) -> list[int]:
    """Expand a comma-separated list of integers and inclusive ranges `a..b[:step]` (or a YAML list of
    integers); a range that would expand past `limit` values is refused before it is expanded."""
    if isinstance(text, bool):
        raise GtpcliError(f"{name}: expected integers, got {text!r}")
    if isinstance(text, list):
        if not text or not all(isinstance(v, int) and not isinstance(v, bool) for v in text):
            raise GtpcliError(f"{name}: a list must hold integers, got {text!r}")
        values = list(text)
    else:
        values = []
        for item in str(text).replace(" ", "").split(","):
            if not item:
                raise GtpcliError(f"{name}: empty item in {text!r} (expected e.g. 8, 4,8,12 or 0..14:2)")
            values.extend(_parse_item(item, name, text, limit - len(values)))
    if len(values) > limit:
        raise GtpcliError(f"{name}: {len(values):,} values (at most {limit:,})")
    return values


def _parse_item(item: str, name: str, text: str, room: int) -> list[int]:
    try:
        if ".." not in item:
            return [int(item)]
        bounds, _, step = item.partition(":")
        start, _, stop = bounds.partition("..")
        start, stop, step = int(start), int(stop), int(step or 1)
    except ValueError:
        raise GtpcliError(f"{name}: cannot read {item!r} in {text!r} (expected e.g. 8, 4,8,12 or 0..14:2)") from None
    if step <= 0:
        raise GtpcliError(f"{name}: step must be positive in {item!r}")
    if stop < start:
        raise GtpcliError(f"{name}: range {item!r} runs backwards")
    count = (stop - start) // step + 1
    if count > room:
        raise GtpcliError(f"{name}: {item} has {count:,} values (at most {MAX_VALUES:,} in all)")
    return list(range(start, stop + 1, step))


def parse_numbers(text: str | int | float | list, name: str = "value", limit: int = MAX_VALUES) -> list[float]:
    """Like `parse_values` for real numbers: `0.1`, `0.1,0.3`, `0..0.4:0.1` (inclusive). Ranges are expanded
    in decimal arithmetic, so `0..0.3:0.1` is [0.0, 0.1, 0.2, 0.3], not 0.30000000000000004."""
    if isinstance(text, bool):
        raise GtpcliError(f"{name}: expected numbers, got {text!r}")
    if isinstance(text, (int, float)):
        return [float(text)]
    if isinstance(text, list):
        if not text or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in text):
            raise GtpcliError(f"{name}: a list must hold numbers, got {text!r}")
        return [float(v) for v in text]
    values: list[float] = []
    for item in str(text).replace(" ", "").split(","):
        if not item:
            raise GtpcliError(f"{name}: empty item in {text!r} (expected e.g. 0.1, 0.1,0.3 or 0..0.4:0.1)")
        values.extend(_parse_number_item(item, name, text, limit - len(values)))
    return values


def _parse_number_item(item: str, name: str, text: str, room: int) -> list[float]:
    from decimal import Decimal, InvalidOperation

    try:
        if ".." not in item:
            return [float(_finite(Decimal(item)))]
        bounds, _, step = item.partition(":")
        start, _, stop = bounds.partition("..")
        start, stop, step = (_finite(Decimal(v)) for v in (start, stop, step or "1"))
    except (InvalidOperation, ValueError):
        raise GtpcliError(f"{name}: cannot read {item!r} in {text!r} (expected e.g. 0.1, 0.1,0.3 or 0..0.4:0.1)") from None
    if step <= 0:
        raise GtpcliError(f"{name}: step must be positive in {item!r}")
    if stop < start:
        raise GtpcliError(f"{name}: range {item!r} runs backwards")
    if ":" not in item and (start != start.to_integral_value() or stop != stop.to_integral_value()):
        raise GtpcliError(f"{name}: range {item!r} needs a step, e.g. {bounds}:0.1")
    count = int((stop - start) / step) + 1
    if count > room:
        raise GtpcliError(f"{name}: {item} has {count:,} values (at most {MAX_VALUES:,} in all)")
    return [float(start + at * step) for at in range(count)]


def _finite(value):
    if not value.is_finite():
        raise ValueError(value)
    return value


TRUE, FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


def hparam_values(hparam, text: str | int | float | bool | list, flag: str) -> list:
    """Every value a list or range gives one hyperparameter (a `methods.base.HParam`), each checked by it:
    numbers as `parse_values` / `parse_numbers` read them, names as a comma list (`mixed,spatial`),
    switches as `true,false` (or on/off). A value given twice is refused: it would be the same setting."""
    if isinstance(text, list):
        items = text
    elif isinstance(text, bool) or (hparam.kind is not str and isinstance(text, (int, float))):
        items = [text]
    elif hparam.kind is int:
        items = parse_values(str(text), flag)
    elif hparam.kind is float:
        items = parse_numbers(str(text), flag)
    elif hparam.kind is bool:
        items = [_switch(item, flag, text) for item in str(text).replace(" ", "").split(",")]
    else:
        items = [item.strip() for item in str(text).split(",")]
        if not all(items):
            raise GtpcliError(f"{flag}: empty item in {text!r} (expected e.g. {','.join(map(str, hparam.choices or ('a', 'b')))})")
    named = replace(hparam, name=flag)  # errors name the flag: "--M must be >= 1, got 0"
    values = [named.check(item, "") for item in items]
    repeated = next((v for at, v in enumerate(values) if v in values[:at]), None)
    if repeated is not None:
        raise GtpcliError(f"{flag}: {repeated!r} is given twice in {text!r}")
    return values


def _switch(item: str, flag: str, text) -> bool:
    if item.lower() in TRUE:
        return True
    if item.lower() in FALSE:
        return False
    raise GtpcliError(f"{flag}: cannot read {item!r} in {text!r} (expected true,false or on,off)")


LOG_STEPS = 6  # a threshold range without a step: this many values, evenly spaced on a log scale


def threshold_values(hparam, text: str | float | list, flag: str) -> list[float]:
    """`hparam_values` for a threshold swept by orders of magnitude (TPC's delta): also `0.001..0.2` without
    a step, which gives LOG_STEPS log-spaced values (0.001, 0.00289, ..., 0.2)."""
    if isinstance(text, str):
        items = []
        for item in text.replace(" ", "").split(","):
            if ".." in item and ":" not in item:
                items += [f"{v:.3g}" for v in _log_spaced(item, flag, text)]
            else:
                items.append(item)
        text = ",".join(items)
    return hparam_values(hparam, text, flag)


def _log_spaced(item: str, flag: str, text: str) -> list[float]:
    start, _, stop = item.partition("..")
    try:
        low, high = float(start), float(stop)
    except ValueError:
        raise GtpcliError(f"{flag}: cannot read {item!r} in {text!r} (expected e.g. 0.01, 0.01,0.05, "
                          "0.01..0.1:0.01 or 0.001..0.2)") from None
    if not 0 < low <= high:
        raise GtpcliError(f"{flag}: a range without a step is log-spaced: it needs 0 < start <= stop, got {item!r}")
    return [low * (high / low) ** (at / (LOG_STEPS - 1)) for at in range(LOG_STEPS)]
