"""Every backbone of the paper: profiles agree with the models they build, MACs agree with the analytic
model and with the paper's tables, and LV-ViT is the architecture its authors released."""

import pytest
import torch
import torch.nn.functional as F

from gtpcli.cost import analytic as A
from gtpcli.models import backbones
from gtpcli.models.lvvit import lvvit_m, lvvit_s
from gtpcli.measure.flops import count_macs
from gtpcli.models.profiles import builtin_names, load_profile
from gtpcli.config.ranges import parse_values
from gtpcli.methods.patching import patch, unpatch


def model_of(name):
    profile = load_profile(name)
    return profile, backbones.create(profile.model["timm"], **backbones.constructor_kwargs(profile))


@pytest.mark.slow
@pytest.mark.parametrize("name", builtin_names())
def test_profile_describes_its_model_and_macs_match_the_analytic_model(name):
    profile, model = model_of(name)
    assert backbones.arch_of(model) == profile.arch
    Ps = parse_values(profile.P)
    assert max(Ps) <= (8 if profile.arch.L == 24 else 50)
    image = torch.randn(1, 3, *backbones.image_size(model))
    count = count_macs(model, image)
    assert count.macs == sum(A.backbone_macs(profile.arch, 0).values())
    assert count.uncounted == []


def paper_rows(name):
    reference = next(r for r in load_profile(name).reference if "gmacs" in r)
    return list(zip(reference["P"], reference["gmacs"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lvvit_s", "lvvit_m", "vit_medium_gap", "deit_b"])
def test_gtp_gmacs_follow_the_papers_table_within_0_1(name):
    _, model = model_of(name)
    image = torch.randn(1, 3, *backbones.image_size(model))
    for P, paper in paper_rows(name):
        patch(model, "gtp", P=P)
        gmacs = count_macs(model, image).macs / 1e9
        assert abs(gmacs - paper) <= 0.1, (name, P, gmacs, paper)
        unpatch(model)


def expected_lvvit_keys(depth):
    """The parameter names of the authors' released LV-ViT checkpoints."""
    keys = {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias",
            "aux_head.weight", "aux_head.bias", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in (1, 2, 3):
        keys.add(f"patch_embed.conv{i}.weight")
        keys |= {f"patch_embed.bn{i}.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for b in range(depth):
        keys |= {f"blocks.{b}.{p}" for p in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
                                              "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                                              "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    return keys


@pytest.mark.parametrize("build, depth, dim", [(lvvit_s, 16, 384), (lvvit_m, 20, 512)])
def test_lvvit_has_the_released_checkpoint_layout(build, depth, dim):
    state = build().state_dict()
    assert set(state) == expected_lvvit_keys(depth)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * dim, dim)
    assert state["blocks.0.mlp.fc1.weight"].shape == (3 * dim, dim)
    assert state["patch_embed.conv1.weight"].shape == (64, 3, 7, 7)
    assert state["patch_embed.proj.weight"].shape == (dim, 64, 8, 8)
    assert state["pos_embed"].shape == (1, 197, dim)


def authors_layer_norm(x, norm):
    """The authors' nn.LayerNorm, written out with its eps of 1e-5 (not the model's own module)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias


@pytest.mark.parametrize("build", [lvvit_s, lvvit_m])
def test_lvvit_forward_by_hand(build):
    """Residual branches divided by 2, every LayerNorm with eps 1e-5 as in the authors' code, and
    logits = head(CLS) + 0.5 * max over tokens of aux_head; in float64 so that an eps of 1e-6 shows."""
    torch.manual_seed(0)
    model = build(depth=2).eval().double()
    image = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        stem = model.patch_embed
        x = F.relu(stem.bn1(stem.conv1(image)))
        x = F.relu(stem.bn2(stem.conv2(x)))
        x = F.relu(stem.bn3(stem.conv3(x)))
        x = stem.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token, x], dim=1) + model.pos_embed
        for block in model.blocks:
            x = x + block.attn(authors_layer_norm(x, block.norm1)) / 2
            x = x + block.mlp(authors_layer_norm(x, block.norm2)) / 2
        x = authors_layer_norm(x, model.norm)
        expected = model.head(x[:, 0]) + 0.5 * model.aux_head(x[:, 1:]).max(dim=1).values
        assert (model(image) - expected).abs().max().item() <= 1e-10


@pytest.mark.parametrize("method", ["gtp", "tome"])
def test_reduction_on_lvvit_keeps_p0_and_follows_the_schedule(method):
    torch.manual_seed(0)
    model = lvvit_s(depth=4).eval()
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        stock = model(image)
        patch(model, method, P=0)
        assert (model(image) - stock).abs().max() <= 1e-5
        seen = []
        hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in model.blocks]
        model.reduction.P = 12
        assert model(image).shape == (2, 1000)
        assert seen == [197, 185, 173, 161]
        for h in hooks:
            h.remove()
