"""EViT's torch patch: the Reduction `EViT` and the tensor functions it runs (the method's
card, hyperparameters and analytic cost, is `card.py` beside it; docs/methods/evit.md has the readings)."""

from __future__ import annotations

from typing import Any, Sequence

from ...cost.analytic import Arch
from ..blocks import Reduction, stage, take_rows
from .card import METHOD, NAME, PAPER_DROP_LOC, dropped, keep_rate_removals


def attentiveness(first_row, prefix: int):
    """a (B, n): the [CLS] row (B, H, N) of the attention map at the image tokens, averaged over heads."""
    return first_row[:, :, prefix:].mean(dim=1)


def select_and_fuse(x, a, kept: int, prefix: int, fuse_token: bool, stage=None):
    """One EViT step on tokens x (B, N, C) with attentiveness a (B, n): [prefix, the `kept` most attentive
    image tokens in descending attentiveness, then sum_j a_j x_j over the others (when `fuse_token`)].
    Returns (tokens, kept image indices). Pure function (the tests call it directly)."""
    import contextlib

    import torch

    stage = stage or (lambda name: contextlib.nullcontext())
    image = x[:, prefix:]
    with stage("evit.rank"):
        order = a.argsort(dim=-1, descending=True, stable=True)
        keep, drop = order[:, :kept], order[:, kept:]
    parts = [x[:, :prefix], take_rows(x, keep + prefix)]
    if fuse_token and drop.shape[1]:
        with stage("evit.fuse"):
            others = take_rows(x, drop + prefix)
            parts.append(a.gather(1, drop).unsqueeze(1).to(x.dtype) @ others)  # (B, 1, m) @ (B, m, C)
    return torch.cat(parts, dim=1), keep


def follow_positions(positions, size, a, keep, prefix: int, fuse_token: bool):
    """Rotary positions (B, N, 2) and masses (B, N, 1) of `select_and_fuse`'s output. A kept token keeps
    both. The fused token sum_j a_j x_j holds sum_j a_j s_j of the patches (s_j: what token j held) and sits at
    their centroid, each fused token weighted by a_j s_j: positions move as the features do."""
    import torch

    image, held = positions[:, prefix:], size[:, prefix:]
    at = keep.unsqueeze(-1)
    moved = [positions[:, :prefix], image.gather(1, at.expand(-1, -1, 2))]
    masses = [size[:, :prefix], held.gather(1, at)]
    if fuse_token and keep.shape[1] < image.shape[1]:
        weights = (a * held[..., 0]).float().scatter(1, keep, 0.0).unsqueeze(1)  # (B, 1, n): 0 at the kept
        mass = weights.sum(dim=-1, keepdim=True)
        moved.append((weights @ image) / mass)
        masses.append(mass.to(size.dtype))
    return torch.cat(moved, dim=1), torch.cat(masses, dim=1)


class EViT(Reduction):
    """EViT's schedule (keep_rate at drop_loc) or, with P, gtpcli's equal-P variant."""

    method = NAME
    moves_positions = True

    def __init__(self, model, P: int | Sequence[int] | None = None, keep_rate: float = 0.7,
                 drop_loc: str = PAPER_DROP_LOC, fuse_token: bool = True):
        METHOD.require_cls(model)
        self.hp = METHOD.validate(dict(keep_rate=keep_rate, drop_loc=drop_loc, fuse_token=fuse_token))
        self.kept: dict[int, Any] = {}  # layer -> kept image-token indices of the last forward
        super().__init__(model, P, prop_attn=False)

    @property
    def variant_label(self) -> str:
        """What a result row is: EViT's own schedule, or gtpcli's equal-P variant."""
        if self.P is None:
            return f"paper: keep_rate {self.hp['keep_rate']:g} at blocks {self.hp['drop_loc']}"
        return "gtpcli variant: equal P, P + 1 tokens fused per block"

    def schedule_removals(self, P):
        if P is not None:
            return super().schedule_removals(P)
        arch = Arch(N=self.tokens, C=1, L=self.num_layers, H=1, prefix=self.prefix)
        return keep_rate_removals(arch, self.hp["keep_rate"], self.hp["drop_loc"], self.hp["fuse_token"])

    def start(self, x):
        super().start(x)
        self.kept = {}

    def attention_need(self, layer: int) -> str:
        """Only the [CLS] row of the map, beside the fused kernel, where tokens are dropped."""
        return "cls" if self.removals[layer] > 0 else "fused"

    def reduce(self, layer, x, attention, keys):
        n = x.shape[1] - self.prefix
        kept = n - dropped(self.removals[layer], self.hp["fuse_token"])
        with stage("evit.rank"):
            a = attentiveness(attention.first_row, self.prefix)
        out, self.kept[layer] = select_and_fuse(x, a, kept, self.prefix, self.hp["fuse_token"], stage)
        positions = self.token_positions(x)
        if positions is not None:  # `size` is the positions' mass only: EViT has no proportional attention
            self.positions, self.size = follow_positions(positions, self.sizes_or_ones(x), a, self.kept[layer],
                                                         self.prefix, self.hp["fuse_token"])
        return out
