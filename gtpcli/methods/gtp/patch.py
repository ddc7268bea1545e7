"""Graph-based Token Propagation (GTP-ViT, paper section 3.2) as a patch of timm ViT blocks.

Per image, once, after patch embedding: a sparse token graph (spatial 8-neighbourhood, and/or each
token's M most cosine-similar tokens), stored as padded neighbour lists with the weights of
A_hat = D^-1/2 A D^-1/2. In every block with P > 0, after attention: score the image tokens from the
attention map, keep the N - P best, and propagate the other P into the kept ones:
X^s = X^k + alpha A_hat^p X^p, s^s = s^k + alpha A_hat^p s^p. A_hat^p (kept x propagated) is assembled
from the neighbour lists each layer, so no N x N matrix is stored or multiplied after the first block.

`variant="paper"` (the default) follows the paper's equations. `variant="authors"` reproduces the authors'
released code (Ackesnal/GTP-ViT), which produced the published accuracies and departs from the paper in:
- Psi (Eq. 4) sums each image token's attention column over all queries *including itself*;
- sparsification keeps N^2 - int((1 - theta) N^2) + 1 values per head, not theta N^2, and in every block;
- the semantic graph (Eq. 6-7) keeps every token tied with the threshold T_i, and on a model without
  [CLS] gives M + 1 neighbours per token (their threshold index counts the tokens as if [CLS] were there).
Both variants share everything else, and the `cossim` selection, which only the authors' code defines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import AttentionSummary, Reduction, stage, take_rows

SELECTIONS = ("mixed", "diag", "broad", "cls", "cossim", "random")
GRAPHS = ("mixed", "spatial", "semantic", "none")
FUSIONS = ("max", "mean")
VARIANTS = ("paper", "authors")


@dataclass
class Graph:
    """Row i of A_hat for each image token: neighbour indices (B, N, K) and weights (B, N, K).
    Padding slots have weight 0 (and index 0)."""

    index: torch.Tensor
    weight: torch.Tensor

    def rows(self, rows: torch.Tensor) -> "Graph":
        """The lists of these rows (B, R), neighbour indices still in the old numbering."""
        return Graph(take_rows(self.index, rows), take_rows(self.weight, rows))

    def dense(self, n: int) -> torch.Tensor:
        """A_hat as a dense (B, N, n) matrix: for tests and small inputs only."""
        out = self.weight.new_zeros(*self.index.shape[:2], n)
        return out.scatter_add_(2, self.index, self.weight)


def spatial_neighbours(height: int, width: int) -> torch.Tensor:
    """(H*W, 8) indices of the 8-neighbourhood on the patch grid, -1 where the grid ends."""
    rows = torch.arange(height).view(-1, 1).expand(height, width).reshape(-1)
    cols = torch.arange(width).view(1, -1).expand(height, width).reshape(-1)
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    out = []
    for dr, dc in offsets:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        out.append(torch.where(inside, r * width + c, torch.full_like(r, -1)))
    return torch.stack(out, dim=-1)


def semantic_neighbours(x: torch.Tensor, M: int, keep_ties: bool = False) -> torch.Tensor:
    """(B, N, K) indices of each token's M most cosine-similar other tokens (paper Eq. 6-7), no self loops.
    Exactly M per row, ties at the threshold broken by torch.topk; with `keep_ties` every token as similar
    as the M-th is kept too (the authors' `>= T_i`), and rows with fewer than K neighbours are padded with -1."""
    xn = F.normalize(x, dim=-1)
    similarity = xn @ xn.transpose(-1, -2)
    similarity.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    if not keep_ties:
        return similarity.topk(M, dim=-1).indices
    threshold = similarity.topk(M, dim=-1).values[..., -1:]  # T_i, the M-th largest similarity of row i
    K = int((similarity >= threshold).sum(dim=-1).max())
    values, index = similarity.topk(K, dim=-1)
    return torch.where(values >= threshold, index, torch.full_like(index, -1))


def build_graph(x: torch.Tensor, grid: tuple[int, int], M: int, kind: str, keep_ties: bool = False) -> Graph:
    """The normalised graph A_hat over the image tokens x (B, N, C) (paper Eq. 5-9)."""
    B, N, _ = x.shape
    parts = []
    if kind in ("mixed", "spatial"):
        if grid[0] * grid[1] != N:
            raise ValueError(f"a spatial graph needs a {grid[0]}x{grid[1]} grid of tokens, got {N} tokens")
        parts.append(spatial_neighbours(*grid).to(x.device).expand(B, N, 8))
    if kind in ("mixed", "semantic"):
        parts.append(semantic_neighbours(x, min(M, N - 1), keep_ties))
    index = torch.cat(parts, dim=-1)
    valid = index >= 0
    if kind == "mixed":  # union: a semantic neighbour that is also a spatial one counts once
        spatial, semantic = index[..., :8], index[..., 8:]
        repeated = (semantic.unsqueeze(-1) == spatial.unsqueeze(-2)).any(-1)
        valid[..., 8:] &= ~repeated
    index = index.clamp(min=0)
    degree = valid.sum(-1).to(x.dtype).clamp(min=1)  # D_ii = row sums of A
    weight = valid.to(x.dtype) * (degree.unsqueeze(-1) * degree.gather(1, index.flatten(1)).view_as(index)).rsqrt()
    return Graph(index, weight)


def fuse(values: torch.Tensor, how: str) -> torch.Tensor:
    """Fuse per-head scores (B, H, N) into (B, N)."""
    return values.amax(dim=1) if how == "max" else values.mean(dim=1)


def token_scores(attention: torch.Tensor | AttentionSummary, prefix: int, selection: str, fusion: str,
                 keys: torch.Tensor | None = None, variant: str = "paper") -> torch.Tensor:
    """Importance of each image token (B, N_img): the largest are kept (paper section 3.2.1, Fig. 5).
    `attention` is the (B, H, N, N) map, or its summary for every selection but cossim."""
    if selection == "random":
        like = keys if keys is not None else attention  # (B, H, N, .) either way
        return torch.rand(like.shape[0], like.shape[2] - prefix, device=like.device)
    if selection == "cossim":  # as the authors' code defines it: a token whose attention row resembles
        rows = F.normalize(fuse(attention[:, :, prefix:], fusion), dim=-1)  # the others' is redundant
        return -(rows @ rows.transpose(-1, -2)).sum(dim=-1)
    summary = attention if isinstance(attention, AttentionSummary) else AttentionSummary.of(attention)
    if selection == "cls":  # EViT: attention from [CLS] to each token
        return fuse(summary.first_row[..., prefix:], fusion)
    regeneration = fuse(summary.diagonal[..., prefix:], fusion)  # Gamma (Eq. 3)
    if selection == "diag":
        return regeneration
    columns = summary.columns
    if variant == "paper":
        columns = columns - summary.diagonal  # Psi without the token's attention to itself (Eq. 4)
    broadcasting = fuse(columns[..., prefix:], fusion)
    return broadcasting if selection == "broad" else regeneration * broadcasting


def split(scores: torch.Tensor, P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the kept tokens (in their original order) and of the P propagated ones."""
    order = scores.argsort(dim=-1, descending=True)
    keep = order[:, : scores.shape[1] - P].sort(dim=-1).values
    return keep, order[:, scores.shape[1] - P:]


def split_graph(graph: Graph, keep: torch.Tensor, propagated: torch.Tensor) -> tuple[torch.Tensor, Graph]:
    """A_hat^p, the (B, N - P, P) block of A_hat from propagated to kept tokens, and the graph of the kept
    tokens alone (renumbered, weights not renormalised), from one read of the kept rows' neighbour lists."""
    B, N = graph.index.shape[:2]
    kept, P = keep.shape[1], propagated.shape[1]
    target = torch.empty(B, N, dtype=torch.long, device=keep.device)  # kept: new number; propagated: -slot
    target.scatter_(1, keep, torch.arange(kept, device=keep.device).expand(B, kept))
    target.scatter_(1, propagated, torch.arange(-1, -P - 1, -1, device=keep.device).expand(B, P))
    rows = graph.rows(keep)
    target = target.gather(1, rows.index.flatten(1)).view_as(rows.index)
    matrix = rows.weight.new_zeros(B, kept, P + 1).scatter_add_(2, (-target).clamp(min=0), rows.weight)[..., 1:]
    return matrix, Graph(target.clamp(min=0), rows.weight * (target >= 0))


class GTP(Reduction):
    """GTP's configuration (hyperparameters of the paper) and its per-image state."""

    method = "gtp"
    moves_positions = True  # a kept token sits at the centroid of what it holds, weighted by size (Eq. 12)

    def __init__(self, model: nn.Module, P: int | Sequence[int] = 8, alpha: float = 0.1, sparsity: float = 1.0,
                 M: int = 8, selection: str = "mixed", graph: str = "mixed", head_fusion: str = "max",
                 prop_attn: bool = True, variant: str = "paper"):
        _choose("selection", selection, SELECTIONS)
        _choose("graph", graph, GRAPHS)
        _choose("head_fusion", head_fusion, FUSIONS)
        _choose("variant", variant, VARIANTS)
        if selection == "cls" and getattr(model, "cls_token", None) is None:
            raise ValueError("selection 'cls' needs a [CLS] token, and this model has none (use mixed)")
        if not 0.0 < sparsity <= 1.0:
            raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
        if M < 1:
            raise ValueError(f"M (semantic neighbours) must be >= 1, got {M}")
        self.alpha, self.theta, self.M = float(alpha), float(sparsity), int(M)
        self.selection, self.graph_kind, self.fusion, self.variant = selection, graph, head_fusion, variant
        self.grid = tuple(model.patch_embed.grid_size)
        self.graph: Graph | None = None
        super().__init__(model, P, prop_attn)

    def start(self, x: torch.Tensor) -> None:
        super().start(x)
        self.graph = None
        if any(self.removals) and self.propagates:
            with stage("gtp.graph"):
                self.graph = build_graph(x[:, self.prefix:], self.grid, self.semantic_degree, self.graph_kind,
                                         keep_ties=self.variant == "authors")

    @property
    def propagates(self) -> bool:
        return self.graph_kind != "none" and self.alpha != 0.0

    @property
    def semantic_degree(self) -> int:
        """M, or M + 1 on a model without [CLS] in the authors' code."""
        return self.M + 1 if self.variant == "authors" and self.prefix == 0 else self.M

    def attention_need(self, layer: int) -> str:
        if self.removals[layer] == 0 or self.selection == "random":
            return "fused"  # sparsification, when on, still computes the map (see `attend`)
        return "map" if self.selection == "cossim" else "summary"

    def sparsity(self, layer: int) -> float:
        """The paper sparsifies the maps it selects from; the authors' code every block's."""
        return self.theta if self.removals[layer] > 0 or self.variant == "authors" else 1.0

    def reduce(self, layer, x, attention, keys):
        P, p = self.removals[layer], self.prefix
        with stage("gtp.select"):
            keep, propagated = split(token_scores(attention, p, self.selection, self.fusion, keys, self.variant), P)
        with stage("gtp.propagate"):
            size = self.sizes_or_ones(x)
            positions = self.token_positions(x)
            prefix = torch.arange(p, device=x.device).expand(x.shape[0], p)
            rows = torch.cat([prefix, keep + p], dim=1)
            x_new, size_new = take_rows(x, rows), take_rows(size, rows)  # prefix and kept tokens in one gather
            mass = None if positions is None else take_rows(positions * size, rows)  # size-weighted positions
            if self.graph is not None:
                matrix, self.graph = split_graph(self.graph, keep, propagated)
                matrix = self.alpha * matrix
                x_new[:, p:] += matrix @ take_rows(x, propagated + p)  # Eq. 10
                size_new[:, p:] += matrix @ take_rows(size, propagated + p)  # Eq. 12
                if mass is not None:  # positions propagate as sizes do: the centroid of what a token holds
                    mass[:, p:] += matrix.float() @ take_rows(positions * size, propagated + p)
            if mass is not None:
                self.positions = mass / size_new
            self.size = size_new
            return x_new


def _choose(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
