"""Where the ideal went for the measured sweep rows of a target (`gtpcli compare`): the rows' points and the
stock model profiled in interleaved passes, as `gtpcli trace` profiles its one method (measure/trace.py's
`interleaved` and `gap_against`), and the time each row loses against its ideal split into parts
(measure/gap.py). The passes are short: they say where the time goes, the timing rounds say how fast each
row runs. Importing this module imports no torch (the CLI's help quotes its budget)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from .. import methods as registry

STOCK = "stock"
ROUNDS = 3  # profiled passes of each side (the stock model, every row of the target) per target
STEPS = 1   # forwards per profiled pass, after one untimed


def cost_text(rounds: int = ROUNDS, steps: int = STEPS) -> str:
    """What a target's breakdowns cost, in words: each pass of each side runs 1 untimed forward and `steps`
    profiled ones, and the stock model's passes serve every row."""
    return (f"{rounds} profiled passes of {steps} forward{'s' if steps != 1 else ''} (after 1 untimed) of each row "
            f"and of the stock model, interleaved: {rounds * (1 + steps)} forwards per row, and as many of stock per "
            "target")


def target_gaps(model, cfg, rows: list[dict[str, Any]], stock_row: dict[str, Any], sized: Callable[[int], Any],
                starting: Callable[[int], None] = lambda round_: None, rounds: int = ROUNDS,
                steps: int = STEPS) -> list[dict[str, Any]]:
    """Each row's ideal gap against the stock model (rows as the sweep wrote them, MACs counted; `sized`:
    sweep.InputSizes of `model`), on the timed input batch at the batch the timing ran: where_the_ideal_went's
    dict, as `gtpcli trace` gives it. All from the same interleaved passes, every row and the stock model
    profiled once per round, as the timing rounds run them, so one set of stock passes serves every row."""
    from ..methods.patching import attach
    from .throughput import batch_for
    from .trace import Side, gap_against, interleaved, stage_split

    timing = timing_of(cfg)
    sides = {STOCK: Side(attach(model, None), model, batch_for(model, cfg.seed, timing))}
    splits, cards = [], []
    for at, row in enumerate(rows):
        sides[at] = row_side(model, row, timing, cfg.seed, sized)
        cards.append(None if row["method"] == STOCK else registry.get(row["method"]))
        splits.append(stage_split(model, sides[at].model, cards[-1]))  # while the model is patched at the row
    passes = interleaved(sides, rounds, steps, timing.autocast, cfg.seed, starting)
    return [gap_against(passes[STOCK], passes[at], (macs_of(stock_row), macs_of(row)), card.stages if card else (),
                        split).ideal_gap for at, (row, card, split) in enumerate(zip(rows, cards, splits))]


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
