"""GTP's training-free baselines (specs/baselines.md): EViT and Evo-ViT against their definitions worked out by
hand on crafted inputs and written out step by step on real blocks, their token counts and GMACs against the
analytic model, fvcore and the bins of GTP's Tables 8/9."""

from __future__ import annotations

import pytest
import torch
from test_tcvit import hand_attention

import gtpcli
from gtpcli import analytic as A
from gtpcli import backbones
from gtpcli import methods as registry
from gtpcli.errors import GtpcliError
from gtpcli.measure.flops import count_macs
from gtpcli.methods import evit as E
from gtpcli.methods import evo as V

DEIT_S = A.Arch(N=197, C=384, L=12, H=6)
DEIT_B = A.Arch(N=197, C=768, L=12, H=12)


def analytic_macs(model, method, hparams=None):
    arch = backbones.arch_of(model)
    removals = model.reduction.removals
    return (sum(registry.backbone_macs(arch, method, removals, hparams).values())
            + A.implemented_overhead(arch, method, removals, hparams))


# --- EViT -------------------------------------------------------------------------------------------

def test_evit_step_by_hand_on_five_tokens():
    """a = (.1, .4, .05, .3, .15), keep 3: tokens 1, 3, 4 in descending attentiveness, then
    0.1 x_0 + 0.05 x_2 (raw weights, not normalised)."""
    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [3.0, -1.0], [-2.0, 4.0]]])
    a = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])
    out, keep = E.select_and_fuse(x, a, kept=3, prefix=1, fuse_token=True)
    assert keep.tolist() == [[1, 3, 4]]
    expected = [[9.0, 9.0], [0.0, 1.0], [3.0, -1.0], [-2.0, 4.0], [0.1 * 1 + 0.05 * 2, 0.1 * 0 + 0.05 * 2]]
    assert torch.allclose(out[0], torch.tensor(expected))
    pruned, _ = E.select_and_fuse(x, a, kept=3, prefix=1, fuse_token=False)
    assert torch.equal(pruned, out[:, :4])


def test_evit_keep_rate_schedule_by_hand():
    """DeiT-S, k = 0.7 at blocks 3, 6, 9: 196 -> ceil(137.2) = 138 kept + 1 fused = 139; ceil(97.3) = 98 + 1
    = 99; ceil(69.3) = 70 + 1 = 71. Without fusion 196 -> 138 -> 97 -> 68."""
    assert E.keep_rate_removals(DEIT_S, 0.7, "3,6,9") == [0, 0, 0, 57, 0, 0, 40, 0, 0, 28, 0, 0]
    assert E.keep_rate_removals(DEIT_S, 0.7, "3,6,9", fuse_token=False) == [0, 0, 0, 58, 0, 0, 41, 0, 0, 29, 0, 0]
    assert E.keep_rate_removals(DEIT_S, 1.0, "3,6,9") == [0] * 12


@pytest.mark.parametrize("kwargs", [{"keep_rate": 0.6, "drop_loc": "1,2"}, {"P": [5, 0, 7, 3]},
                                    {"keep_rate": 0.5, "drop_loc": "0,2", "fuse_token": False}])
def test_evit_every_block_against_the_hand_written_step(kwargs, small_vit, fresh, image, record_blocks):
    """From each block's recorded input: attention, a = head mean of the [CLS] row, the top ceil(k n) (or
    n - P - 1) by a in descending order, the rest summed with weights a, then the MLP."""
    model = gtpcli.patch(fresh(small_vit), "evit", **kwargs)
    removals = model.reduction.removals
    fuse = kwargs.get("fuse_token", True)
    with torch.no_grad(), record_blocks(model) as rec:
        model(image(model, batch=2, seed=3))
        for layer, block in enumerate(model.blocks):
            x_in, got = rec["inputs"][layer], rec["outputs"][layer]
            for b in range(2):
                out, weights = hand_attention(block.attn, block.norm1(x_in[b]))
                x = x_in[b] + block.ls1(out)
                if removals[layer]:
                    a = weights[:, 0, 1:].mean(dim=0).tolist()
                    n = len(a)
                    kept = (E.kept_count(kwargs["keep_rate"], n) if "keep_rate" in kwargs
                            else n - kwargs["P"][layer] - 1)
                    order = sorted(range(n), key=lambda j: -a[j])
                    tokens = [x[0]] + [x[1 + j] for j in order[:kept]]
                    if fuse:
                        tokens.append(sum(a[j] * x[1 + j] for j in order[kept:]))
                    x = torch.stack(tokens)
                    assert model.reduction.kept[layer][b].tolist() == order[:kept]
                x = x + block.ls2(block.mlp(block.norm2(x)))
                assert got.shape[1] == x.shape[0] == A.token_schedule(65, 4, removals)[layer] - removals[layer]
                assert (got[b] - x).abs().max().item() <= 1e-4


def test_evit_p0_and_keep_rate_1_are_the_stock_model(small_vit, fresh, image):
    x = image(small_vit, batch=2)
    with torch.no_grad():
        stock = small_vit(x)
        for kwargs in ({"P": 0}, {"keep_rate": 1.0, "drop_loc": "0,1,2,3"}):
            assert torch.equal(gtpcli.patch(fresh(small_vit), "evit", **kwargs)(x), stock)


@pytest.mark.parametrize("method", ["evit", "evo"])
def test_models_without_cls_are_refused_in_one_line(method, small_gap_vit, fresh):
    with pytest.raises(GtpcliError, match=r"\[CLS\]"):
        gtpcli.patch(fresh(small_gap_vit), method)


@pytest.mark.parametrize("method,kwargs,message", [
    ("evit", {"drop_loc": "3,x"}, "block indices"), ("evit", {"drop_loc": "4"}, "has 4"),
    ("evit", {"keep_rate": 0}, "> 0"), ("evo", {"stages": "0"}, "between 1 and 3"),
    ("evo", {"keep_ratio": 0.01, "stages": "2"}, "keeps no image token")])
def test_bad_settings_are_one_line_errors(method, kwargs, message, small_vit, fresh):
    with pytest.raises(GtpcliError, match=message):
        gtpcli.patch(fresh(small_vit), method, **kwargs)


@pytest.mark.parametrize("method,kwargs", [
    ("evit", {"keep_rate": 0.6, "drop_loc": "1,2"}), ("evit", {"P": 5}), ("evit", {"P": 5, "fuse_token": False}),
    ("evo", {"keep_ratio": 0.4, "stages": "1,3"}), ("evo", {"P": 6})])
def test_fvcore_counts_the_analytic_model_exactly(method, kwargs, small_vit, fresh):
    model = gtpcli.patch(fresh(small_vit), method, **kwargs)
    count = count_macs(model, torch.randn(1, 3, 64, 64))
    hparams = {k: v for k, v in kwargs.items() if k != "P"}
    assert count.uncounted == []
    assert count.macs == analytic_macs(model, method, hparams)
    assert count.flop_counter_macs == count.matmul_macs


# --- Evo-ViT ----------------------------------------------------------------------------------------

def hand_evo(model, stock_blocks, x, keep_ratio, stages, tradeoff=0.5):
    """The official stage-wise loop, literally (eval mode, one image): g from the [CLS] rows summed over
    heads, sort at each stage start, run the top int(p n) (+[CLS]) through the stage, write them back.
    Returns (final tokens, informative input indices per stage start)."""
    tokens = model.pos_drop(model._pos_embed(model.patch_embed(x)))[0]
    n = tokens.shape[0] - 1
    origin = list(range(n))
    g, m, informative = None, n, {}
    for index, block in enumerate(stock_blocks):
        if index in stages:
            order = sorted(range(n), key=lambda j: -g[j])
            tokens = torch.cat([tokens[:1], tokens[1:][order]])
            g, origin = [g[j] for j in order], [origin[j] for j in order]
            m = int(n * keep_ratio)
            informative[index] = origin[:m]
        sub = tokens[: m + 1]
        _, weights = hand_attention(block.attn, block.norm1(sub))
        s = weights[:, 0, 1:].sum(dim=0).tolist()
        t = 1.0 if index < stages[0] else tradeoff
        g = s if g is None or index < stages[0] else [(1 - t) * g[j] + t * s[j] for j in range(m)] + g[m:]
        sub = block(sub.unsqueeze(0))[0]
        tokens = torch.cat([sub, tokens[m + 1:]])
    return tokens, informative


@pytest.mark.parametrize("keep_ratio,stages", [(0.5, (2,)), (0.4, (1, 3))])
def test_evo_against_the_official_loop_written_out(keep_ratio, stages, small_vit, fresh, image, record_blocks):
    x = image(small_vit, batch=2, seed=5)
    text = ",".join(map(str, stages))
    model = gtpcli.patch(fresh(small_vit), "evo", keep_ratio=keep_ratio, stages=text)
    with torch.no_grad(), record_blocks(model) as rec:
        model(x)
        for b in range(2):
            final, informative = hand_evo(model, fresh(small_vit).blocks, x[b:b + 1], keep_ratio, stages)
            for start, ids in informative.items():
                assert model.reduction.informative[start][b].tolist() == ids
            assert (rec["outputs"][-1][b] - final).abs().max().item() <= 1e-4


def test_evo_placeholders_come_back_unchanged(small_vit, fresh, image, record_blocks):
    """Stage from block 2 on, p = 0.5: the 32 placeholders leave the last block bit for bit as they left
    block 1, and only [CLS] + 32 tokens go through blocks 2 and 3."""
    model = gtpcli.patch(fresh(small_vit), "evo", keep_ratio=0.5, stages="2")
    with torch.no_grad(), record_blocks(model) as rec:
        model(image(small_vit, batch=2))
    assert [rec["outputs"][layer].shape[1] for layer in range(4)] == [65, 65, 33, 65]
    before = rec["outputs"][1]
    ids = model.reduction.informative[2]
    for b in range(2):
        waiting = sorted(set(range(64)) - set(ids[b].tolist()))
        after = rec["outputs"][3][b, 33:]
        assert torch.equal(after, before[b, 1:][model.reduction.origin[b, 32:]])
        assert sorted(model.reduction.origin[b, 32:].tolist()) == waiting


def test_evo_equal_p_ranks_before_every_block(small_vit, fresh, image, record_blocks):
    model = gtpcli.patch(fresh(small_vit), "evo", P=[6, 0, 9, 4])
    assert model.reduction.selections == (1, 3)
    with torch.no_grad(), record_blocks(model) as rec:
        out = model(image(small_vit))
    assert model.reduction.processed == [64, 58, 58, 49]  # N_l - 1 with N_l = 65, 59, 59, 50
    assert [rec["outputs"][layer].shape[1] for layer in range(4)] == [65, 59, 59, 65] and out.shape == (1, 10)


def test_evo_p0_and_ratio_1_are_the_stock_model(small_vit, fresh, image):
    x = image(small_vit, batch=2)
    with torch.no_grad():
        stock = small_vit(x)
        for kwargs in ({"P": 0}, {"keep_ratio": 1.0, "stages": "1,2"}):
            assert torch.equal(gtpcli.patch(fresh(small_vit), "evo", **kwargs)(x), stock)


def test_evo_schedule_by_hand():
    """p = 0.7 on DeiT-S: int(137.2) = 137 image tokens from block 4 on; the MLP sees what attention saw,
    and all 197 tokens are back for the head."""
    removals = V.stage_removals(DEIT_S, 0.7, "4,8")
    assert removals == [0, 0, 0, 59] + [0] * 8
    blocks = 4 * sum(A.block_terms(197, 0, 384, 4.0).values()) + 8 * sum(A.block_terms(138, 0, 384, 4.0).values())
    macs = V.backbone_macs(DEIT_S, removals)
    assert macs["blocks"] == blocks and macs["head"] == A.backbone_macs(DEIT_S, 0)["head"]
