"""Today's backbones (docs/backbones.md), the smallest timm model of each family at a small input with random
weights, and every scheduled method: where it applies, P = 0 is stock timm, each block sees the tokens the
schedule says, and fvcore's MACs are the analytic model's; where it does not, the refusal is one line, and on
the command line one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from gtpcli import methods as registry
from gtpcli.cli import app
from gtpcli.errors import GtpcliError
from gtpcli.measure.flops import count_macs
from gtpcli.methods.patching import patch, unpatch
from gtpcli.models import backbones, families

runner = CliRunner()
SCHEDULED = ("gtp", "tome", "tcvit", "evit", "evo", "random")
REQUIRED = ("EVA-02", "RoPE ViT", "DINOv3", "Perception Encoder", "SigLIP", "BEiT", "DINOv2 + registers")


def ready(model):
    """Random weights whose blocks matter: layer scales (DINOv3's are 1e-5) and BEiT's bias tables (0 in
    timm) get values of order one."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("gamma_1", "gamma_2", ".gamma")):
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
            if name.endswith("relative_position_bias_table"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


def unread(method: str, arch, schedule: list[int], removals: list[int]) -> int:
    """MACs that run but that no output reads, which fvcore's trace drops: the last block's size update
    of GTP (and its positions', where attention reads positions) and the last fused position of EViT."""
    n, P = schedule[-1] - arch.prefix, removals[-1]
    if P == 0:
        return 0
    if method == "gtp":
        return (n - P) * P * (1 + (2 if arch.tracks_positions else 0))
    if method == "evit" and arch.tracks_positions:
        return 2 * n
    return 0


def test_the_required_families_are_in_the_table():
    assert set(REQUIRED) <= {f.name for f in families.FAMILIES}


@pytest.mark.slow
@pytest.mark.parametrize("family", families.FAMILIES, ids=[f.model for f in families.FAMILIES])
def test_each_method_that_applies_is_stock_at_p0_follows_its_schedule_and_counts_as_the_analytic_model(family):
    torch.manual_seed(0)
    try:
        model = ready(backbones.create(family.model, img_size=family.img_size))
    except GtpcliError as exc:  # a model gtpcli does not take at all (NaFlexViT): one line saying why
        assert family.name == "NaFlexViT" and "\n" not in str(exc) and "no blocks/patch_embed" in str(exc)
        return
    images = torch.randn(2, 3, family.img_size, family.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.forward_features(images)
    assert reference.abs().mean() > 0.05  # not a comparison of near-zero tensors
    ran = []
    for method in SCHEDULED:
        try:
            patch(model, method, P=0)
        except ValueError as exc:  # GtpcliError included
            assert "\n" not in str(exc) and method in ("tcvit", "evit", "evo"), (method, str(exc))
            assert "[CLS]" in str(exc)
            continue
        with torch.no_grad():
            assert torch.allclose(model.forward_features(images), reference, atol=1e-6, rtol=0), method
        patch(model, method, P=1)
        entering = []  # tokens each block's attention sees (Evo-ViT selects inside the block: norm1's input)
        hooks = [b.norm1.register_forward_pre_hook(lambda m, args: entering.append(args[0].shape[1]))
                 for b in model.blocks]
        with torch.no_grad():
            model(images)
        for hook in hooks:
            hook.remove()
        red = model.reduction
        assert entering == red.schedule(), method
        arch = backbones.arch_of(model)
        count = count_macs(model, images[:1])
        analytic = (sum(registry.backbone_macs(arch, method, red.removals, {}).values())
                    + registry.implemented_overhead(arch, method, red.removals, {}))
        norms = count.macs - count.matmul_macs
        assert count.uncounted == []
        assert count.flop_counter_macs + norms == analytic, method  # what runs, op by op
        assert count.macs == analytic - unread(method, arch, red.schedule(), red.removals), method
        ran.append(method)
        unpatch(model)
    assert {"gtp", "tome"} <= set(ran)
    if getattr(model, "cls_token", None) is not None:
        assert set(ran) == set(SCHEDULED)


def test_stock_macs_of_every_family_are_the_analytic_models():
    """The backbone alone (no method) for the required families, quick enough for every run."""
    for family in families.FAMILIES:
        if family.name not in ("EVA-02", "Perception Encoder", "DINOv3"):
            continue
        model = backbones.create(family.model, img_size=family.img_size)
        arch = backbones.arch_of(model)
        count = count_macs(model, torch.randn(1, 3, family.img_size, family.img_size))
        assert count.macs == sum(registry.backbone_macs(arch, "stock", [0] * arch.L).values()), family.name


@pytest.mark.parametrize("args, message", [
    (["vit_base_patch16_siglip_224", "--method", "evit"], "evit needs a [CLS] token"),
    (["vit_pe_core_tiny_patch16_384", "--method", "tpc"], "has no [CLS] token read by its head"),
    (["vit_small_patch16_rope_224", "--method", "tpc"], "TPC-ViT's gathered and packed executions"),
])
def test_a_method_that_cannot_apply_is_one_line_and_exit_2(tmp_path, args, message):
    extra = [] if "tpc" in args else ["--P", "1"]
    result = runner.invoke(app, ["profile", *args, *extra, "--no-speed", "--img-size", "64",
                                 "-o", str(tmp_path / "out.json")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_siglip_with_gtp_and_tome_profiles_without_a_traceback(tmp_path):
    """The issue's traceback: the attention-pool head under FlopCounterMode."""
    out = tmp_path / "siglip.json"
    result = runner.invoke(app, ["profile", "vit_base_patch16_siglip_224", "--method", "gtp,tome", "--P", "0,1",
                                 "--no-speed", "--img-size", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = {(r["method"], r["P"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) >= {("gtp", 0), ("gtp", 1), ("tome", 0), ("tome", 1)}
    for (method, P), row in rows.items():
        # 16 image tokens, no prefix: GTP's last block has 16 - 11 = 5, keeps 4 and updates their sizes unread
        assert row["macs"] == row["analytic_macs"] - (4 if (method, P) == ("gtp", 1) else 0), row
        assert not [w for w in row["warnings"] if "MACs" in w], row["warnings"]


def test_the_families_table_is_what_running_the_methods_gives(monkeypatch):
    eva = next(f for f in families.FAMILIES if f.name == "EVA-02")
    monkeypatch.setattr(families, "FAMILIES", (eva,))
    result = runner.invoke(app, ["profiles", "--families", "-f", "json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    row = found["rows"][0]["methods"]
    assert all(row[m]["runs"] for m in SCHEDULED + ("ats",))  # EVA-02 has a [CLS] token
    assert row["gtp"]["tokens"][0] == 16 + 1 and row["gtp"]["tokens"][-1] == 16 + 1 - 11
    assert not row["tpc"]["runs"] and "[CLS]" in row["tpc"]["why"]
    assert found["refusals"] == [row["tpc"]["why"]]
