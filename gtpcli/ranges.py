"""Parse the value lists users type for N, C and P: `8`, `4,8,12`, `0..14`, `197..1025:64`."""

from __future__ import annotations

from .errors import GtpcliError


def parse_values(text: str, name: str = "value") -> list[int]:
    """Expand a comma-separated list of integers and inclusive ranges `a..b[:step]`."""
    values: list[int] = []
    for item in str(text).replace(" ", "").split(","):
        if not item:
            raise GtpcliError(f"{name}: empty item in {text!r} (expected e.g. 8, 4,8,12 or 0..14:2)")
        values.extend(_parse_item(item, name, text))
    return values


def _parse_item(item: str, name: str, text: str) -> list[int]:
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
    return list(range(start, stop + 1, step))
