"""Evo-ViT (Xu et al., AAAI 2022, "Slow-Fast Token Evolution") as a training-free patch, following its
official DeiT code (YifanXu74/Evo-ViT `deit/evo_deit.py`, stage-wise mode; specs/baselines.md section 4):

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

import functools
from typing import Any, Mapping, Sequence

from .. import analytic as A
from ..analytic import Arch
from ..errors import GtpcliError
from .base import Column, HParam, Method, parse_blocks

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
    blocks = sum(sum(A.block_terms(n, 0, arch.C, arch.mlp_ratio).values()) for n in processed)
    return {**whole, "blocks": blocks}


def complexity_row(arch: Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {"evo_macs": 0}


def complexity_layers(arch: Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"evo_rank": 0} for _ in range(arch.L)]


# --- the patch (torch) ------------------------------------------------------------------------------

def class_attention(first_row, prefix: int):
    """(B, n): the [CLS] row (B, H, N) of the attention map at the image tokens, summed over heads."""
    return first_row[:, :, prefix:].sum(dim=1)


def rank(tokens, scores, prefix: int):
    """Image tokens of tokens (B, N, C) and their scores (B, n), sorted by descending score, and the order
    (B, n) that sorted them."""
    import torch

    order = scores.argsort(dim=-1, descending=True, stable=True)
    image = tokens[:, prefix:].gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return torch.cat([tokens[:, :prefix], image], dim=1), scores.gather(1, order), order


def evo_block_forward(self, x, attn_mask=None, is_causal: bool = False):
    """A timm block under Evo-ViT: rank and split before attention (at a selection), update g from this
    block's [CLS] attention, re-attach the placeholders after the last block."""
    from ..reduce.common import attend, stage

    red = self.reduction
    layer = self.layer_index
    if layer == 0:
        red.start(x)
    x = red.enter(layer, x)
    with stage("attention"):
        out, summary, _ = attend(self.attn, self.norm1(x), None, red.attention_need(layer))
        x = x + self.drop_path1(self.ls1(out))
    if summary is not None:
        with stage("evo.rank"):
            red.update(layer, class_attention(summary.first_row, red.prefix))
    with stage("mlp"):
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return red.leave(layer, x)


@functools.cache
def reduction_class() -> type:
    """The Reduction subclass (built on first use: its base class needs torch)."""
    import torch

    from ..reduce.common import Reduction, stage

    class EvoViT(Reduction):
        """Evo-ViT's stages (keep_ratio at stages) or, with P, gtpcli's equal-P variant."""

        method = NAME
        block_forward = evo_block_forward

        def __init__(self, model, P: int | Sequence[int] | None = None, keep_ratio: float = 0.5,
                     stages: str = PAPER_STAGES, tradeoff: float = 0.5):
            METHOD.require_cls(model)
            self.hp = METHOD.validate(dict(keep_ratio=keep_ratio, stages=stages, tradeoff=tradeoff))
            super().__init__(model, P, prop_attn=False)

        @property
        def variant_label(self) -> str:
            if self.P is None:
                return f"paper: keep_ratio {self.hp['keep_ratio']:g}, stages at blocks {self.hp['stages']}"
            return "gtpcli variant: equal P, ranked before every block"

        def schedule_removals(self, P):
            if P is not None:
                removals = super().schedule_removals(P)
            else:
                arch = Arch(N=self.tokens, C=1, L=self.num_layers, H=1, prefix=self.prefix)
                removals = stage_removals(arch, self.hp["keep_ratio"], self.hp["stages"])
            self.processed = [n - self.prefix for n in A.token_schedule(self.tokens, self.num_layers, removals,
                                                                        self.prefix)]
            self.selections = selections(removals, self.hp["stages"] if P is None else None)
            return removals

        def start(self, x):
            super().start(x)
            self.full, self.g, self.m = None, None, x.shape[1] - self.prefix
            self.origin = torch.arange(self.m, device=x.device).expand(x.shape[0], -1)  # input index of each slot
            self.informative: dict[int, Any] = {}  # selection block -> input indices of its processed tokens

        def attention_need(self, layer: int) -> str:
            """g is read only up to the last selection."""
            return "summary" if self.selections and layer < self.selections[-1] else "fused"

        def enter(self, layer: int, x):
            if layer not in self.selections:
                return x
            with stage("evo.rank"):
                self.full = x if self.full is None else torch.cat([x, self.full[:, x.shape[1]:]], dim=1)
                self.full, self.g, order = rank(self.full, self.g, self.prefix)
                self.m = self.processed[layer]
                self.origin = self.origin.gather(1, order)
                self.informative[layer] = self.origin[:, : self.m]
                return self.full[:, : self.prefix + self.m]

        def update(self, layer: int, attention):
            """g from this block's [CLS] attention (B, m): replaced before the first stage, averaged after."""
            if self.g is None or not self.selections or layer < self.selections[0]:
                self.g = attention
                return
            t = self.hp["tradeoff"]
            self.g = torch.cat([(1 - t) * self.g[:, : self.m] + t * attention, self.g[:, self.m:]], dim=1)

        def leave(self, layer: int, x):
            if layer != self.num_layers - 1 or self.full is None:
                return x
            with stage("evo.reattach"):
                return torch.cat([x, self.full[:, x.shape[1]:]], dim=1)

    EvoViT.__qualname__ = "EvoViT"
    return EvoViT


def __getattr__(name: str):
    if name == "EvoViT":
        return reduction_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHOD = Method(
    name=NAME,
    schedule="keep_ratio from each stage start (with P: gtpcli's equal-P variant)",
    title="Evo-ViT",
    summary="slow-fast token evolution: only the top tokens by global class attention are computed, the rest "
            "wait unchanged",
    hparams=HPARAMS,
    stages=("evo.rank", "evo.reattach"),
    load=reduction_class,
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=(Column("evo_macs", "Evo-ViT", "no MACs: sorting"),),
    needs_cls="every setting: tokens are ranked by the [CLS] token's attention",
    backbone_macs=backbone_macs,
)
