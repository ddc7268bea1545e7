"""BEiT's relative position bias, following the tokens (docs/positions.md).

BEiT adds to every attention logit a learned bias for the pair's offset on the patch grid, one table entry
per integer offset (and three for [CLS]: to a patch, from a patch, to itself). Tokens keep positions as on
rotary models (`rotary.py`): a token that holds one patch is at its patch, one that absorbed others at the
centroid of what it holds. The bias of a pair is the table read at their offset: the entry itself for
integer offsets (so kept tokens get exactly BEiT's bias), bilinear between the four nearest entries for a
fractional one, the same centroid rule as the rotary angles. All of it is gathers and elementwise work,
as BEiT's own lookup is (no MAC for a counter).
"""

from __future__ import annotations

import torch
from torch import nn

from .rotary import at_grid


class RelativeBias:
    """The relative position biases of a BEiT model: each block's own table, and the model's shared one."""

    def __init__(self, model: nn.Module):
        self.grid_size = tuple(int(s) for s in model.patch_embed.grid_size)
        self.shared = getattr(model, "rel_pos_bias", None)
        for block in model.blocks:
            window = getattr(block.attn, "window_size", None)
            if block.attn.relative_position_bias_table is not None and tuple(window) != self.grid_size:
                raise ValueError(f"its relative position bias covers a {tuple(window)} window, not the "
                                 f"{self.grid_size} patch grid")
        self._grids: dict[torch.device, torch.Tensor] = {}

    def grid(self) -> torch.Tensor:
        """(H W, 2) (row, col) of the patches, row-major: the coordinates BEiT's offsets count."""
        rows, cols = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in self.grid_size), indexing="ij")
        return torch.stack([rows, cols], dim=-1).reshape(-1, 2)

    def initial(self, x: torch.Tensor, prefix: int) -> torch.Tensor:
        if x.device not in self._grids:
            self._grids[x.device] = self.grid().to(x.device)
        return at_grid(self._grids[x.device], x, prefix)

    def bias(self, attn: nn.Module, shared: torch.Tensor | None, positions: torch.Tensor | None):
        """The block's bias (its own table plus the model's `shared` one), exactly as BEiT computes it while
        no token moved, (B, H, N, N) at the tokens' `positions` (B, N, 2) after; None without any table."""
        own = getattr(attn, "relative_position_bias_table", None) is not None
        if positions is None:
            parts = [_stock(attn) if own else None, shared]
        else:
            parts = [self.at(attn.relative_position_bias_table, positions) if own else None,
                     self.at(self.shared.relative_position_bias_table, positions) if shared is not None else None]
        parts = [part for part in parts if part is not None]
        return None if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def at(self, table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, H, N, N) from a BEiT table ((2 Wh - 1)(2 Ww - 1) + 3, H) at positions (B, N, 2), [CLS] first."""
        Wh, Ww = self.grid_size
        image = positions[:, 1:].float()
        B, n, _ = image.shape
        heads = table.shape[-1]
        span = torch.tensor([2 * Wh - 2, 2 * Ww - 2], dtype=image.dtype, device=image.device)
        offset = image.unsqueeze(2) - image.unsqueeze(1) + span / 2  # (B, n, n, 2), in [0, span]
        low = torch.minimum(offset.floor().clamp(min=0), span)
        high = torch.minimum(low + 1, span)
        w = offset - low

        def entry(r, c):
            return table[(r * (2 * Ww - 1) + c).long()]  # (B, n, n, H)

        w_r, w_c = w[..., :1], w[..., 1:]
        pairs = ((1 - w_r) * (1 - w_c) * entry(low[..., 0], low[..., 1])
                 + (1 - w_r) * w_c * entry(low[..., 0], high[..., 1])
                 + w_r * (1 - w_c) * entry(high[..., 0], low[..., 1])
                 + w_r * w_c * entry(high[..., 0], high[..., 1])).permute(0, 3, 1, 2)
        cls_to_patch, patch_to_cls, cls_to_cls = (table[k].view(1, heads, 1, 1) for k in (-3, -2, -1))
        top = torch.cat([cls_to_cls.expand(B, heads, 1, 1), cls_to_patch.expand(B, heads, 1, n)], dim=-1)
        rest = torch.cat([patch_to_cls.expand(B, heads, n, 1), pairs.to(table.dtype)], dim=-1)
        return torch.cat([top, rest], dim=-2)


def _stock(owner: nn.Module) -> torch.Tensor:
    """BEiT's own lookup, (1, H, N, N)."""
    index = owner.relative_position_index
    table = owner.relative_position_bias_table
    return table[index.view(-1)].view(*index.shape, -1).permute(2, 0, 1).unsqueeze(0)


def relative_of(model: nn.Module) -> RelativeBias | None:
    """A BEiT model's relative position biases, None for a model without them."""
    has_tables = any(getattr(b.attn, "relative_position_bias_table", None) is not None for b in model.blocks)
    if not has_tables and getattr(model, "rel_pos_bias", None) is None:
        return None
    if int(getattr(model, "num_prefix_tokens", 1)) != 1:
        raise ValueError("its relative position bias has entries for one [CLS] token only")
    return RelativeBias(model)
