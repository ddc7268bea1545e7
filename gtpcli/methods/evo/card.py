"""Evo-ViT (Xu et al., AAAI 2022, "Slow-Fast Token Evolution") as a training-free patch, following its
official DeiT code (YifanXu74/Evo-ViT `deit/evo_deit.py`, stage-wise mode; readings and departures:
docs/methods/evo.md):

- global class attention g over the image tokens: g = sum over heads of the [CLS] row of the attention map in
  block 0, replaced in every block before the first stage (tradeoff 1), then a moving average
  g <- (1 - t) g + t sum_h A_h[CLS, :] on the tokens a block processes (t = `tradeoff`, 0.5);
- at each stage start (blocks 4 and 8, counted from 0) all image tokens are sorted by g and the top
  int(p n) (plus [CLS]) are "informative": only they go through the stage's blocks (attention among them,
  MLP on them). The others are placeholders: not computed, re-attached unchanged at the stage's end, and
  ranked again (with their older g) at the next stage start;
- after the last block every token is back, in g order; the model's own head reads them.

Not in the official DeiT code and not here: the paper's representative token ("fast updating"; the code says
placeholders alone do well enough on DeiT). The official DeiT model classifies LayerNorm(mean of the image
tokens) with a head trained that way; gtpcli keeps the backbone's own head ([CLS] for DeiT), the head a stock
checkpoint was trained with.

With `P` given instead, it is gtpcli's equal-P variant: before every block l > 0 the image tokens are ranked
by g again and the top N_l - prefix processed, N_l = N - (l - 1) P as for GTP and ToMe.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...cost import analytic as A
from ...cost.analytic import Arch
from ...errors import GtpcliError
from ..base import Column, HParam, Knob, Method, parse_blocks, rates

NAME = "evo"
PAPER_STAGES = "4,8"

HPARAMS = (
    HParam("keep_ratio", 0.5, "selection ratio p: informative share of the image tokens in each stage "
           "(not with P)", float, low=0, high=1, low_open=True, own_schedule=True),
    HParam("stages", PAPER_STAGES, "blocks where a stage starts, counted from 0, comma-separated (official "
           "DeiT: 4,8; not with P)", str, own_schedule=True),
    HParam("tradeoff", 0.5, "weight of the new class attention in g's moving average from the first stage on",
           float, low=0, high=1),
)


def stage_starts(text: str, depth: int) -> tuple[int, ...]:
    """The blocks where a stage starts (block 0 cannot: g comes from a block's attention)."""
    return parse_blocks(text, depth, "evo stages", low=1)


def stage_removals(arch: Arch, keep_ratio: float, stages: str) -> list[int]:
    """As removals (the drop in processed tokens before the next block): every stage processes int(p n)
    image tokens (the official `int(N * ratio)`, n all image tokens)."""
    n = arch.N - arch.prefix
    starts = stage_starts(stages, arch.L)
    informative = int(n * keep_ratio)
    if informative < 1:
        raise GtpcliError(f"evo keep_ratio {keep_ratio:g} keeps no image token of {n}")
    removals = [0] * arch.L
    removals[starts[0] - 1] = n - informative
    return removals


# Evo-ViT's own stages at matched cost: keep_ratio in steps of 0.01 (stages as given).
KNOB = Knob("keep_ratio", lambda arch: rates(0.01), lambda arch, p, hp: stage_removals(arch, p, hp["stages"]))


def selections(removals: Sequence[int], stages: str | None) -> tuple[int, ...]:
    """Blocks before which the tokens are ranked again: the stage starts (when a stage skips any token),
    or, in the equal-P variant (stages None), every block after one that removes."""
    if stages is not None:
        return tuple(b for b in stage_starts(stages, len(removals)) if any(removals[:b])) if any(removals) else ()
    return tuple(layer for layer in range(1, len(removals)) if removals[layer - 1] > 0)


def implemented_overhead(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """Nothing a MAC counter sees: ranking sorts, the rest is gathers and concatenation."""
    return 0


def backbone_macs(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Block l runs attention and MLP on the same N_l processed tokens (no removal between them), and every
    token is back for the final norm and head."""
    whole = A.backbone_macs(arch, 0)
    processed = A.token_schedule(arch.N, arch.L, list(removals), arch.prefix)
    blocks = sum(sum(A.block_terms(n, 0, arch).values()) for n in processed)
    return {**whole, "blocks": blocks}


def complexity_row(arch: Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {"evo_macs": 0}


def complexity_layers(arch: Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"evo_rank": 0} for _ in range(arch.L)]


METHOD = Method(
    name=NAME,
    schedule="keep_ratio from each stage start (with P: gtpcli's equal-P variant)",
    title="Evo-ViT",
    summary="slow-fast token evolution: only the top tokens by global class attention are computed, the rest "
            "wait unchanged",
    hparams=HPARAMS,
    stages=("evo.rank", "evo.reattach"),
    patch="gtpcli.methods.evo.patch:EvoViT",
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=(Column("evo_macs", "Evo-ViT", "no MACs: sorting"),),
    needs_cls="every setting: tokens are ranked by the [CLS] token's attention",
    backbone_macs=backbone_macs,
    knob=KNOB,
)
