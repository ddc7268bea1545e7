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
from .relative import relative_of
from .rotary import rotary_of

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
           sparsity: float = 1.0, variant: str = "paper", rope: torch.Tensor | None = None):
    """timm's attention forward (ViT's `Attention`, EVA's `EvaAttention` and `AttentionRope`), plus an additive
    logit bias (log sizes) and, for token selection, what it needs of the (sparsified, see `sparsify` for
    `variant`) attention map: `need` is "fused" (nothing: timm's fused kernel), "summary" (an
    AttentionSummary), "map" (the whole map) or "cls" (the fused kernel, and a ClsAttention: the first row
    computed on its own, N C MACs, and the values). `rope`: the rotary embedding of the image tokens.
    Returns (output, the map or its summary, or None when the fused kernel ran, keys)."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = project(attn, x, rope)
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
        seen = ClsAttention((logits if bias is None else logits + bias[..., :1, :]).softmax(dim=-1)[:, :, 0], v)
    elif need == "summary" or sparsity < 1.0 or not getattr(attn, "fused_attn", True):
        out, seen = _blocked_attention(attn, q, k, v, bias, sparsity, variant)
    else:
        drop = attn.attn_drop.p if attn.training else 0.0
        out, seen = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop), None
    out = out.transpose(1, 2).reshape(B, N, -1)
    out = attn.norm(out) if getattr(attn, "norm", None) is not None else out
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), seen, k


def project(attn: nn.Module, x: torch.Tensor, rope: torch.Tensor | None = None):
    """q, k, v (B, H, N, d) as the attention module computes them: one qkv projection (EVA's q and v biases
    beside it) or three, q/k norms, the rotary embedding on the tokens after the prefix, grouped key/value
    heads repeated."""
    B, N, _ = x.shape
    if getattr(attn, "qkv", None) is not None:
        biases = getattr(attn, "q_bias", None)
        if biases is None:
            qkv = attn.qkv(x)
        elif getattr(attn, "qkv_bias_separate", False):
            qkv = attn.qkv(x) + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        else:
            qkv = F.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
        q, k, v = qkv.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        kv_heads = getattr(attn, "num_kv_heads", attn.num_heads)
        q = attn.q_proj(x).reshape(B, N, attn.num_heads, -1).transpose(1, 2)
        k = attn.k_proj(x).reshape(B, N, kv_heads, -1).transpose(1, 2)
        v = attn.v_proj(x).reshape(B, N, kv_heads, -1).transpose(1, 2)
    q, k = _identity_or(attn, "q_norm")(q), _identity_or(attn, "k_norm")(k)
    if rope is not None:
        from timm.layers import apply_rot_embed_cat

        p, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
        q = torch.cat([q[:, :, :p], apply_rot_embed_cat(q[:, :, p:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], rope, half=half)], dim=2).type_as(v)
    groups = getattr(attn, "num_kv_groups", 1)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return q, k, v


def _identity_or(module: nn.Module, name: str):
    found = getattr(module, name, None)
    return found if found is not None else (lambda t: t)


def _blocked_attention(attn: nn.Module, q, k, v, bias, sparsity: float, variant: str):
    """softmax(q k^T scale + bias) v and the map's summary, over a few (image, head) slices at a time."""
    B, H, N, _ = q.shape
    q, k, v = (t.reshape(B * H, N, -1) for t in (q, k, v))
    if bias is not None:  # (B or 1, 1 or H, 1 or N, N): log sizes, BEiT's relative bias
        bias = bias.expand(B, H, bias.shape[-2], N).reshape(B * H, -1, N)
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


def take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) at rows (B, M), by one index_select over the flattened batch: on CPU, a gather with the
    index expanded over C took 4 to 20 times as long (B = 1 to 16, N = 197, C = 384)."""
    B, N, C = x.shape
    flat = (rows + torch.arange(B, device=x.device).unsqueeze(1) * N).flatten()
    return x.reshape(B * N, C).index_select(0, flat).view(B, -1, C)


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
    # Whether `reduce` keeps `positions` in step with the tokens, so that the method runs on models with
    # rotary embeddings or a relative position bias (docs/positions.md); one that does not is refused there.
    moves_positions = False

    def __init__(self, model: nn.Module, P: int | Sequence[int], prop_attn: bool = True):
        self.num_layers = len(model.blocks)
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.tokens = model.patch_embed.num_patches + self.prefix
        self.prop_attn = prop_attn
        self.rotary, self.relative = rotary_of(model), relative_of(model)
        self.placed = self.rotary or self.relative  # what gives the tokens' grid positions, if anything reads them
        if self.placed is not None and not self.moves_positions:
            kind = "rotary position embeddings" if self.rotary is not None else "a relative position bias"
            raise ValueError(f"{self.method} does not move token positions with the tokens, and this "
                             f"{type(model).__name__} has {kind}")
        self.P = P
        self.size: torch.Tensor | None = None  # (B, N, 1) token sizes, None while all are 1
        self.positions: torch.Tensor | None = None  # (B, N, 2) token positions, None until tokens move

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
        self.positions = None

    def token_positions(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, N, 2) float32 positions of the tokens x on the patch grid (prefix rows 0), None on a model
        whose attention does not read them (no rotary embedding, no relative bias). A method's `reduce`
        moves them as it moves the tokens and stores the result in `positions`."""
        if self.placed is None:
            return None
        if self.positions is None:
            self.positions = self.placed.initial(x, self.prefix)
        return self.positions

    def rope(self, layer: int, stock: torch.Tensor | None) -> torch.Tensor | None:
        """The rotary embedding this block applies: the model's own (`stock`) until tokens moved, then the
        module's frequencies at the tokens' positions."""
        if self.positions is None or stock is None:
            return stock
        return self.rotary.embed(self.positions[:, self.prefix:], layer)

    def bias(self, attn: nn.Module | None = None, shared: torch.Tensor | None = None) -> torch.Tensor | None:
        """What the block adds to its attention logits: log sizes (proportional attention), and BEiT's
        relative position bias of `attn` (and the model's `shared` one) at the tokens' positions."""
        sizes = size_bias(self.size) if self.prop_attn else None
        if self.relative is None or attn is None:
            return sizes
        relative = self.relative.bias(attn, shared, self.positions)
        return relative if sizes is None else (sizes if relative is None else relative + sizes)

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


def reduced_forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask=None,
                    is_causal: bool = False, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
    """A pre-norm timm block (ViT's `Block`, EVA's `EvaBlock`, BEiT's `Block`) with the reduction between
    attention and MLP (as GTP and ToMe place it)."""
    red: Reduction = self.reduction
    layer = self.layer_index
    if layer == 0:
        red.start(x)
    with stage("attention"):
        x, attention, keys = attention_branch(self, x, red.bias(self.attn, shared_rel_pos_bias),
                                              red.attention_need(layer), red.sparsity(layer), red.variant,
                                              red.rope(layer, rope))
    if red.removals[layer] > 0:
        x = red.reduce(layer, x, attention, keys)
    with stage("mlp"):
        return mlp_branch(self, x)


def attention_branch(block: nn.Module, x: torch.Tensor, bias=None, need: str = "fused", sparsity: float = 1.0,
                     variant: str = "paper", rope=None):
    """x + the block's attention branch (layer scale `ls1` or EVA's `gamma_1`), and what `attend` saw."""
    out, seen, keys = attend(block.attn, block.norm1(x), bias, need, sparsity, variant, rope)
    return x + block.drop_path1(_layer_scale(block, 1, out)), seen, keys


def mlp_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x + the block's MLP branch (layer scale `ls2` or EVA's `gamma_2`)."""
    return x + block.drop_path2(_layer_scale(block, 2, block.mlp(block.norm2(x))))


def _layer_scale(block: nn.Module, which: int, out: torch.Tensor) -> torch.Tensor:
    scale = getattr(block, f"ls{which}", None)
    if scale is not None:
        return scale(out)
    gamma = getattr(block, f"gamma_{which}", None)
    return out if gamma is None else gamma * out


PRE_NORM = ("norm1", "attn", "drop_path1", "norm2", "mlp", "drop_path2")


def check_blocks(model: nn.Module) -> None:
    """A one-line ValueError unless every block is pre-norm, x + attn(norm1(x)) then x + mlp(norm2(x)),
    with a layer scale gtpcli knows (timm's `ls1`/`ls2` or EVA's `gamma_1`/`gamma_2`)."""
    for index, block in enumerate(model.blocks):
        _check_block(index, getattr(type(block), "_stock_class", type(block)), block)


def _check_block(index: int, stock: type, block: nn.Module) -> None:
    name = stock.__name__
    if "PostNorm" in name or "ResPost" in name:
        raise ValueError(f"block {index} ({name}) normalises after attention, not before: gtpcli patches "
                         "pre-norm blocks")
    missing = [n for n in PRE_NORM if not hasattr(block, n)]
    if not (hasattr(block, "ls1") or hasattr(block, "gamma_1")):
        missing.append("ls1")
    if missing:
        raise ValueError(f"block {index} ({name}) is not a pre-norm timm ViT block: it has no '{missing[0]}'")
    if not isinstance(block.attn, _known_attention()):
        raise ValueError(f"block {index}'s attention ({type(block.attn).__name__}) is not one gtpcli "
                         "re-implements (timm's Attention, AttentionRope, EvaAttention, BEiT's Attention)")


def _known_attention() -> tuple[type, ...]:
    """The attention classes `attend` computes as timm does (each looked up, so an older timm lacking one
    simply has fewer)."""
    from importlib import import_module

    found = []
    for module, name in (("timm.layers", "Attention"), ("timm.models.vision_transformer", "Attention"),
                         ("timm.layers", "AttentionRope"), ("timm.models.eva", "EvaAttention"),
                         ("timm.models.beit", "Attention")):
        cls = getattr(import_module(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def patch_blocks(model: nn.Module, reduction: Reduction) -> nn.Module:
    """Swap each block's class for a reducing subclass (weights untouched) and attach the reduction."""
    unpatch_blocks(model)
    check_blocks(model)
    for index, block in enumerate(model.blocks):
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
