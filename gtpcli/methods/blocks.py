"""What every token-reduction method shares: attention that can return its map, proportional
attention, token sizes, prefix-token bookkeeping, the per-layer schedule and the block patch.

A patched model keeps its timm modules and weights; only the classes of the model's blocks are
swapped for a subclass whose forward calls `Reduction.reduce` between attention and MLP.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from ..cost.analytic import per_layer, token_schedule

# Stage labels for `gtpcli trace`. Off by default so the hot path pays nothing for them.
LABELS = {"on": False}


def stage(name: str):
    """A profiler label around one stage of the forward pass, only while tracing."""
    return record_function(name) if LABELS["on"] else nullcontext()


@dataclass
class ClsAttention:
    """The [CLS] (first) row of the softmax attention map and the values, for methods that score tokens by
    what [CLS] reads from them (ATS), next to the fused kernel's output."""

    first_row: torch.Tensor  # (B, H, N): A_0j
    values: torch.Tensor     # (B, H, N, d)


@dataclass
class AttentionSummary:
    """What token selection reads from a (B, H, N, N) attention map, so the map itself need not be kept."""

    diagonal: torch.Tensor   # (B, H, N): A_ii
    columns: torch.Tensor    # (B, H, N): sum over queries i of A_ij
    first_row: torch.Tensor  # (B, H, N): A_0j, the first token's ([CLS]) attention

    @classmethod
    def of(cls, weights: torch.Tensor) -> "AttentionSummary":
        return cls(weights.diagonal(dim1=-2, dim2=-1), weights.sum(dim=-2), weights[..., 0, :])


# An explicit attention map is computed a few (image, head) slices at a time, so that each N x N block is
# still in cache when softmax, A V and the summary read it: on CPU its cost is memory traffic, not MACs.
BLOCK_BYTES = 1 << 22


def attend(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None, need: str = "fused",
           sparsity: float = 1.0, variant: str = "paper"):
    """timm's `Attention.forward`, plus an additive logit bias (log sizes) and, for token selection, what
    it needs of the (sparsified, see `sparsify` for `variant`) attention map: `need` is "fused" (nothing:
    timm's fused kernel), "summary" (an AttentionSummary), "map" (the whole map) or "cls" (the fused kernel,
    and a ClsAttention: the first row computed on its own, N C MACs, and the values).
    Returns (output, the map or its summary, or None when the fused kernel ran, keys)."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if need == "map":
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits += bias  # in place: at N = 785 every extra N x N pass shows in the throughput
        weights = logits.softmax(dim=-1)
        if sparsity < 1.0:
            weights = sparsify(weights, sparsity, variant)
        out, seen = attn.attn_drop(weights) @ v, weights
    elif need == "cls":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)
        seen = ClsAttention((logits if bias is None else logits + bias).softmax(dim=-1)[:, :, 0], v)
    elif need == "summary" or sparsity < 1.0 or not getattr(attn, "fused_attn", True):
        out, seen = _blocked_attention(attn, q, k, v, bias, sparsity, variant)
    else:
        drop = attn.attn_drop.p if attn.training else 0.0
        out, seen = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop), None
    out = out.transpose(1, 2).reshape(B, N, -1)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), seen, k


def _blocked_attention(attn: nn.Module, q, k, v, bias, sparsity: float, variant: str):
    """softmax(q k^T scale + bias) v and the map's summary, over a few (image, head) slices at a time."""
    B, H, N, _ = q.shape
    q, k, v = (t.reshape(B * H, N, -1) for t in (q, k, v))
    if bias is not None:
        bias = bias.expand(B, H, 1, N).reshape(B * H, 1, N)
    step = max(1, BLOCK_BYTES // (N * N * q.element_size()))
    outs, diagonals, columns, first_rows = [], [], [], []
    for start in range(0, B * H, step):
        at = slice(start, start + step)
        if bias is None:
            logits = torch.bmm(q[at], k[at].transpose(1, 2)).mul_(attn.scale)
        else:
            logits = torch.baddbmm(bias[at], q[at], k[at].transpose(1, 2), alpha=attn.scale)
        weights = logits.softmax(dim=-1)
        if sparsity < 1.0:
            weights = sparsify(weights, sparsity, variant)
        outs.append(torch.bmm(attn.attn_drop(weights), v[at]))
        diagonals.append(weights.diagonal(dim1=-2, dim2=-1))
        columns.append(weights.sum(dim=-2))
        first_rows.append(weights[:, 0])
    summary = AttentionSummary(*(torch.cat(parts).view(B, H, N) for parts in (diagonals, columns, first_rows)))
    return torch.cat(outs).view(B, H, N, -1), summary


def sparsify(weights: torch.Tensor, theta: float, variant: str = "paper") -> torch.Tensor:
    """Keep the largest values of each head's N x N map, zero the rest (values tied with the smallest
    kept one are kept too); no renormalisation. How many: the paper's "largest theta N^2", ceil(theta N^2);
    the authors' code zeroes what lies below the k-th smallest value, k = int((1 - theta) N^2) in floating
    point, so it keeps N^2 - k + 1 (all of them when k = 0)."""
    N = weights.shape[-1]
    if variant == "authors":
        keep = min(N * N, N * N - int(N * N * (1 - theta)) + 1)
    else:
        keep = max(1, math.ceil(theta * N * N - 1e-9))  # tolerate float noise: 0.07 * 100 is 7, not 8
    flat = weights.flatten(-2)
    threshold = flat.topk(keep, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    return (flat * (flat >= threshold)).view_as(weights)


def size_bias(size: torch.Tensor | None) -> torch.Tensor | None:
    """Proportional attention (paper Eq. 11): log s added to every query's logits, shape (B, 1, 1, N)."""
    return None if size is None else size.log().transpose(1, 2).unsqueeze(1)


class Reduction:
    """Configuration and per-forward state of a token-reduction method, shared by all patched blocks.

    `P` is the number of tokens removed per layer: one int, or one per layer. It can be changed between
    forward passes (`model.reduction.P = 4`) without rebuilding the model.
    """

    method = "none"
    variant = "paper"  # or "authors": a method's released code where it departs from its paper

    def __init__(self, model: nn.Module, P: int | Sequence[int], prop_attn: bool = True):
        self.num_layers = len(model.blocks)
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.tokens = model.patch_embed.num_patches + self.prefix
        self.prop_attn = prop_attn
        self.P = P
        self.size: torch.Tensor | None = None  # (B, N, 1) token sizes, None while all are 1

    @property
    def P(self) -> int | list[int]:
        return self._P

    @P.setter
    def P(self, value: int | Sequence[int]) -> None:
        value = value if value is None or isinstance(value, int) else list(value)  # None: the method's own schedule
        self.removals = self.schedule_removals(value)  # raises before anything changes
        self._P = value

    @property
    def warnings(self) -> list[str]:
        """What a result row must say where the run departs from the asked setting (none by default)."""
        return []

    def schedule_removals(self, P: int | Sequence[int] | None) -> list[int]:
        """Tokens removed in each layer; a schedule that empties a layer is a ValueError naming it."""
        if P is None:
            raise ValueError(f"{self.method} needs P (tokens removed per layer)")
        token_schedule(self.tokens, self.num_layers, P, self.prefix)
        return per_layer(P, self.num_layers)

    def schedule(self) -> list[int]:
        """Tokens entering each block."""
        return token_schedule(self.tokens, self.num_layers, self.removals, self.prefix)

    def start(self, x: torch.Tensor) -> None:
        """Called by the first block with the embedded tokens: forget the previous image batch."""
        self.size = None

    def bias(self) -> torch.Tensor | None:
        return size_bias(self.size) if self.prop_attn else None

    def attention_need(self, layer: int) -> str:
        """What `reduce` reads of this layer's attention map: "fused" (nothing), "summary" or "map"."""
        return "fused"

    def sparsity(self, layer: int) -> float:
        return 1.0

    def reduce(self, layer: int, x: torch.Tensor, attention: torch.Tensor | AttentionSummary | None,
               keys: torch.Tensor) -> torch.Tensor:
        """Remove `removals[layer]` tokens from x after attention (`attention`: see `attention_need`)."""
        raise NotImplementedError

    def sizes_or_ones(self, x: torch.Tensor) -> torch.Tensor:
        return self.size if self.size is not None else x.new_ones(x.shape[0], x.shape[1], 1)


def reduced_forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """A pre-norm timm Block with the reduction between attention and MLP (as GTP and ToMe place it)."""
    red: Reduction = self.reduction
    layer = self.layer_index
    if layer == 0:
        red.start(x)
    with stage("attention"):
        out, attention, keys = attend(self.attn, self.norm1(x), red.bias(), red.attention_need(layer),
                                      red.sparsity(layer), red.variant)
        x = x + self.drop_path1(self.ls1(out))
    if red.removals[layer] > 0:
        x = red.reduce(layer, x, attention, keys)
    with stage("mlp"):
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def patch_blocks(model: nn.Module, reduction: Reduction) -> nn.Module:
    """Swap each block's class for a reducing subclass (weights untouched) and attach the reduction."""
    unpatch_blocks(model)
    for index, block in enumerate(model.blocks):
        for needed in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
            if not hasattr(block, needed):
                raise ValueError(f"block {index} ({type(block).__name__}) is not a pre-norm timm ViT block: "
                                 f"it has no '{needed}'")
        block.__class__ = _reducing_class(type(block), getattr(type(reduction), "block_forward", reduced_forward))
        block.reduction = reduction
        block.layer_index = index
    model.reduction = reduction
    return model


def unpatch_blocks(model: nn.Module) -> nn.Module:
    """Restore stock timm behaviour."""
    for block in getattr(model, "blocks", []):
        if getattr(type(block), "_stock_class", None) is not None:
            block.__class__ = type(block)._stock_class
            del block.reduction, block.layer_index
    if "reduction" in model.__dict__:
        del model.reduction
    return model


_CLASSES: dict[tuple, type] = {}


def _reducing_class(stock: type, forward=reduced_forward) -> type:
    """The stock block class with `forward` swapped: `reduced_forward`, or a method's own `block_forward`
    (Evo-ViT, whose blocks skip tokens instead of removing them between attention and MLP)."""
    key = (stock, forward)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Reducing{stock.__name__}", (stock,), {"forward": forward, "_stock_class": stock})
    return _CLASSES[key]
