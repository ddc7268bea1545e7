"""The throughput columns of a sweep's rows: every point of one combination (batch size, image size) timed
together with the stock model, in the same interleaved rounds (measure/speed.py), on one set of weights.

Each point is a `speed.Setup` whose `enter` swaps the shared model's blocks into that point (the swap is
reversible, so a sweep of 15 points holds one model, not 15 copies); an input-dependent point is one Setup
per batching mode, on the first images its counts came from. Fixed-P and input-dependent points share the
rounds, the statistics and the columns: img/s (median over rounds, quartiles), latency per batch, peak
memory, and the speed-up over the stock model as the median of per-round ratios with its quartiles and a
flag when the rounds disagree. After every round the rows hold the figures so far (`rounds` says how many
rounds they come from), so an interrupted sweep keeps them; `--resume` times again the points whose rounds
did not all finish.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from .. import methods as registry
from ..methods.patching import attach
from ..models import backbones
from . import adaptive_sweep, compiled, speed

STOCK = "stock"
NOISY = 0.2  # one round (the sequential order): an IQR over batches above this share of the median is flagged


def needs_timing(row: dict[str, Any], timing: speed.Timing) -> bool:
    """Not timed yet, or timed in fewer rounds than asked (an interrupted run)."""
    return row.get("img_s") is None or row.get("rounds", timing.timed_rounds) < timing.timed_rounds


def time_rows(model, cfg, rows: list[dict[str, Any]], advance: Callable[[str], None], warn: Callable[[str], None],
              save: Callable[[], None], sized: Callable[[int], Any] | None = None) -> None:
    """Time the rows that need it (with the stock model as their reference, whether or not its own row
    needs timing) and write their columns into `rows`, calling `save` after each round. `sized(img_size)`
    gives the model of a row at its own input size (sweep.InputSizes). On out-of-memory the batch is halved
    for every configuration alike and the rounds start again; the later combinations of this sweep start at
    the halved batch."""
    measured = {at: row for at, row in enumerate(rows) if needs_timing(row, cfg.timing)}  # as before any round
    if not measured:
        return
    while True:
        timing = cfg.timing if cfg.working_batch is None else replace(cfg.timing, batch_size=cfg.working_batch)
        try:
            return _time(model, cfg, timing, rows, measured, advance, save, sized)
        except RuntimeError as exc:
            if not speed.is_out_of_memory(exc) or timing.batch_size == 1:
                raise
            if timing.device.startswith("cuda"):
                torch.cuda.empty_cache()
            cfg.working_batch = timing.batch_size // 2
            warn(f"out of memory at batch {timing.batch_size}; this and the later points of batch "
                 f"{cfg.timing.batch_size} are timed at batch {cfg.working_batch}")


def _time(model, cfg, timing: speed.Timing, rows: list[dict[str, Any]], measured: dict[int, dict[str, Any]],
          advance: Callable[[str], None], save: Callable[[], None], sized: Callable[[int], Any] | None) -> None:
    """One try at the rounds, at `timing`'s batch size."""
    x = batch_for(model, cfg.seed, timing)
    runner = compiled.compile_model(model, cfg.compile, len(measured) + 1) if cfg.compile else model
    setups, main, modes = _setups(model, cfg, timing, measured, runner, x, sized)
    warm = first_passes([s for s in setups if s.run is runner], timing) if cfg.compile else {}
    warmed = compiled.snapshot() if cfg.compile else None
    reference = {at: _own_p0(measured, at, main) for at in measured}

    def on_round(done: int, timed: dict[str, speed.Timed]) -> None:
        recompiled = compiled.stats(warmed)["graphs"] if cfg.compile else 0
        for at, row in measured.items():
            rows[at] = {**row, **columns(row, timed, main[at], reference[at], modes.get(at, {}), timing,
                                         warm.get(main[at]), recompiled)}
            if cfg.compile and at in modes:
                rows[at]["compile"] = None
                rows[at]["warnings"] = rows[at]["warnings"] + [
                    "timed eager: --compile does not reach the batching modes of input-dependent methods"]
        save()
        if done < timing.timed_rounds:
            advance(f"timing, round {done + 1} of {timing.timed_rounds}")

    advance(f"timing, round 1 of {timing.timed_rounds}")
    speed.rounds(setups, timing, seed=cfg.seed, on_round=on_round)


def _setups(model, cfg, timing: speed.Timing, measured: dict[int, dict[str, Any]], runner, x,
            sized: Callable[[int], Any] | None = None):
    """The configurations of the rounds: the stock model first, then each row's point in order (one per
    batching mode for an input-dependent point, on the images its counts came from; a row at its own input
    size on its resized copy, eager); with, per row, the setup whose img/s is the row's own, and an
    input-dependent row's setup per mode."""
    setups = [speed.Setup(STOCK, runner, [x], attach(model, None))]
    main: dict[int, str] = {}
    modes: dict[int, dict[str, str]] = {}
    sample = None
    for at, row in measured.items():
        card = None if row["method"] == STOCK else registry.get(row["method"])
        if sized is not None and own_size(model, row):
            setups.append(_resized_setup(f"{at} at {row['img_size']}", row, cfg, timing, sized))
            main[at] = setups[-1].label
        elif card is None:
            main[at] = STOCK
        elif not card.adaptive:
            setups.append(speed.Setup(str(at), runner, [x], attach(model, row["method"], row["P"], row["hparams"])))
            main[at] = str(at)
        else:
            sample = adaptive_sweep.timing_sample(model, cfg) if sample is None else sample
            modes[at] = {}
            for mode, hparams, size in adaptive_sweep.timed_modes(card, row["hparams"], timing.batch_size):
                chunks = [sample[start:start + size] for start in range(0, len(sample), size)]
                setups.append(speed.Setup(f"{at} {mode}", model, chunks, attach(model, row["method"], None, hparams)))
                modes[at][mode] = f"{at} {mode}"
            main[at] = modes[at][adaptive_sweep.main_mode(row["hparams"])]
    return setups, main, modes


def batch_for(model, seed: int, timing: speed.Timing) -> torch.Tensor:
    """The timed random input batch at the model's own input size (seeded: every model of a size sees one batch)."""
    torch.manual_seed(seed)
    return torch.randn(timing.batch_size, 3, *backbones.image_size(model), device=timing.device,
                       dtype=speed.dtype_of(timing.dtype))


def own_size(model, row: dict[str, Any]) -> bool:
    """Whether a row ran at an input size of its own, not the model's (sweep.INPUT_SIZE)."""
    size = backbones.image_size(model)
    return row.get("img_size") not in (size[0] if size[0] == size[1] else list(size), None)


def _resized_setup(label: str, row: dict[str, Any], cfg, timing: speed.Timing,
                   sized: Callable[[int], Any]) -> speed.Setup:
    """A row at its own input size: timed on the resized copy of the model that measured it (sweep.InputSizes),
    with an input batch of that size."""
    copy = sized(row["img_size"])
    method = None if row["method"] == STOCK else row["method"]
    return speed.Setup(label, copy, [batch_for(copy, cfg.seed, timing)], attach(copy, method, row["P"], row["hparams"]))


def _own_p0(measured: dict[int, dict[str, Any]], at: int, main: dict[int, str]) -> str | None:
    """The setup of the same method's P = 0, when it is timed in these rounds (a fixed-P point's own baseline)."""
    row = measured[at]
    if row["method"] == STOCK or row["P"] is None:
        return None
    return next((main[other] for other, found in measured.items()
                 if found["method"] == row["method"] and found["P"] == 0), None)


def first_passes(setups: list[speed.Setup], timing: speed.Timing) -> dict[str, tuple[float, dict[str, Any]]]:
    """Each compiled setup's first pass, which compiles it: its seconds and what dynamo did in it."""
    found = {}
    for setup in setups:
        setup.enter()
        before = compiled.snapshot()
        found[setup.label] = (speed.first_pass(setup, timing), compiled.stats(before))
    return found


def columns(row: dict[str, Any], timed: dict[str, speed.Timed], main: str, p0: str | None, modes: dict[str, str],
            timing: speed.Timing, warm: tuple[float, dict[str, Any]] | None, recompiled: int) -> dict[str, Any]:
    """A row's throughput columns from the rounds so far."""
    batch = _batch_size(timed[main], timing)
    own = speed.throughput(timed[main], batch)
    p50, p90, p99 = own.latency_ms
    found: dict[str, Any] = {
        "img_s": round(own.img_s, 2), "img_s_spread": round(own.spread, 2), "img_s_q1": round(own.q1, 2),
        "img_s_q3": round(own.q3, 2), "runs": own.runs, "rounds": own.rounds, "timed_batch_size": batch,
        "latency_ms_p50": round(p50, 3), "latency_ms_p90": round(p90, 3), "latency_ms_p99": round(p99, 3),
        **own.memory, "round_img_s": [round(v, 2) for v in own.round_img_s],
    }
    up = speed.speedup(timed[STOCK], timed[main])
    found |= {"speedup": round(up.median, 3), "speedup_q1": _round(up.q1), "speedup_q3": _round(up.q3),
              "rounds_disagree": up.disagree}
    if p0 is not None:
        found["speedup_vs_p0"] = round(speed.speedup(timed[p0], timed[main]).median, 3)
    warnings = list(row.get("warnings", []))
    if up.disagree:
        warnings.append(f"rounds disagree: the per-round speed-ups run from {up.q1:.2f}x to {up.q3:.2f}x (quartiles "
                        f"more than {speed.DISAGREE:.0%} of the median apart): the machine's speed moved under the "
                        "measurement; more --rounds, or a quieter machine")
    if own.rounds == 1 and own.spread > NOISY * own.img_s:
        warnings.append(f"noisy timing: IQR is {own.spread / own.img_s:.0%} of the median (is the machine busy? "
                        "try interleaved rounds, --rounds N)")
    if modes:
        found["batching"] = {mode: dict(value) for mode, value in row["batching"].items()}
        for mode, label in modes.items():
            each = speed.throughput(timed[label], _batch_size(timed[label], timing))
            found["batching"][mode] |= {"img_s": round(each.img_s, 2), "img_s_spread": round(each.spread, 2),
                                        "batch_size": each.batch_size, "runs": each.runs}
    if warm is not None:
        first, dynamo = warm
        found |= {"compile_s": round(max(first - batch / own.img_s, 0.0), 2), **dynamo, "recompiled": recompiled > 0}
        warnings += compiled.findings(dynamo, {**dynamo, "graphs": dynamo["graphs"] + recompiled})
    found["warnings"] = warnings
    return found


def _batch_size(timed: speed.Timed, timing: speed.Timing) -> int:
    """Images per timed batch of a setup: the sweep's batch, or 1 for one image at a time."""
    return max(timed.images) if timed.images else timing.batch_size


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
