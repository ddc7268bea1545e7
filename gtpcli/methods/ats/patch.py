"""ATS's torch patch: the Reduction `ATS` and the tensor functions it runs (the method's
card, hyperparameters and analytic cost, is `card.py` beside it; docs/methods/ats.md has the readings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..blocks import Reduction, stage, take_rows
from .card import METHOD, NAME, OFFICIAL_LAYERS, VARIANTS, _no_schedule, ats_blocks


def significance(first_row, values, prefix: int):
    """(B, n): sum over heads of the [CLS] row (B, H, N) times the norm of each token's values (B, H, N, d)
    over all heads, at the image tokens, normalised to sum 1."""
    B, H, N, d = values.shape
    norms = values.transpose(1, 2).reshape(B, N, H * d).norm(dim=-1)
    scores = (first_row.sum(dim=1) * norms)[:, prefix:]
    return scores / scores.sum(dim=-1, keepdim=True)


def inverse_transform_sample(scores, reference: int, packed: bool = False):
    """The official sampling on scores (B, m), m <= reference (0 = a token dropped earlier or padding): the
    scores padded with zeros to `reference` (masked), or as they are (`packed`: the official DROP_TOKENS path,
    whose CDF covers only the tokens the block holds), sorted ascending, CDF rescaled to [0, 1], `reference`
    points from the smallest positive CDF value to 1, each taking the nearest CDF value's token (the first one
    on ties), duplicates collapsed. The official packed path pads the rescaled CDF with zeros to `reference`;
    no point is nearest to a zero (every point lies at or above the smallest positive value), so leaving them
    out picks the same tokens. Returns (indices into the m tokens (B, k), ascending significance, padded with
    0; which are real (B, k); counts (B,))."""
    import torch

    B, m = scores.shape
    width = m if packed else reference
    full = torch.cat([scores.new_zeros(B, width - m), scores], dim=1)
    ordered, order = full.sort(dim=1)
    cdf = ordered.cumsum(dim=1)
    low, high = cdf.min(dim=1, keepdim=True).values, cdf.max(dim=1, keepdim=True).values
    cdf = (cdf - low) / (high - low)
    start = (cdf + (cdf == 0).to(cdf.dtype) * 1e8).min(dim=1, keepdim=True).values
    steps = torch.arange(reference, device=scores.device, dtype=cdf.dtype)
    ys = torch.linspace(0, 1, reference, device=scores.device, dtype=cdf.dtype)
    ys = start + ((ys * (reference - 1)) - start * steps) / (reference - 1)
    picks = (ys.unsqueeze(2) - cdf.unsqueeze(1)).abs().argmin(dim=2).sort(dim=1).values  # (B, reference)
    fresh = torch.ones_like(picks, dtype=torch.bool)
    fresh[:, 1:] = picks[:, 1:] != picks[:, :-1]
    counts = fresh.sum(dim=1)
    k = int(counts.max())
    slot = torch.where(fresh, picks, picks.new_full((), width)).sort(dim=1).values[:, :k]  # unique first
    real = slot < width
    tokens = order.gather(1, slot.clamp(max=width - 1)) - (width - m)
    return torch.where(real, tokens, torch.zeros_like(tokens)), real, counts


@dataclass
class Trace:
    """What the last forward recorded, per image (the adaptive sweep reads `counts`)."""

    counts: Any          # (B, L + 1) tokens entering each block (prefix included), then leaving the last
    sampled: dict        # ATS block -> (B, k) indices of the sampled tokens among that block's image tokens


def ats_block_forward(self, x, rope=None, attn_mask=None, is_causal: bool = False, shared_rel_pos_bias=None):
    """A timm block under ATS: attention over the valid tokens (padding masked), then, in an ATS block,
    sampling before the MLP."""
    from ..blocks import attention_branch, mlp_branch, stage

    red = self.reduction
    layer = self.layer_index
    if layer == 0:
        red.start(x)
    red.record(layer, x)
    sampling = layer in red.blocks
    with stage("attention"):
        x, seen, _ = attention_branch(self, x, red.key_bias(x, self.attn, shared_rel_pos_bias),
                                      "cls" if sampling else "fused", rope=red.rope(layer, rope))
    if sampling:
        x = red.sample(layer, x, seen)
    with stage("mlp"):
        x = mlp_branch(self, x)
    if layer == red.num_layers - 1:
        red.record(red.num_layers, x)
    return x


class ATS(Reduction):
    """ATS blocks at `layers`; per-image counts of the last forward in `last`."""

    method = NAME
    block_forward = ats_block_forward  # batches padded to their widest image, the padding masked
    moves_positions = True  # sampled tokens keep their own positions (ATS only selects)

    def __init__(self, model, layers: str = OFFICIAL_LAYERS, variant: str = VARIANTS[0], P=None):
        if P is not None:
            _no_schedule()
        METHOD.require_cls(model)
        self.hp = METHOD.validate({"layers": layers, "variant": variant})
        self.blocks = ats_blocks(self.hp["layers"], len(model.blocks))
        self.packed = self.hp["variant"] == "authors_eval"
        self.last: Trace | None = None
        super().__init__(model, 0, prop_attn=False)

    @property
    def variant_label(self) -> str:
        if self.packed:
            return f"authors' eval: ATS blocks {self.hp['layers']} (counted from 0), CDF of the packed tokens"
        return f"paper: ATS blocks {self.hp['layers']} (counted from 0)"

    def start(self, x):
        super().start(x)
        self.valid = None  # (B, N) which tokens are real, None while all are
        self.counts = x.new_zeros(x.shape[0], self.num_layers + 1, dtype=torch.long)
        self.last = Trace(self.counts, {})

    def record(self, layer: int, x) -> None:
        self.counts[:, layer] = x.shape[1] if self.valid is None else self.valid.sum(dim=1)

    def key_bias(self, x, attn=None, shared=None):
        """-inf on padded keys (B, 1, 1, N), None without padding; plus BEiT's relative position bias."""
        relative = self.bias(attn, shared)
        if self.valid is None:
            return relative
        bias = torch.zeros(self.valid.shape, dtype=x.dtype, device=x.device).masked_fill(~self.valid, float("-inf"))
        return bias[:, None, None, :] if relative is None else relative + bias[:, None, None, :]

    def sample(self, layer: int, x, seen):
        p = self.prefix
        with stage("ats.score"):
            scores = significance(seen.first_row, seen.values, p)
        with stage("ats.sample"):
            index, real, _ = inverse_transform_sample(scores, self.tokens - p, self.packed)
        with stage("ats.gather"):
            image = take_rows(x, index + p)
            self.last.sampled[layer] = index
            positions = self.token_positions(x)
            if positions is not None:
                sampled = positions[:, p:].gather(1, index.unsqueeze(-1).expand(-1, -1, 2))
                self.positions = torch.cat([positions[:, :p], sampled], dim=1)
            if bool(real.all()):
                self.valid = None
                return torch.cat([x[:, :p], image], dim=1)
            self.valid = torch.cat([real.new_ones(x.shape[0], p), real], dim=1)
            return torch.cat([x[:, :p], image * real.unsqueeze(-1)], dim=1)
