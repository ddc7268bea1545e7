"""Where the ideal went for a measured sweep row (`gtpcli compare`): the row's point and the stock model
profiled in interleaved passes, as `gtpcli trace` profiles its one method (measure/trace.py's
`against_stock`), and the time the row loses against its ideal split into parts (measure/gap.py). The
passes are short: they say where the time goes, the timing rounds say how fast each row runs. Importing this
module imports no torch (the CLI's help quotes its budget)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from .. import methods as registry

STOCK = "stock"
ROUNDS = 3  # profiled passes of each side (the row, the stock model) per row, as `gtpcli trace` by default
STEPS = 2   # forwards per profiled pass, after one untimed


def cost_text(rounds: int = ROUNDS, steps: int = STEPS) -> str:
    """What one row's breakdown costs, in words: each pass of each side runs 1 untimed forward and `steps`
    profiled ones."""
    return (f"{rounds} profiled passes of {steps} forwards (after 1 untimed) of the row and of the stock model, "
            f"interleaved: {rounds * 2 * (1 + steps)} forwards per row")


def row_gap(model, cfg, row: dict[str, Any], stock_row: dict[str, Any], sized: Callable[[int], Any],
            rounds: int = ROUNDS, steps: int = STEPS) -> dict[str, Any]:
    """`row`'s ideal gap against the stock model (both rows as the sweep wrote them, MACs counted; `sized`:
    sweep.InputSizes of `model`), on the timed input batch at the batch the timing ran: where_the_ideal_went's
    dict, as `gtpcli trace` gives it."""
    from ..methods.patching import attach
    from .throughput import batch_for
    from .trace import Side, against_stock, stage_split

    timing = timing_of(cfg)
    card = None if row["method"] == STOCK else registry.get(row["method"])
    stock = Side(attach(model, None), model, batch_for(model, cfg.seed, timing))
    side = row_side(model, row, timing, cfg.seed, sized)
    found = against_stock(stock, side, (macs_of(stock_row), macs_of(row)), card.stages if card else (),
                          stage_split(model, side.model, card), rounds, steps, timing.autocast, cfg.seed)
    return found.ideal_gap


def row_side(model, row: dict[str, Any], timing, seed: int, sized: Callable[[int], Any]):
    """A row's point as a side of the profiled passes: the shared model patched at its point, or the stock
    model's copy at the row's own input size, with the timed input batch of that size (as the rounds time it)."""
    from ..methods.patching import attach
    from .throughput import batch_for, own_size
    from .trace import Side

    own = sized(row["img_size"]) if own_size(model, row) else model
    method = None if row["method"] == STOCK else row["method"]
    return Side(attach(own, method, row["P"], row["hparams"]), own, batch_for(own, seed, timing))


def timing_of(cfg):
    """The timing the rounds ran under: the sweep's, at the halved batch if out-of-memory halved it."""
    return cfg.timing if cfg.working_batch is None else replace(cfg.timing, batch_size=cfg.working_batch)


def macs_of(row: dict[str, Any]) -> float:
    """A row's MACs for its ideal: counted (fvcore), or the cost model's where they were not counted."""
    return row.get("macs") or row["analytic_macs"]
