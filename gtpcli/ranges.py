"""Parse the value lists users type for N, C and P: `8`, `4,8,12`, `0..14`, `197..1025:64`."""

from __future__ import annotations

from .errors import GtpcliError

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
