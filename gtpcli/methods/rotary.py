"""Rotary position embeddings that follow the tokens (EVA-02, DINOv3, Perception Encoder, timm's RoPE ViTs).

A timm `Eva` model computes one rotary embedding for its full patch grid and hands it to every block. Once a
method removes or merges tokens, the rows no longer match the tokens. gtpcli keeps, per image, each token's
position in the rotary module's own coordinates, and evaluates the module's frequencies at those positions:
a token that stands for one patch keeps exactly its patch's angles, a token that absorbed others sits at the
centroid of the patches it holds, weighted as its method weighs their features (docs/positions.md).
Angles are linear in the coordinates, so the angles of the centroid are the weighted mean of the angles (a
mean of sines and cosines would not be a rotation).

Each supported module (axial `RotaryEmbeddingCat`, `RotaryEmbeddingDinoV3`, per-block `RotaryEmbeddingMixed`)
is re-evaluated here, and checked at patch time against the module's own embedding of the grid: a module this
code does not reproduce is refused in one line, never silently mis-rotated.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# sin/cos reproduced from the module's frequencies vs the module's own rows: they agree to the bit in float32
# (tests/test_positions.py); loose enough for rows cached in bfloat16 (a model cast with --dtype), tight
# enough for any mistake of grid, band or layout, which is of order one.
TOLERANCE = 1e-2


class Rotary:
    """A model's rotary embedding, evaluated at any positions (B, n, 2) of its image tokens."""

    kind = "axial"

    def __init__(self, module: nn.Module, grid_size: tuple[int, int]):
        self.module = module
        self.grid_size = tuple(int(s) for s in grid_size)
        self._grids: dict[torch.device, torch.Tensor] = {}

    def grid(self) -> torch.Tensor:
        """(H W, 2) coordinates of the patches, row-major, in the module's own units and channel order."""
        raise NotImplementedError

    def angles(self, coords: torch.Tensor, layer: int) -> torch.Tensor:
        """Angles per frequency (..., n, F) at coordinates (..., n, 2)."""
        raise NotImplementedError

    def embed(self, coords: torch.Tensor, layer: int) -> torch.Tensor:
        """[sin, cos] in the layout the attention applies, (B, 1, n, 2 d) (per head (B, H, n, 2 d) for mixed)."""
        angles = self.angles(coords.float(), layer)
        return torch.cat([_layout(angles.sin(), self.half), _layout(angles.cos(), self.half)], dim=-1)

    @property
    def half(self) -> bool:
        return bool(getattr(self.module, "rotate_half", False))

    def stock(self, layer: int) -> torch.Tensor:
        """The module's own embedding of the grid for this block, as timm's `Eva._pos_embed` asks for it."""
        rope = self.module
        if getattr(rope, "feat_shape", None) is not None:
            return rope.get_embed()
        return rope.get_embed(shape=list(self.grid_size))

    def check(self, depth: int) -> None:
        """Raise a one-line ValueError unless `embed` reproduces the module's rows for every block."""
        coords = self.grid()
        for layer in range(depth if self.kind == "mixed" else 1):
            stock = self.stock(layer)
            stock = stock[layer] if self.kind == "mixed" else stock
            ours = self.embed(coords.unsqueeze(0), layer)[0]
            ours = ours[0] if self.kind != "mixed" else ours
            if ours.shape != stock.shape or not torch.allclose(ours, stock.float(), atol=TOLERANCE, rtol=0):
                raise ValueError(f"gtpcli does not reproduce this {type(self.module).__name__} exactly, so it "
                                 "cannot move its rotary positions with the tokens")

    def initial(self, x: torch.Tensor, prefix: int) -> torch.Tensor:
        if x.device not in self._grids:
            self._grids[x.device] = self.grid().to(x.device)
        return at_grid(self._grids[x.device], x, prefix)


def at_grid(grid: torch.Tensor, x: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, N, 2) positions of the embedded tokens x (B, N, C): the patches' grid, prefix rows 0 (prefix
    tokens have no place on the grid)."""
    B = x.shape[0]
    return torch.cat([grid.new_zeros(B, prefix, 2), grid.unsqueeze(0).expand(B, -1, -1)], dim=1)


class AxialRotary(Rotary):
    """`RotaryEmbeddingCat` (EVA-02, PE, `vit_*_rope_*`): per axis, coordinate x band, bands shared by heads."""

    def grid(self) -> torch.Tensor:
        rope = self.module
        kind = getattr(rope, "grid_type", None) or ("pixel" if rope.in_pixels else "index")
        return _grid(self.grid_size, kind, rope.grid_indexing, rope.grid_offset, rope.ref_feat_shape,
                     getattr(rope, "normalize_coords", "separate"))

    def angles(self, coords, layer):
        bands = self.module.bands.float().to(coords.device)
        return (coords.unsqueeze(-1) * bands).flatten(-2).unsqueeze(-3)  # (B, 1, n, 2 F)


class DinoRotary(Rotary):
    """`RotaryEmbeddingDinoV3`: centred coordinates in [-1, 1], angle 2 pi x / period."""

    kind = "dinov3"

    def grid(self) -> torch.Tensor:
        rope = self.module
        return _grid(self.grid_size, "centered", rope.grid_indexing, rope.grid_offset, None, rope.normalize_coords)

    def angles(self, coords, layer):
        periods = self.module.periods.float().to(coords.device)
        return (2 * math.pi * coords.unsqueeze(-1) / periods).flatten(-2).unsqueeze(-3)


class MixedRotary(Rotary):
    """`RotaryEmbeddingMixed` (RoPE-Mixed): learned 2-D frequencies per block and head."""

    kind = "mixed"

    def grid(self) -> torch.Tensor:
        rope = self.module
        if getattr(rope, "t_x", None) is not None:
            return torch.stack([rope.t_x, rope.t_y], dim=-1).float()
        return _grid(self.grid_size, "index", rope.grid_indexing, 0.0, None, "separate")

    def angles(self, coords, layer):
        freqs = self.module.freqs[:, layer].float().to(coords.device)  # (2, H, F)
        t_x, t_y = coords[:, None, :, 0:1], coords[:, None, :, 1:2]  # (B, 1, n, 1)
        return t_x * freqs[0].unsqueeze(-2) + t_y * freqs[1].unsqueeze(-2)  # (B, H, n, F)


KINDS = {"RotaryEmbeddingCat": AxialRotary, "RotaryEmbeddingDinoV3": DinoRotary,
         "RotaryEmbeddingMixed": MixedRotary}


def rotary_of(model: nn.Module) -> Rotary | None:
    """The model's rotary embedding as a `Rotary`, None without one; a ValueError (one line) for a kind
    gtpcli cannot re-evaluate."""
    rope = getattr(model, "rope", None)
    if rope is None:
        return None
    kind = KINDS.get(type(rope).__name__)
    if kind is None:
        raise ValueError(f"its rotary embedding {type(rope).__name__} is not one gtpcli can move with the tokens "
                         f"(supported: {', '.join(KINDS)})")
    rotary = kind(rope, model.patch_embed.grid_size)
    if not _on_meta(rope):
        with torch.no_grad():
            rotary.check(len(model.blocks))
    return rotary


def _on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def _grid(size: tuple[int, int], kind: str, indexing: str, offset: float, ref, normalize: str) -> torch.Tensor:
    """timm's rotary coordinate grid (`_build_grid`): 'index' (i + offset, rescaled to `ref` as EVA does),
    'pixel' (even steps over [-1, 1]) or 'centered' ((i + 0.5 + offset) / size, mapped to [-1, 1], DINOv3);
    channels in `size` order for 'ij', swapped for 'xy'; (H W, 2), row-major."""
    shape = list(size)
    ref = list(ref) if ref is not None else None
    if indexing == "xy":
        shape = shape[::-1]
        ref = ref[::-1] if ref is not None else None
    if kind == "pixel":
        axes = [torch.linspace(-1.0, 1.0, steps=s, dtype=torch.float32) for s in shape]
    elif kind == "centered":
        denominators = {"max": [float(max(shape))] * 2, "min": [float(min(shape))] * 2}.get(
            normalize, [float(s) for s in shape])
        axes = [(torch.arange(0.5, s, dtype=torch.float32) + offset) / d for s, d in zip(shape, denominators)]
    else:
        axes = [torch.arange(s, dtype=torch.int64).to(torch.float32) + offset for s in shape]
    if ref is not None:
        axes = [t / f * r for t, f, r in zip(axes, shape, ref)]
    grid = torch.stack(torch.meshgrid(axes, indexing=indexing), dim=-1)
    if kind == "centered":
        grid = 2.0 * grid - 1.0
    return grid.reshape(-1, 2)


def _layout(values: torch.Tensor, half: bool) -> torch.Tensor:
    """Per-frequency values (..., F) in the (..., 2 F) layout of timm's `apply_rot_embed`: [f0, f1, .., f0,
    f1, ..] for rotate-half models, [f0, f0, f1, f1, ..] otherwise."""
    return torch.cat([values, values], dim=-1) if half else values.repeat_interleave(2, dim=-1)
