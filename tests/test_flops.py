"""MAC counting does not depend on the torch release: FlopCounterMode is given the attention formulas
some releases lack (2.14.1 counts 0 FLOPs for CPU `scaled_dot_product_attention`), and fvcore and
FlopCounterMode agree to the MAC with counts made by hand."""

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from gtpcli import methods as registry
from gtpcli.cost import analytic as A
from gtpcli.models import backbones
from gtpcli.measure import flops
from gtpcli.measure.flops import count_macs, flop_counter_macs
from gtpcli.methods.patching import patch

B, H, NQ, NK, D = 2, 3, 10, 12, 8
ATTENTION_MACS = B * H * NQ * NK * (D + D)  # Q K^T and A V


class SDPA(nn.Module):
    def __init__(self, mask: bool):
        super().__init__()
        self.mask = mask

    def forward(self, q):
        k = v = torch.ones(B, H, NK, D)
        bias = torch.zeros(B, 1, 1, NK) if self.mask else None  # as proportional attention passes it
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@pytest.mark.parametrize("mask", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("grad", ["inference_mode", "no_grad", "enable_grad"])
def test_flop_counter_counts_cpu_attention_by_hand(mask, grad):
    counter = FlopCounterMode(display=False, custom_mapping=flops.missing_flop_formulas())
    with getattr(torch, grad)(), counter:
        SDPA(mask)(torch.randn(B, H, NQ, D))
    assert counter.get_total_flops() == 2 * ATTENTION_MACS


def test_one_timm_attention_by_hand_in_both_counters():
    C, N, heads = 32, 17, 4
    attn = Attention(C, num_heads=heads, qkv_bias=True).eval()
    attn.fused_attn = True  # the kernel stock timm uses, the one FlopCounterMode missed on CPU
    x = torch.randn(1, N, C)
    by_hand = N * C * 3 * C + N * N * (C // heads) * 2 * heads + N * C * C  # qkv, attention, proj
    assert flop_counter_macs(attn, x) == by_hand
    count = count_macs(attn, x)
    assert count.macs == by_hand
    assert count.counters_disagree == 0


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=10).eval()


@pytest.mark.parametrize("method", ["stock", "gtp", "tome", "tcvit"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_fvcore_and_flop_counter_agree_on_a_patched_tiny_vit(method, fused):
    model = tiny_vit()
    for block in model.blocks:
        block.attn.fused_attn = fused
    removals = [0] * 4
    if method != "stock":
        patch(model, method, P=6)
        removals = model.reduction.removals
    count = count_macs(model, torch.randn(1, 3, 64, 64))
    assert count.uncounted == []
    arch = backbones.arch_of(model)
    overhead = registry.implemented_overhead(arch, method, removals)
    analytic = sum(A.backbone_macs(arch, removals).values()) + overhead
    norms = count.macs - count.matmul_macs
    assert count.flop_counter_macs + norms == analytic  # what runs, op by op
    # fvcore counts a jit trace, which drops work no output depends on: GTP's last size update
    # (Eq. 12 in the last layer, (N_L - prefix - P) x P MACs) runs but is never read.
    unread = (model.reduction.schedule()[-1] - arch.prefix - removals[-1]) * removals[-1] if method == "gtp" else 0
    assert count.flop_counter_macs - count.matmul_macs == unread
    assert count.macs == analytic - unread


def test_formulas_fill_gaps_only_and_skip_ops_this_torch_lacks(monkeypatch):
    missing = flops.missing_flop_formulas()
    assert not set(missing) & set(flop_registry)  # never a second formula for an op torch counts
    monkeypatch.setattr(flops, "ATTENTION_OPS", flops.ATTENTION_OPS + ("no_such_attention_op",))
    assert flops.missing_flop_formulas() == missing


def test_formula_takes_tensors_or_shapes_and_any_output_keyword():
    q, k, v = torch.empty(2, 3, 10, 8), torch.empty(2, 1, 12, 8), torch.empty(2, 1, 12, 4)  # grouped-query
    expected = 2 * 2 * 3 * 10 * 12 * (8 + 4)
    assert flops.sdpa_flops(q, k, v, out_val=None) == expected
    assert flops.sdpa_flops(q.shape, k.shape, v.shape, None, 0.0, out_shape=(2, 3, 10, 4)) == expected
    assert flops.sdpa_flops(q, k, v, out=torch.empty(2, 3, 10, 4), scale=0.5) == expected


def test_a_flop_counter_that_saw_nothing_is_a_full_disagreement_not_a_skipped_check():
    assert flops.MacCount(100, {"linear": 100}, flop_counter_macs=0).counters_disagree == 1.0
    assert flops.MacCount(0, {}, flop_counter_macs=0).counters_disagree == 0.0
    assert flops.MacCount(100, {"linear": 100}).counters_disagree is None  # not measured
