"""EViT (Liang et al., ICLR 2022, "Not All Patches are What You Need") as a training-free patch:
its card: hyperparameters and analytic overhead (the Reduction is `patch.py`; readings: docs/methods/evit.md).

At each drop location (official `shrink_base` models: blocks 3, 6, 9 counted from 0), between the attention
residual and the MLP:
- attentiveness a_j of image token j = the [CLS] row of the softmax attention map, averaged over heads
  (softmax over all keys, [CLS] included, not renormalised);
- keep the ceil(k n) most attentive of the n image tokens (n counts an earlier fused token too), gathered in
  descending attentiveness;
- fuse the others into one token sum_j a_j x_j (raw a_j, no division by their sum), appended after the kept
  ones. No token sizes, no proportional attention. The MLP runs on [CLS] + kept + fused.

With `P` given instead (an int or one per block), it is gtpcli's equal-P variant, not EViT: every block with
P_l > 0 drops its P_l + 1 least attentive tokens and appends their fused token (net P_l removed), so
`--method gtp,tome,evit --P 0..14` compares at equal tokens removed per layer.

Everything above the "patch" section is plain arithmetic (no torch).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ...cost.analytic import Arch
from ..base import Column, HParam, Knob, Method, parse_blocks, rates

NAME = "evit"
PAPER_DROP_LOC = "3,6,9"

HPARAMS = (
    HParam("keep_rate", 0.7, "token keeping rate k at each drop location (not with P)", float,
           low=0, high=1, low_open=True, own_schedule=True),
    HParam("drop_loc", PAPER_DROP_LOC, "blocks that drop tokens, counted from 0, comma-separated (official "
           "DeiT-S/B models: 3,6,9; not with P)", str, own_schedule=True),
    HParam("fuse_token", True, "fuse the inattentive tokens into one token weighted by attentiveness "
           "(false: prune them)", bool),
)


def drop_blocks(text: str, depth: int) -> tuple[int, ...]:
    return parse_blocks(text, depth, "evit drop_loc")


def kept_count(keep_rate: float, n: int) -> int:
    """ceil(k n) as the official code computes it (float product, then ceil)."""
    return math.ceil(keep_rate * n)


def keep_rate_removals(arch: Arch, keep_rate: float, drop_loc: str, fuse_token: bool = True) -> list[int]:
    """Tokens each block removes under EViT's own schedule. A drop location removes n - ceil(k n), minus the
    fused token it adds. One that would drop a single token with fusion removes nothing: gtpcli then leaves
    the block alone (the official code would replace that token by a_j x_j)."""
    n = arch.N - arch.prefix
    removals = [0] * arch.L
    for block in drop_blocks(drop_loc, arch.L):
        kept = kept_count(keep_rate, n)
        if kept < n:
            removals[block] = n - kept - (1 if fuse_token else 0)
            n -= removals[block]
    return removals


# EViT's own schedule at matched cost: keep_rate in steps of 0.01 (drop_loc and fuse_token as given).
KNOB = Knob("keep_rate", lambda arch: rates(0.01),
            lambda arch, k, hp: keep_rate_removals(arch, k, hp["drop_loc"], hp["fuse_token"]))


def dropped(removal: int, fuse_token: bool) -> int:
    """Image tokens a block takes out of the kept set: its net removal, plus one when they become a fused token."""
    return removal + 1 if fuse_token and removal > 0 else removal


def implemented_overhead(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """Per dropping block: the [CLS] row of the attention map computed beside the fused kernel (q_0 K^T over
    the N_l tokens, N_l C) and the fused token a^T X_drop ((1 x m) by (m x C)); where attention reads positions, the
    fused token's position (a over the n image tokens, 0 at the kept ones, by their 2 coordinates). Ranking
    (a mean over heads, top-k) is not a MAC."""
    from ...cost.analytic import token_schedule

    fuse = (hparams or {}).get("fuse_token", True)
    tokens = token_schedule(arch.N, arch.L, list(removals), arch.prefix)
    moved = 2 if fuse and arch.tracks_positions else 0  # the fused token's position: a^T P over the n image tokens
    return sum((n + (dropped(r, True) if fuse else 0)) * arch.C + moved * (n - arch.prefix)
               for n, r in zip(tokens, removals) if r > 0)


def complexity_row(arch: Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The equal-P variant at this P (EViT's own schedule has no P: see `gtpcli profile --bins paper`)."""
    return {"evit_macs": implemented_overhead(arch, [P] * arch.L, hparams)}


def complexity_layers(arch: Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    from ...cost.analytic import token_schedule

    fuse = hparams.get("fuse_token", True)
    return [{"evit_cls_row": n * arch.C if P else 0, "evit_fuse": dropped(P, True) * arch.C if fuse and P else 0}
            for n in token_schedule(arch.N, arch.L, P, arch.prefix)]


def complexity_notes(rows) -> list[str]:
    return ["EViT column: gtpcli's equal-P variant (P + 1 tokens fused into one per block); EViT's own "
            "keep-rate schedule is in `gtpcli profile --bins paper`."]


METHOD = Method(
    name=NAME,
    schedule="keep_rate at drop_loc (with P: gtpcli's equal-P variant)",
    title="EViT",
    summary="keep the tokens the [CLS] token attends to most, fuse the rest into one (keep_rate at drop_loc)",
    hparams=HPARAMS,
    stages=("evit.rank", "evit.fuse"),
    patch="gtpcli.methods.evit.patch:EViT",
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=(Column("evit_macs", "EViT equal-P", "N_l incl. prefix ([CLS] row); P + 1 fused tokens"),),
    complexity_notes=complexity_notes,
    complexity_hparams=("fuse_token",),
    needs_cls="every setting: tokens are ranked by the [CLS] token's attention",
    knob=KNOB,
)
