"""The `resolution` baseline (gtpcli/models/resolution.py): the stock model at a smaller input size, its
position embeddings resampled as timm resamples them; at full size, the stock model exactly."""

from __future__ import annotations

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from gtpcli.cost.solve import resolution, stock_macs
from gtpcli.errors import GtpcliError
from gtpcli.measure.flops import count_macs
from gtpcli.models import backbones
from gtpcli.models.resolution import at_input_size


def test_full_size_is_the_stock_model_exactly(small_vit, image):
    resized = at_input_size(small_vit, 64)
    assert torch.equal(resized.pos_embed, small_vit.pos_embed)
    x = image(small_vit, batch=2)
    with torch.no_grad():
        assert torch.equal(resized(x), small_vit(x))


@pytest.mark.parametrize("name,prefix", [("small_vit", 1), ("reg_vit", 5)])
def test_position_embeddings_are_timms_resampling(name, prefix, request):
    """8 x 8 patches down to 5 x 5: the prefix tokens' embeddings kept, the grid's resampled as timm's
    resample_abs_pos_embed does; the stock model is left as it was."""
    model = request.getfixturevalue(name)
    before = model.pos_embed.detach().clone()
    resized = at_input_size(model, 40)
    expected = resample_abs_pos_embed(before, new_size=[5, 5], old_size=[8, 8], num_prefix_tokens=prefix)
    assert resized.pos_embed.shape == (1, 25 + prefix, model.embed_dim)
    assert torch.equal(resized.pos_embed, expected) and torch.equal(model.pos_embed, before)
    assert torch.equal(resized.pos_embed[:, :prefix], before[:, :prefix])
    assert tuple(resized.patch_embed.img_size) == (40, 40) and tuple(model.patch_embed.img_size) == (64, 64)


def test_logits_equal_timms_dynamic_image_size(small_vit, image):
    """The same weights in timm's dynamic_img_size model, which resamples on every forward, give the same
    logits on 40 x 40 images."""
    dynamic = VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10,
                                dynamic_img_size=True).eval()
    dynamic.load_state_dict(small_vit.state_dict())
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (at_input_size(small_vit, 40)(x) - dynamic(x)).abs().max().item() <= 1e-6


def test_the_solved_size_costs_what_the_cost_model_says(small_vit):
    """Half the stock cost on the 8 x 8-patch test ViT: fvcore counts the resized model's MACs as solved."""
    arch = backbones.arch_of(small_vit)
    found = resolution(arch, stock_macs(arch) // 2)
    assert found.value < 64 and found.value % 8 == 0
    resized = at_input_size(small_vit, found.value)
    assert count_macs(resized, torch.randn(1, 3, found.value, found.value)).macs == found.macs


@pytest.mark.parametrize("size", [0, 36, 7])
def test_a_size_off_the_patch_grid_is_one_line(small_vit, size):
    with pytest.raises(GtpcliError, match="multiple of the patch size 8"):
        at_input_size(small_vit, size)


def test_a_sweep_point_at_its_own_input_size_runs_on_a_resized_copy(small_vit):
    """The general capability `compare`'s resolution row uses: any point whose setting carries an input size
    (the stock model, or a method) is measured and timed on a resized copy, at that size, with the stock
    model at its own size in the same rounds; the shared model is left at its size."""
    import copy

    from gtpcli.cost import analytic
    from gtpcli.measure import speed, sweep

    model = copy.deepcopy(small_vit)
    cfg = sweep.SweepConfig(model="small", timm_name="small", profile=None, methods=["gtp"], Ps=[],
                            timing=speed.Timing(batch_size=2, warmup=0, runs=2, rounds=2),
                            only=[("stock", 0, {"img_size": 40}), ("gtp", 2, {"img_size": 40}), ("gtp", 2, {})])
    rows = sweep.run(cfg, [], lambda rows: None, lambda label: None, lambda text: None, model=model)
    stock, small, small_gtp, gtp = rows
    assert [r["img_size"] for r in rows] == [64, 40, 40, 64]
    assert small["macs"] == count_macs(at_input_size(small_vit, 40), torch.randn(1, 3, 40, 40)).macs
    assert small_gtp["tokens"] == analytic.token_schedule(26, 4, 2, 1) and "img_size" not in small_gtp["hparams"]
    assert gtp["tokens"] == analytic.token_schedule(65, 4, 2, 1)
    assert all(r["rounds"] == 2 and r["img_s"] > 0 for r in rows)
    assert small["macs"] < stock["macs"] and tuple(model.patch_embed.img_size) == (64, 64)
