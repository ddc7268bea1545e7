"""Random token dropping, the floor every selection rule must beat, as a registered method: its one
hyperparameter, stage label and analytic overhead (none). The patch is `patch.py`'s `RandomDrop`
(loaded on first use: it needs torch); what it does and why: docs/methods/random.md.

In every block with P_l > 0, between the attention residual and the MLP, P_l image tokens chosen at random
are removed; prefix tokens ([CLS], registers, distillation) never are, and the kept ones stay in their order.
The draw is seeded per image: one random order of its image tokens, a hash of (seed, the image's embedded
tokens, token position), and each block drops the P_l lowest in that order it has left. So an image loses the
same tokens whatever batch it is in, at any position, on any number of processes.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...cost.analytic import Arch
from ..base import Column, HParam, Method

NAME = "random"

HPARAMS = (
    HParam("seed", 0, "seed of the random draw (with each image's own key; any integer >= 0)", int, low=0),
)


def implemented_overhead(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """Nothing a MAC counter sees: the draw is integer hashing and a top-k, dropping is a gather."""
    return 0


def complexity_row(arch: Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {"random_macs": 0}


def complexity_layers(arch: Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"random_draw": 0} for _ in range(arch.L)]


METHOD = Method(
    name=NAME,
    title="Random",
    summary="drop P random image tokens per block, seeded per image: the floor every selection rule must beat",
    hparams=HPARAMS,
    stages=("random.select",),
    patch="gtpcli.methods.random.patch:RandomDrop",
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=(Column("random_macs", "Random", "no MACs: hashing and top-k"),),
)
