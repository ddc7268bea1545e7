"""Token positions follow the tokens (docs/positions.md), pinned on tiny timm Eva (rotary) and BEiT
(relative position bias) models.

The dense reference: each token's sources, a row of weights over the embedded tokens, carried through the
method's own reduction as extra feature channels. Features and sources then move by the same rule, so a
token's expected position is the weighted centroid of its sources' patches (sources @ grid / sources' total).
The rotary embedding the next block applies must be the module's frequencies at that position: exactly the
stock row of its patch for a token that holds one patch, hand-computed angles for one that holds several;
BEiT's bias must be its table read by hand at the pair's offset.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.eva import Eva

from gtpcli.methods import rotary as R
from gtpcli.methods.patching import patch, unpatch

GRID = 4  # 4 x 4 patches


def tiny_eva(seed: int = 0, **kwargs) -> Eva:
    """[CLS] + 16 patches, 3 blocks, axial rotary embeddings on an integer grid, layer scales that matter."""
    torch.manual_seed(seed)
    options = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10,
                   use_abs_pos_emb=False, use_rot_pos_emb=True, init_values=1.0)
    model = Eva(**(options | kwargs)).eval()
    with torch.no_grad():
        for block in model.blocks:
            for gamma in (block.gamma_1, block.gamma_2):
                if gamma is not None:
                    gamma.copy_(0.5 + torch.rand(gamma.shape))
            block.attn.qkv.weight.mul_(4.0)  # peaked attention: rankings decided by the weights, not rounding
    return model


def grid_coordinates() -> torch.Tensor:
    """(16, 2) (row, col) of each patch, row-major: the 'index' grid of an 'ij' axial embedding, by hand."""
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    return torch.stack([rows, cols], dim=-1).reshape(-1, 2).float()


def angles_by_hand(model: Eva, coords: torch.Tensor) -> torch.Tensor:
    """[sin, cos] for coordinates (B, n, 2): per axis coordinate x band, each angle twice (interleaved)."""
    bands = model.rope.bands.float()
    theta = torch.cat([coords[..., :1] * bands, coords[..., 1:] * bands], dim=-1)
    theta = theta.repeat_interleave(2, dim=-1)
    return torch.cat([theta.sin(), theta.cos()], dim=-1)


def follow(model, method: str, **hparams):
    """Patch; wrap the reduction so that every reduce also carries the sources, and record per layer the
    sources after it, the positions it left, and the rotary embedding each block applied."""
    patch(model, method, **hparams)
    red = model.reduction
    seen = {"sources": {}, "positions": {}, "rope": {}, "current": None}
    reduce, rope, start = red.reduce, red.rope, red.start

    def start_again(x):
        seen["current"] = torch.eye(x.shape[1]).expand(x.shape[0], -1, -1)  # each token holds its own patch
        start(x)

    def reduce_with_sources(layer, x, attention, keys):
        carried = torch.cat([x, seen["current"]], dim=-1)
        out = reduce(layer, carried, attention, keys)
        x_new, seen["current"] = out[..., : x.shape[-1]], out[..., x.shape[-1]:]
        seen["sources"][layer] = seen["current"].clone()
        seen["positions"][layer] = red.positions.clone()
        return x_new

    def rope_seen(layer, stock):
        found = rope(layer, stock)
        seen["rope"][layer] = None if found is None else found.clone()
        return found

    red.reduce, red.rope, red.start = reduce_with_sources, rope_seen, start_again
    return seen


@pytest.mark.parametrize("method, hparams", [
    ("tome", dict(P=3)),
    ("gtp", dict(P=3, alpha=0.5)),        # propagation strong enough to move positions visibly
    ("evit", dict(P=3)),                  # P + 1 tokens fused into one per block
    ("tcvit", dict(P=3, alpha=5.0)),
])
def test_positions_are_the_centroid_of_the_sources_and_the_rope_their_angles(method, hparams):
    model = tiny_eva()
    seen = follow(model, method, **hparams)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    grid = torch.cat([torch.zeros(1, 2), grid_coordinates()])  # [CLS] first: its row is never used
    p = model.reduction.prefix
    merged_somewhere = False
    for layer, sources in seen["sources"].items():
        image = sources[:, p:]
        expected = (image @ grid) / image.sum(dim=-1, keepdim=True)
        assert torch.allclose(seen["positions"][layer][:, p:], expected, atol=1e-5)
        single = (image > 0).sum(dim=-1) == 1  # a token that holds one patch
        merged_somewhere |= bool((~single).any())
        if layer + 1 == len(model.blocks):
            continue
        applied = seen["rope"][layer + 1]  # the next block applies the module's frequencies at these positions
        origin = image.argmax(dim=-1) - p
        assert torch.equal(applied[:, 0][single], model.rope.get_embed()[origin[single]])  # its own row, exactly
        assert torch.allclose(applied[:, 0], angles_by_hand(model, expected), atol=1e-5)
    assert merged_somewhere  # the test saw tokens that absorbed others, not only kept ones
    assert set(seen["rope"]) == {0, 1, 2} and seen["rope"][0] is not None


def test_positions_start_again_with_each_batch():
    model = tiny_eva()
    patch(model, "tome", P=3)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        first = model(images)
        model(torch.randn(1, 3, 32, 32))
        again = model(images)
    assert torch.equal(first, again)


@pytest.mark.parametrize("kind, kwargs", [
    ("axial", dict()),
    ("axial xy, offset, rescaled", dict(rope_grid_indexing="xy", rope_grid_offset=1.0, ref_feat_shape=(6, 6))),
    ("dinov3", dict(rope_type="dinov3", rope_temperature=100, rope_rotate_half=True, dynamic_img_size=True)),
    ("mixed", dict(rope_type="mixed", attn_type="rope", rope_temperature=10.0, rope_grid_indexing="xy")),
])
def test_every_supported_module_is_reproduced_exactly_and_p0_is_stock(kind, kwargs):
    model = tiny_eva(**kwargs)
    rotary = R.rotary_of(model)
    depth = len(model.blocks)
    for layer in range(depth if rotary.kind == "mixed" else 1):
        stock = rotary.stock(layer)
        stock = stock[layer] if rotary.kind == "mixed" else stock
        ours = rotary.embed(rotary.grid().unsqueeze(0), layer)[0]
        assert torch.equal(ours if rotary.kind == "mixed" else ours[0], stock)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model.forward_features(images)
        for method in ("gtp", "tome", "evit", "tcvit", "evo", "random"):
            patch(model, method, P=0)
            assert torch.equal(model.forward_features(images), reference), method
            patch(model, method, P=2)
            assert model(images).isfinite().all(), method
        unpatch(model)
    assert reference.abs().mean() > 0.1  # the comparison is not between near-zero tensors


def test_a_module_gtpcli_does_not_reproduce_is_refused_in_one_line():
    model = tiny_eva()
    with torch.no_grad():
        model.rope.bands.mul_(1.5)  # the cached rows no longer follow the bands
    with pytest.raises(ValueError, match="does not reproduce this RotaryEmbeddingCat") as caught:
        patch(model, "tome", P=2)
    assert "\n" not in str(caught.value)


def test_an_unknown_rotary_module_is_refused_in_one_line():
    model = tiny_eva()
    model.rope.__class__ = type("RotaryEmbeddingSomethingNew", (type(model.rope),), {})
    with pytest.raises(ValueError, match="RotaryEmbeddingSomethingNew is not one gtpcli can move") as caught:
        patch(model, "gtp", P=2)
    assert "\n" not in str(caught.value)


def test_a_method_that_does_not_move_positions_is_refused_on_rotary_models():
    from gtpcli.methods.blocks import Reduction

    class Unaware(Reduction):
        method = "unaware"

    with pytest.raises(ValueError, match="unaware does not move"):
        Unaware(tiny_eva(), P=1)


# --- BEiT: the relative position bias read at the tokens' offsets ----------------------------------------

def tiny_beit(seed: int = 0, **kwargs):
    """[CLS] + 16 patches, 3 blocks with their own relative position bias tables, random (timm's are 0)."""
    from timm.models.beit import Beit

    torch.manual_seed(seed)
    options = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10,
                   use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1.0)
    model = Beit(**(options | kwargs)).eval()
    with torch.no_grad():
        for owner in [b.attn for b in model.blocks] + ([model.rel_pos_bias] if model.rel_pos_bias is not None else []):
            if owner.relative_position_bias_table is not None:
                owner.relative_position_bias_table.normal_(0, 1)
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4.0)
    return model


def bias_by_hand(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) for positions (B, N, 2), [CLS] first, one pair at a time: the table's entry for the
    offset, bilinear between the four around a fractional one; [CLS]'s three entries last in the table."""
    import math

    B, N, _ = positions.shape
    size = 2 * GRID - 1
    out = torch.empty(B, table.shape[1], N, N)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                if i == 0 or j == 0:
                    out[b, :, i, j] = table[-1 if i == j == 0 else (-3 if i == 0 else -2)]
                    continue
                dr, dc = (positions[b, i] - positions[b, j] + GRID - 1).tolist()
                r0, c0 = math.floor(dr + 1e-9), math.floor(dc + 1e-9)
                fr, fc = dr - r0, dc - c0
                r1, c1 = min(r0 + 1, size - 1), min(c0 + 1, size - 1)
                at = lambda r, c: table[r * size + c]
                out[b, :, i, j] = ((1 - fr) * (1 - fc) * at(r0, c0) + (1 - fr) * fc * at(r0, c1)
                                   + fr * (1 - fc) * at(r1, c0) + fr * fc * at(r1, c1))
    return out


@pytest.mark.parametrize("method, hparams", [  # without proportional attention: the bias is BEiT's alone
    ("tome", dict(P=3, prop_attn=False)),
    ("gtp", dict(P=3, alpha=0.5, prop_attn=False)),
    ("evit", dict(P=3)),
])
def test_beit_bias_is_the_table_at_the_centroids_offsets(method, hparams):
    model = tiny_beit()
    seen = follow(model, method, **hparams)
    red = model.reduction
    biases, bias = {}, red.bias
    red.bias = lambda attn=None, shared=None: biases.setdefault(len(biases), bias(attn, shared))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    grid = torch.cat([torch.zeros(1, 2), grid_coordinates()])
    fractional = False
    for layer, sources in seen["sources"].items():
        image = sources[:, 1:]
        expected = torch.cat([torch.zeros(2, 1, 2), (image @ grid) / image.sum(dim=-1, keepdim=True)], dim=1)
        assert torch.allclose(seen["positions"][layer], expected, atol=1e-5)
        fractional |= bool((expected != expected.round()).any())
        if layer + 1 < len(model.blocks):
            table = model.blocks[layer + 1].attn.relative_position_bias_table
            assert torch.allclose(biases[layer + 1], bias_by_hand(table, expected), atol=1e-5)
    assert fractional  # some token sat between patches


def test_beit_kept_tokens_get_beits_own_entries_and_p0_is_stock():
    model = tiny_beit(use_rel_pos_bias=False, use_shared_rel_pos_bias=True)  # BEiT v2's one shared table
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model.forward_features(images)
        for method in ("gtp", "tome", "evit", "tcvit", "evo", "random"):
            patch(model, method, P=0)
            assert torch.equal(model.forward_features(images), reference), method
        patch(model, "tome", P=3)
        positions = torch.cat([torch.zeros(1, 1, 2), grid_coordinates().unsqueeze(0)], dim=1)
        relative = model.reduction.relative
        stock = relative.bias(model.blocks[0].attn, model.rel_pos_bias(), None)  # what BEiT itself adds
        assert torch.equal(relative.at(model.rel_pos_bias.relative_position_bias_table, positions)[0], stock)
    assert reference.abs().mean() > 0.1
