"""Evo-ViT's torch patch: the Reduction `EvoViT` and the tensor functions it runs (the method's
card, hyperparameters and analytic cost, is `card.py` beside it; docs/methods/evo.md has the readings)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ...cost import analytic as A
from ...cost.analytic import Arch
from ..blocks import Reduction, stage, take_rows
from .card import METHOD, NAME, PAPER_STAGES, selections, stage_removals


def class_attention(first_row, prefix: int):
    """(B, n): the [CLS] row (B, H, N) of the attention map at the image tokens, summed over heads."""
    return first_row[:, :, prefix:].sum(dim=1)


def rank(tokens, scores, prefix: int):
    """Image tokens of tokens (B, N, C) and their scores (B, n), sorted by descending score, and the order
    (B, n) that sorted them."""
    import torch

    order = scores.argsort(dim=-1, descending=True, stable=True)
    image = take_rows(tokens, order + prefix)
    return torch.cat([tokens[:, :prefix], image], dim=1), scores.gather(1, order), order


def evo_block_forward(self, x, rope=None, attn_mask=None, is_causal: bool = False, shared_rel_pos_bias=None):
    """A timm block under Evo-ViT: rank and split before attention (at a selection), update g from this
    block's [CLS] attention, re-attach the placeholders after the last block."""
    from ..blocks import attention_branch, mlp_branch, stage

    red = self.reduction
    layer = self.layer_index
    if layer == 0:
        red.start(x)
    x = red.enter(layer, x)
    with stage("attention"):
        x, summary, _ = attention_branch(self, x, red.bias(self.attn, shared_rel_pos_bias), red.attention_need(layer),
                                         rope=red.rope(layer, rope))
    if summary is not None:
        with stage("evo.rank"):
            red.update(layer, class_attention(summary.first_row, red.prefix))
    with stage("mlp"):
        x = mlp_branch(self, x)
    return red.leave(layer, x)


class EvoViT(Reduction):
    """Evo-ViT's stages (keep_ratio at stages) or, with P, gtpcli's equal-P variant."""

    method = NAME
    block_forward = evo_block_forward
    moves_positions = True  # processed tokens keep their own positions (Evo-ViT only reorders and skips)

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
            if self.placed is not None:  # the processed tokens' own positions, by their input index
                grid = self.placed.initial(x, self.prefix)
                self.positions = torch.cat([grid[:, : self.prefix], grid[:, self.prefix:].gather(
                    1, self.informative[layer].unsqueeze(-1).expand(-1, -1, 2))], dim=1)
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
