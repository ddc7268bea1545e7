"""Token Merging (Bolya et al., ICLR 2023) as a patch of the same timm blocks, for comparison with GTP.

Bipartite soft matching on the attention keys averaged over heads: image tokens alternate into sets
A and B, each A token's most similar B token is its edge, the r best edges are merged by size-weighted
average. Prefix tokens ([CLS], distillation, registers) never take part. r is clamped to half the image
tokens a layer has, and each clamp is recorded in `clamped`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..analytic import per_layer
from .common import Reduction, stage


def bipartite_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For image-token features (B, N, d): indices into A of the unmerged and merged tokens, and
    the B token each merged one goes to. A = even positions, B = odd positions."""
    metric = F.normalize(metric, dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    best, partner = (a @ b.transpose(-1, -2)).max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged, unmerged = order[:, :r], order[:, r:]
    return unmerged, merged, partner.gather(1, merged)


def merge(x: torch.Tensor, unmerged: torch.Tensor, merged: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Sum each merged A token into its B partner: (B, N, C) -> (B, N - r, C) as [unmerged A, B]."""
    a, b = x[:, ::2], x[:, 1::2]
    C = x.shape[-1]
    kept_a = a.gather(1, unmerged.unsqueeze(-1).expand(-1, -1, C))
    sources = a.gather(1, merged.unsqueeze(-1).expand(-1, -1, C))
    b = b.scatter_add(1, partner.unsqueeze(-1).expand(-1, -1, C), sources)
    return torch.cat([kept_a, b], dim=1)


class ToMe(Reduction):
    method = "tome"

    def __init__(self, model: nn.Module, P: int | Sequence[int] = 8, prop_attn: bool = True):
        self.clamped: list[tuple[int, int, int]] = []  # (layer, asked, used)
        super().__init__(model, P, prop_attn)

    def schedule_removals(self, P: int | Sequence[int]) -> list[int]:
        """ToMe never fails on a large r: each layer merges at most half of its image tokens."""
        asked = per_layer(P, self.num_layers)
        used, tokens, self.clamped = [], self.tokens, []
        for layer, r in enumerate(asked):
            allowed = min(r, (tokens - self.prefix) // 2)
            if allowed < r:
                self.clamped.append((layer, r, allowed))
            used.append(allowed)
            tokens -= allowed
        return used

    def reduce(self, layer, x, weights, keys):
        r, p = self.removals[layer], self.prefix
        with stage("tome.match"):
            unmerged, merged, partner = bipartite_matching(keys.mean(dim=1)[:, p:], r)
        with stage("tome.merge"):
            size = self.sizes_or_ones(x)
            image = torch.cat([x[:, p:] * size[:, p:], size[:, p:]], dim=-1)  # merge features and sizes at once
            image = merge(image, unmerged, merged, partner)
            image_size = image[..., -1:]
            self.size = torch.cat([size[:, :p], image_size], dim=1)
            return torch.cat([x[:, :p], image[..., :-1] / image_size], dim=1)
