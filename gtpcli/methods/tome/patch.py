"""Token Merging (Bolya et al., ICLR 2023) as a patch of the same timm blocks, for comparison with GTP.

The official code (facebookresearch/ToMe, `tome/merge.py`) is the spec, rule for rule:
- bipartite soft matching on the attention keys averaged over heads, over *all* tokens: positions
  0, 2, 4, ... are set A, 1, 3, 5, ... set B, prefix tokens included at their positions. A prefix
  token in A never merges (its scores are -inf), one in B never receives (its column is -inf);
- each A token's most similar B token is its edge, the r best edges are merged by size-weighted average;
- the result is [unmerged A, B]. With prefix tokens the unmerged A tokens are put back in their original
  order (so [CLS] stays first) and the prefix tokens lead in their original order (ToMe's distillation
  token rule, generalised to registers); without prefix tokens they stay in similarity order, as there.
r is clamped to half the image tokens a layer has, and each clamp is recorded in `clamped`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import Reduction, stage
from .card import clamped_removals


def bipartite_matching(metric: torch.Tensor, r: int, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For token features (B, N, d) whose first `prefix` tokens are protected: indices into A (even
    positions) of the unmerged and the merged tokens, and into B (odd positions) of each merged one's partner."""
    metric = F.normalize(metric, dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    scores[:, : (prefix + 1) // 2] = float("-inf")     # prefix tokens in A are never merged
    scores[:, :, : prefix // 2] = float("-inf")        # prefix tokens in B never receive
    best, partner = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged, unmerged = order[:, :r], order[:, r:]
    if prefix > 0:
        unmerged = unmerged.sort(dim=-1).values
    return unmerged, merged, partner.gather(1, merged)


def merge(x: torch.Tensor, unmerged: torch.Tensor, merged: torch.Tensor, partner: torch.Tensor,
          prefix: int = 0) -> torch.Tensor:
    """Sum each merged A token into its B partner: (B, N, C) -> (B, N - r, C) as
    [prefix tokens in their order, unmerged A, B]."""
    a, b = x[:, ::2], x[:, 1::2]
    C = x.shape[-1]
    kept_a = a.gather(1, unmerged.unsqueeze(-1).expand(-1, -1, C))
    sources = a.gather(1, merged.unsqueeze(-1).expand(-1, -1, C))
    b = b.scatter_add(1, partner.unsqueeze(-1).expand(-1, -1, C), sources)
    if prefix <= 1:
        return torch.cat([kept_a, b], dim=1)
    in_a, in_b = (prefix + 1) // 2, prefix // 2
    lead = torch.stack([kept_a[:, :in_b], b[:, :in_b]], dim=2).flatten(1, 2)  # positions 0, 1, ..., 2 in_b - 1
    return torch.cat([lead, kept_a[:, in_b:in_a], kept_a[:, in_a:], b[:, in_b:]], dim=1)


class ToMe(Reduction):
    method = "tome"
    moves_positions = True  # a merged token sits at the size-weighted mean of its sources' positions

    def __init__(self, model: nn.Module, P: int | Sequence[int] = 8, prop_attn: bool = True):
        self.clamped: list[tuple[int, int, int]] = []  # (layer, asked, used)
        super().__init__(model, P, prop_attn)

    def schedule_removals(self, P: int | Sequence[int]) -> list[int]:
        used, self.clamped = clamped_removals(self.tokens, self.num_layers, self.prefix, P)
        return used

    @property
    def warnings(self) -> list[str]:
        return [f"r clamped in layers {[layer for layer, _, _ in self.clamped]}"] if self.clamped else []

    def reduce(self, layer, x, attention, keys):
        r, p = self.removals[layer], self.prefix
        with stage("tome.match"):
            unmerged, merged, partner = bipartite_matching(keys.mean(dim=1), r, p)
        with stage("tome.merge"):
            size = self.sizes_or_ones(x)
            positions = self.token_positions(x)
            tokens = merge(torch.cat([x * size, size], dim=-1), unmerged, merged, partner, p)  # features and sizes at once
            if positions is not None:  # averaged as the features are (float32: positions are coordinates)
                mass = merge(torch.cat([positions * size, size.float()], dim=-1), unmerged, merged, partner, p)
                self.positions = mass[..., :-1] / mass[..., -1:]
            self.size = tokens[..., -1:]
            return tokens[..., :-1] / self.size
