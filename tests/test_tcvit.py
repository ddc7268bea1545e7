"""TC-ViT (docs/methods/tcvit.md): the method against the paper's equations written out by hand, its
variants against each other, its analytic overhead against fvcore and the paper's Tables 7 and 8."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from timm.models.vision_transformer import VisionTransformer

import gtpcli
from gtpcli import methods
from gtpcli.cost import analytic as A
from gtpcli.models import backbones
from gtpcli.errors import GtpcliError
from gtpcli.measure.flops import count_macs
from gtpcli.methods.tcvit import card as T
from gtpcli.methods.tcvit import patch as TP
from gtpcli.models.profiles import load_profile

DATA = Path(__file__).parent / "data" / "tc_vit_paper.yaml"


def patched(stock, fresh, **kwargs):
    kwargs.setdefault("P", 6)
    return gtpcli.patch(fresh(stock), "tcvit", **kwargs)


def run(model, x):
    with torch.no_grad():
        out = model(x)
    return out, {layer: keep.clone() for layer, keep in model.reduction.kept.items()}


def same_kept(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- a hand-written TC-ViT step (the spec's reference step, loops instead of gathers) -------------

def hand_step(x, A_map, p, P, K=2, alpha=500.0, beta=3.5, cbar="col"):
    """One image: x (N, c) after attention, A_map (H, N, N). Returns (tokens, kept image indices)."""
    A_map, x = A_map.double(), x.double()
    n = x.shape[0] - p
    W = A_map[:, p:, p:].mean(dim=0)
    C = sum(alpha ** (k - 1) * torch.linalg.matrix_power(W, k) for k in range(1, K + 1))
    cls = A_map[:, 0, p:]
    D = (cls / cls.sum(dim=-1, keepdim=True)).mean(dim=0)
    cb = {"col": C.mean(dim=0), "row": C.mean(dim=1)}[cbar]
    S = (-cb + beta * D).tolist()
    order = sorted(range(n), key=lambda i: -S[i])
    keep, drop = sorted(order[: n - P]), order[n - P:]
    num = {t: C[t, t] * x[p + t] for t in keep}
    den = {t: C[t, t] for t in keep}
    for q in drop:
        t = max(keep, key=lambda t: C[q, t].item())
        num[t] = num[t] + C[q, t] * x[p + q]
        den[t] = den[t] + C[q, t]
    tokens = [x[i] for i in range(p)] + [num[t] / den[t] for t in keep]
    return torch.stack(tokens), keep


def hand_attention(attn, h):
    """softmax(QK^T scale) V on one image (N, c); returns (output, the map (H, N, N))."""
    n, _ = h.shape
    qkv = attn.qkv(h).reshape(n, 3, attn.num_heads, -1).permute(1, 2, 0, 3)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    weights = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)
    out = (weights @ v).transpose(0, 1).reshape(n, -1)
    return attn.proj(attn.norm(out)), weights


@pytest.mark.parametrize("name,P,K,cbar", [("small_vit", 6, 2, "col"), ("reg_vit", 9, 3, "row"),
                                           ("qk_norm_vit", [10, 3, 0, 8], 2, "col")])
def test_every_block_against_the_hand_written_step(name, P, K, cbar, request, fresh, image, record_blocks):
    """Each block, from its recorded input: attention, then the reference step of docs/methods/tcvit.md in
    float64 (W = head mean of the image block, C = sum_k alpha^(k-1) W^k, column/row mean, D renormalised,
    top n - P kept in order, each dropped token into its argmax, Eq. 12), then the MLP."""
    stock = request.getfixturevalue(name)
    options = {} if (K, cbar) == (2, "col") else {"K": K, "cbar": cbar}  # the defaults are the paper's
    model = patched(stock, fresh, P=P, connectivity_dtype="float64", **options)
    p = stock.num_prefix_tokens
    Ps = [P] * 4 if isinstance(P, int) else P
    with torch.no_grad(), record_blocks(model) as rec:
        model(image(model, batch=2, seed=3))
        for layer, block in enumerate(model.blocks):
            x_in, got = rec["inputs"][layer], rec["outputs"][layer]
            for b in range(2):
                out, weights = hand_attention(block.attn, block.norm1(x_in[b]))
                x = x_in[b] + block.ls1(out)
                if Ps[layer]:
                    x, keep = hand_step(x, weights, p, Ps[layer], K=K, cbar=cbar)
                    assert model.reduction.kept[layer][b].tolist() == keep
                    x = x.float()
                x = x + block.ls2(block.mlp(block.norm2(x)))
                assert got.shape[1] == x.shape[0]
                assert (got[b] - x).abs().max().item() <= 1e-4


def test_w_and_d_by_hand_for_every_option():
    """Two heads whose [CLS] attends to itself differently (0.5 and 0.1), so renormalising matters."""
    A_map = torch.tensor([[[0.5, 0.1, 0.4], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],
                          [[0.1, 0.6, 0.3], [0.0, 0.9, 0.1], [0.3, 0.3, 0.4]]], dtype=torch.float64)[None]
    W = TP.image_graph(A_map, 1)
    assert torch.allclose(W[0], torch.tensor([[0.7, 0.2], [0.2, 0.6]], dtype=torch.float64))
    W_max = TP.image_graph(A_map, 1, "max")
    assert torch.allclose(W_max[0], torch.tensor([[0.9, 0.3], [0.3, 0.8]], dtype=torch.float64))
    W_renorm = TP.image_graph(A_map, 1, "mean", "patch_renorm")
    assert torch.allclose(W_renorm[0], torch.tensor([[0.7 / 0.9, 0.2 / 0.9], [0.2 / 0.8, 0.6 / 0.8]], dtype=torch.float64))
    D = TP.dominance(A_map, 1)
    assert torch.allclose(D[0], torch.tensor([(0.2 + 2 / 3) / 2, (0.8 + 1 / 3) / 2], dtype=torch.float64))
    D_soft = TP.dominance(A_map, 1, "softmax_of_probs")
    e = math.exp
    first = (e(0.1) / (e(0.1) + e(0.4)) + e(0.6) / (e(0.6) + e(0.3))) / 2
    assert torch.allclose(D_soft[0], torch.tensor([first, 1 - first], dtype=torch.float64))


def test_defaults_are_the_papers_and_the_signature_agrees_with_the_card():
    import inspect

    defaults = T.METHOD.defaults()
    assert {k: defaults[k] for k in ("K", "alpha", "beta")} == {"K": 2, "alpha": 500.0, "beta": 3.5}
    assert defaults["cbar"] == "col" and defaults["dominance"] == "renorm" and defaults["head_fusion"] == "mean"
    assert defaults["connectivity"] == "series" and defaults["fuse"] and not defaults["track_sizes"]
    signature = inspect.signature(TP.TCViT.__init__).parameters
    assert {k: signature[k].default for k in defaults} == defaults


# --- 1. K = 1, alpha = 0 and C = W are one model ---------------------------------------------------

def test_k1_alpha0_and_plain_w_are_the_same_model(small_vit, fresh, image):
    x = image(small_vit, batch=2)
    outs = [run(patched(small_vit, fresh, **kw), x) for kw in ({"K": 1}, {"K": 2, "alpha": 0.0}, {"K": 4, "alpha": 0.0})]
    for out, kept in outs[1:]:
        assert torch.equal(out, outs[0][0]) and same_kept(kept, outs[0][1])
    W = torch.rand(2, 7, 7)
    assert torch.equal(TP.series(W, 1, 500.0), W) and torch.equal(TP.series(W, 3, 0.0), W)


# --- 2. the series is Eq. 8 -------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_series_is_the_explicit_sum_of_powers(K):
    W = torch.rand(3, 9, 9, dtype=torch.float64)
    W = W / W.sum(dim=-1, keepdim=True) * 0.9
    alpha = 7.0
    explicit = sum(alpha ** (k - 1) * torch.linalg.matrix_power(W, k) for k in range(1, K + 1))
    assert torch.allclose(TP.series(W, K, alpha), explicit, rtol=1e-12, atol=0)
    assert torch.allclose(TP.matrix_power(W, K), torch.linalg.matrix_power(W, K), rtol=1e-12)


# --- 3. lazy = series at K = 2 ------------------------------------------------------------------------

@pytest.mark.parametrize("cbar", ["col", "row", "row_offdiag"])
@pytest.mark.parametrize("name", ["small_vit", "reg_vit"])
def test_lazy_equals_series(cbar, name, request, fresh, image, record_blocks):
    stock = request.getfixturevalue(name)
    x = image(stock, batch=2, seed=1)
    results = []
    for connectivity in ("series", "lazy"):
        model = patched(stock, fresh, P=9, cbar=cbar, connectivity=connectivity)
        with record_blocks(model) as rec:
            out, kept = run(model, x)
        results.append((out, kept, rec["outputs"]))
    (out_s, kept_s, blocks_s), (out_l, kept_l, blocks_l) = results
    assert same_kept(kept_s, kept_l) and len(kept_s) == 4
    for a, b in zip(blocks_s, blocks_l):
        assert (a - b).abs().max().item() <= 1e-5
    assert (out_s - out_l).abs().max().item() <= 1e-5


def test_lazy_cbar_and_rows_equal_the_dense_ones():
    W = torch.rand(2, 12, 12, dtype=torch.float64)
    W = W / W.sum(dim=-1, keepdim=True) * 0.8
    C = TP.series(W, 2, 500.0)
    for how in ("col", "row", "row_offdiag"):
        assert torch.allclose(TP.lazy_cbar(W, 500.0, how), TP.cbar_of(C, how), rtol=1e-12)


# --- 4. Newton -------------------------------------------------------------------------------------------

def test_newton_approaches_the_series_on_a_diagonally_dominant_w():
    torch.manual_seed(0)
    n = 16
    noise = torch.rand(2, n, n, dtype=torch.float64)
    W = 0.5 * torch.eye(n, dtype=torch.float64) + 0.4 * noise / noise.sum(dim=-1, keepdim=True)
    exact = TP.series(W, 2, 0.5)
    assert float(TP.newton_residual(W, 0.5).max()) < 1
    errors = [float((TP.newton(W, 2, 0.5, s) - exact).norm() / exact.norm()) for s in (1, 2, 3, 4, 6)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-10


def test_newton_on_real_attention_with_alpha_500_reports_its_residual(small_vit, fresh, image):
    model = patched(small_vit, fresh, P=6, connectivity="newton", newton_steps=2)
    out, kept = run(model, image(small_vit, batch=2))
    assert torch.isfinite(out).all() and len(kept) == 4
    residuals = model.reduction.newton_residuals
    assert [layer for layer, _ in residuals] == [0, 1, 2, 3]
    assert max(r for _, r in residuals) > 1  # not a converging start: reported, not hidden
    assert model.reduction.fallbacks >= 0


def test_newton_fallback_when_the_denominator_is_not_positive():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    keep, drop = torch.tensor([[0, 1]]), torch.tensor([[2]])
    rows = torch.tensor([[[0.0, -1.0, 0.0]]])           # C[2, :]: its best kept token is 0, weight 0
    self_weight = torch.tensor([[-0.5, 1.0]])            # C[0, 0] < 0: den = -0.5 <= 0
    fused, target, fallbacks = TP.fuse_tokens(x, keep, drop, rows, self_weight)
    assert fallbacks == 1 and target.tolist() == [[0]]
    assert torch.equal(fused[0, 0], torch.tensor([1.5, 1.0]))   # plain mean of token 0 and token 2
    assert torch.equal(fused[0, 1], x[0, 1])


# --- 5. the ablation axes ---------------------------------------------------------------------------------

def test_no_fusion_is_pruning_with_the_same_selection():
    torch.manual_seed(1)
    x = torch.randn(2, 11, 6)
    A_map = torch.softmax(3 * torch.randn(2, 2, 11, 11), dim=-1)
    hp = T.METHOD.resolved({})
    fused, _, info = TP.condense(x, A_map, 1, 4, hp)
    pruned, _, info_p = TP.condense(x, A_map, 1, 4, {**hp, "fuse": False})
    assert torch.equal(info["keep"], info_p["keep"])
    expected = torch.cat([x[:, :1], TP.take(x[:, 1:], info["keep"])], dim=1)
    assert torch.equal(pruned, expected) and not torch.equal(fused, expected)


def test_connectivity_score_is_beta_0_and_dominance_score_is_beta_to_infinity(small_vit, fresh, image):
    x = image(small_vit, batch=2, seed=2)
    kw = {"P": 8, "connectivity_dtype": "float64"}
    beta0 = run(patched(small_vit, fresh, beta=0.0, **kw), x)
    conn = run(patched(small_vit, fresh, score="connectivity", **kw), x)
    assert torch.equal(beta0[0], conn[0]) and same_kept(beta0[1], conn[1])
    huge = run(patched(small_vit, fresh, beta=1e9, **kw), x)
    dom = run(patched(small_vit, fresh, score="dominance", **kw), x)
    assert same_kept(huge[1], dom[1]) and torch.equal(huge[0], dom[0])
    default = run(patched(small_vit, fresh, **kw), x)
    assert not same_kept(default[1], conn[1]) and not same_kept(default[1], dom[1])  # beta matters


# --- 6. Eq. 12 by hand on a crafted graph --------------------------------------------------------------------

def test_eq12_by_hand_on_five_crafted_tokens():
    """[CLS] + 5 image tokens, one head, K = 1 (C = W). Rows of W are chosen so that the column means
    C_bar = (0.28, 0.08, 0.34, 0.14, 0.06) and D rank the tokens 4, 1, 3 | 0, 2 (beta 1): tokens 0 and 2
    are dropped; C[0, :] sends 0 to kept token 3 (0.3 > 0.2, 0.1), C[2, :] sends 2 to token 3 too."""
    W = torch.tensor([[0.40, 0.05, 0.10, 0.30, 0.05],
                      [0.20, 0.10, 0.40, 0.10, 0.10],
                      [0.20, 0.10, 0.50, 0.15, 0.05],
                      [0.40, 0.05, 0.40, 0.05, 0.00],
                      [0.20, 0.10, 0.30, 0.10, 0.10]], dtype=torch.float64)
    cls_row = torch.tensor([0.3, 0.10, 0.15, 0.05, 0.25, 0.15], dtype=torch.float64)
    N = 6
    A_map = torch.zeros(1, 1, N, N, dtype=torch.float64)
    A_map[0, 0, 0] = cls_row
    A_map[0, 0, 1:, 1:] = W * 0.9     # 10 % of every image row goes to [CLS]
    A_map[0, 0, 1:, 0] = 0.1
    x = torch.arange(N * 3, dtype=torch.float64).reshape(1, N, 3) ** 1.5
    hp = T.METHOD.resolved({"K": 1, "beta": 1.0, "connectivity_dtype": "float64"})
    out, _, info = TP.condense(x, A_map, 1, 2, hp)
    C = W * 0.9
    cbar = C.mean(dim=0)
    D = cls_row[1:] / cls_row[1:].sum()
    assert sorted((-cbar + D).argsort(descending=True)[:3].tolist()) == [1, 3, 4]
    assert info["keep"].tolist() == [[1, 3, 4]] and sorted(info["drop"][0].tolist()) == [0, 2]
    img = x[0, 1:]
    t3 = (C[3, 3] * img[3] + C[0, 3] * img[0] + C[2, 3] * img[2]) / (C[3, 3] + C[0, 3] + C[2, 3])
    assert torch.equal(out[0, 0], x[0, 0])                              # [CLS] untouched
    assert torch.equal(out[0, 1], img[1]) and torch.equal(out[0, 3], img[4])  # no match: unchanged
    assert torch.allclose(out[0, 2], t3, rtol=1e-13)                    # kept order: 1, 3, 4
    assert out.shape == (1, 4, 3)


# --- changeable P, sizes, dtypes, every backbone ----------------------------------------------------------

def test_p_is_changeable_and_hyperparameters_too(small_vit, fresh, image, record_blocks):
    model = patched(small_vit, fresh, P=4)
    x = image(small_vit)
    model.reduction.P = [10, 0, 5, 5]
    with record_blocks(model) as rec:
        run(model, x)
    assert [t.shape[1] for t in rec["inputs"]] == [65, 55, 55, 50]
    model.reduction.K = 3
    assert model.reduction.K == 3 and model.reduction.hp["K"] == 3
    with pytest.raises(GtpcliError, match="lazy"):
        model.reduction.connectivity = "lazy"  # K = 3 has no lazy path
    assert model.reduction.connectivity == "series"
    with pytest.raises(GtpcliError, match="layer 4"):
        model.reduction.P = 20


def test_p0_is_the_stock_model(small_vit, fresh, image):
    x = image(small_vit, batch=2)
    with torch.no_grad():
        stock = small_vit(x)
        assert torch.equal(patched(small_vit, fresh, P=0)(x), stock)


def test_track_sizes_counts_patches(small_vit, fresh, image):
    model = patched(small_vit, fresh, P=7, track_sizes=True)
    run(model, image(small_vit, batch=2))
    size = model.reduction.size
    assert size.shape == (2, 65 - 28, 1)
    assert torch.allclose(size[:, 1:].sum(dim=1), torch.full((2, 1), 64.0))
    assert model.reduction.prop_attn


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_models_compute_connectivity_in_float32(dtype, small_vit, fresh, image):
    model = patched(small_vit, fresh, P=6).to(dtype)
    out, kept = run(model, image(small_vit, batch=2, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all() and len(kept) == 4


def test_models_without_cls_need_the_connectivity_score(small_gap_vit, reg_gap_vit, fresh, image):
    for stock in (small_gap_vit, reg_gap_vit):
        with pytest.raises(GtpcliError, match="score: connectivity"):
            patched(stock, fresh)
        model = patched(stock, fresh, score="connectivity", P=5)
        out, kept = run(model, image(stock))
        assert torch.isfinite(out).all() and len(kept) == 4
        assert patched(stock, fresh, beta=0.0) is not None  # beta 0 reads no [CLS]


# --- 10. errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"K": 16}, "connectivity_dtype: float64"),
    ({"K": 3, "connectivity": "lazy"}, "K = 2 only"),
    ({"P": 17}, "layer 4"),
    ({"cbar": "mean"}, "cbar must be one of col, row, row_offdiag"),
    ({"K": 0}, "K must be >= 1"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
    ({"newton_steps": 1.5}, "newton_steps must be an integer"),
    ({"fuse": "yes"}, "fuse must be true or false"),
    ({"prop_attn": True}, "prop_attn needs track_sizes"),
])
def test_impossible_settings_are_one_line_errors(kwargs, message, small_vit, fresh):
    with pytest.raises(GtpcliError, match=message) as info:
        patched(small_vit, fresh, **kwargs)
    assert "\n" not in str(info.value)


def test_unknown_keyword_is_a_type_error(small_vit, fresh):
    with pytest.raises(TypeError):
        patched(small_vit, fresh, gamma=1.0)


def test_high_orders_run_in_float64(small_vit, fresh, image):
    model = patched(small_vit, fresh, P=6, K=32, connectivity_dtype="float64")
    out, kept = run(model, image(small_vit))
    assert torch.isfinite(out).all() and len(kept) == 4


# --- 7. fvcore = backbone + tcvit_implemented ----------------------------------------------------------------

def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=10).eval()


@pytest.mark.parametrize("kwargs", [{}, {"connectivity": "lazy"}, {"connectivity": "newton", "newton_steps": 2},
                                    {"K": 3}, {"connectivity": "lazy", "cbar": "row", "P": [6, 0, 9, 3]}])
def test_fvcore_counts_backbone_plus_the_implemented_overhead(kwargs):
    model = tiny_vit()
    kwargs = {"P": 6, **kwargs}
    gtpcli.patch(model, "tcvit", **kwargs)
    removals = model.reduction.removals
    count = count_macs(model, torch.randn(1, 3, 64, 64))
    arch = backbones.arch_of(model)
    hp = {k: v for k, v in kwargs.items() if k != "P"}
    analytic = sum(A.backbone_macs(arch, removals).values()) + methods.implemented_overhead(arch, "tcvit", removals, hp)
    assert count.uncounted == []
    assert count.macs == analytic
    assert count.flop_counter_macs == count.matmul_macs  # FlopCounterMode sees the same products


# --- 8. the published GFLOPs ---------------------------------------------------------------------------------

def paper_counted_gmacs(arch, P, K):
    backbone = sum(A.backbone_macs(arch, P).values())
    return (backbone + T.overhead(arch, [P] * arch.L, {"K": K}, "paper_counted")) / 1e9


def test_tables_7_and_8_within_0_01():
    data = yaml.safe_load(DATA.read_text())
    arch = load_profile("deit_t").arch
    points = list(zip(data["table7"]["drop"], [2] * 5, data["table7"]["gflops"]))
    points += [(14, K, g) for K, g in zip(data["table8"]["K"], data["table8"]["gflops"])]
    assert len(points) == 10  # Table 8's K = 2 is Table 7's drop 14: nine distinct values
    model = data["inferred_drop_per_layer"]["validation"]
    for P, K, printed in points:
        ours = paper_counted_gmacs(arch, P, K)
        assert abs(ours - printed) <= 0.01, (P, K, ours, printed)
        at = [i for i, (p, k) in enumerate(zip(model["drop"], model["K"])) if (p, k) == (P, K)][0]
        assert round(ours, 4) == model["model"][at]


@pytest.mark.parametrize("name,P,printed", [("deit_t", 14, 0.7), ("deit_s", 16, 2.3), ("lvvit_s", 11, 4.1),
                                            ("lvvit_m", 9, 7.4), ("deit_t", 11, 0.8), ("deit_t", 12, 0.8)])
def test_inferred_operating_points_reproduce_tables_1_2_and_6(name, P, printed):
    assert round(paper_counted_gmacs(load_profile(name).arch, P, 2), 1) == printed


def test_deit_b_is_the_documented_exception():
    ours = paper_counted_gmacs(load_profile("deit_b").arch, 16, 2)
    assert round(ours, 4) == 8.7798 and round(ours, 1) == 8.8  # the paper prints 8.7
    with pytest.raises(GtpcliError):  # 16 is the most 12 blocks allow
        A.token_schedule(197, 12, 17, 1)


def test_k_minus_1_products_do_not_fit_table_8():
    arch = load_profile("deit_t").arch
    backbone = sum(A.backbone_macs(arch, 14).values())
    for K, printed in ((4, 0.76), (8, 0.79), (32, 0.85)):
        dense_products = backbone + sum((K - 1) * n**3 for n, _ in T.image_schedule(arch, [14] * 12))
        assert abs(dense_products / 1e9 - printed) > 0.02


# --- 9. the analytic variants -----------------------------------------------------------------------------

SECTION_7 = [  # (N, C, H, P): dense K=2, paper-counted, Eq. 9 + 2 Newton steps, lazy, GTP, ToMe (MMACs)
    ((197, 192, 3, 14), (31.32, 30.23, 153.03, 3.91, 10.87, 9.67)),
    ((197, 384, 6, 8), (48.73, 46.32, 235.14, 4.74, 20.26, 27.88)),
    ((197, 768, 12, 8), (50.57, 46.32, 236.98, 6.58, 40.52, 55.77)),
    ((197, 384, 6, 16), (28.62, 26.98, 137.24, 4.51, 21.77, 17.28)),
    ((197, 768, 12, 16), (29.91, 26.98, 138.53, 5.80, 43.53, 34.55)),
    ((785, 768, 12, 8), (4975.47, 4883.01, 24533.82, 145.26, 527.41, 1266.91)),
]


@pytest.mark.parametrize("point,expected", SECTION_7)
def test_section_7_table(point, expected):
    N, C, H, P = point
    arch = A.Arch(N=N, C=C, L=12, H=H)
    row = T.complexity_row(arch, P, {})
    ours = (row["tcvit_macs"], row["tcvit_paper_counted"], row["tcvit_newton"], row["tcvit_lazy"],
            A.gtp_macs(N, C, 12, H, P), float(A.tome_macs(N, C, 12, P)))
    assert [round(v / 1e6, 2) for v in ours] == list(expected)


@pytest.mark.parametrize("hparams", [{}, {"K": 4, "newton_steps": 1}, {"K": 1, "newton_steps": 3},
                                     {"cbar": "row_offdiag", "fuse": False, "score": "connectivity"}])
def test_every_variant_is_the_sum_of_its_per_layer_terms(hparams):
    arch = A.Arch(N=197, C=384, L=12, H=6)
    row, layers = T.complexity_row(arch, 8, hparams), T.complexity_layers(arch, 8, hparams)
    assert len(layers) == 12
    for variant, key in (("dense", "tcvit_macs"), ("paper", "tcvit_paper_counted"),
                         ("newton", "tcvit_newton"), ("lazy", "tcvit_lazy")):
        if row[key] is None:
            assert hparams.get("K", 2) != 2
            continue
        assert row[key] == sum(v for layer in layers for k, v in layer.items() if k.startswith(f"tcvit_{variant}_"))


def test_closed_forms_of_the_spec():
    """The cost conventions of docs/methods/tcvit.md, term by term: the dense, Newton and lazy sums as closed expressions in n_l."""
    arch = A.Arch(N=197, C=384, L=12, H=6)
    H, C, P = 6, 384, 8
    ns = [196 - 8 * l for l in range(12)]
    for K in (1, 2, 3, 5, 8):
        assert T.overhead(arch, [P] * 12, {"K": K}, "dense") == sum(
            (K - 1) * n**3 + (H + K) * n * n + (H + 1) * n + 3 * P * C for n in ns)
        m = int(math.log2(K)) + bin(K).count("1") - 1
        for s in (1, 2, 3):
            assert T.overhead(arch, [P] * 12, {"K": K, "newton_steps": s}, "newton") == sum(
                (m + 2 * s) * n**3 + (H + 4 + s) * n * n + (H + 2) * n + 3 * P * C for n in ns)
    assert T.overhead(arch, [P] * 12, {}, "lazy") == sum(
        (H + 2 + P) * n * n + (H + 3 + 2 * P) * n + P + 3 * P * C for n in ns)
    assert T.overhead(arch, [0] * 12, {}, "dense") == 0  # a block that removes nothing runs nothing


def test_implemented_overhead_by_connectivity():
    arch = A.Arch(N=65, C=32, L=4, H=2)
    ns = [64 - 6 * l for l in range(4)]
    assert methods.implemented_overhead(arch, "tcvit", [6] * 4, {}) == sum(n**3 for n in ns)
    assert methods.implemented_overhead(arch, "tcvit", [6] * 4, {"K": 4, "connectivity": "newton", "newton_steps": 2}) == \
        sum(6 * n**3 for n in ns)
    assert methods.implemented_overhead(arch, "tcvit", [6] * 4, {"connectivity": "lazy"}) == sum(7 * n * n + 6 * n for n in ns)


# --- 11. reference rows ----------------------------------------------------------------------------------------

def test_reference_data_loads_and_the_deit_t_profile_carries_table_7():
    data = yaml.safe_load(DATA.read_text())
    assert data["defaults"]["K"] == 2 and data["defaults"]["alpha"] == 500 and data["defaults"]["beta"] == 3.5
    profile = load_profile("deit_t")
    block = next(r for r in profile.reference if r.get("method") == "tcvit")
    assert block["source"] == "finetuned with distillation (TC-ViT Table 7)"
    assert block["P"] == data["table7"]["drop"]
    assert block["acc"] == data["table7"]["acc"] and block["gmacs"] == data["table7"]["gflops"]
    assert profile.hparams["tcvit"] == {"K": 2, "alpha": 500.0, "beta": 3.5}


# --- the commands: complexity, profile, trace, check --------------------------------------------------------

TINY_PROFILE = """\
name: tiny
description: a 4-block ViT at 64 px, [CLS]
model: {timm: vit_tiny_patch16_224, img_size: 64, patch_size: 8, prefix_tokens: 1, embed_dim: 64, depth: 4,
        num_heads: 2, mlp_ratio: 4.0, num_classes: 10}
method: tcvit
P: "0,6"
hparams:
  tcvit: {K: 2, alpha: 500.0, beta: 3.5}
reference:
  - source: finetuned with distillation (made up for this test)
    method: tcvit
    P: [6]
    acc: [70.0]
    gmacs: [0.06]
"""


def cli(*args):
    from typer.testing import CliRunner

    from gtpcli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_complexity_has_three_methods_and_tcvit_settings():
    import json

    result = cli("complexity", "--N", "197", "--C", "384", "--H", "6", "--P", "8,16", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["methods"] == list(methods.scheduled())  # every method with a P schedule, by default
    assert {"gtp", "tome", "tcvit", "evit", "evo"} <= set(data["methods"]) and not set(methods.adaptive()) & set(data["methods"])
    assert data["tokens"]["tcvit_macs"].startswith("n_l") and data["tokens"]["gtp_macs"].startswith("N_l")
    arch = A.Arch(N=197, C=384, L=12, H=6)
    for row in data["rows"]:
        assert {k: row[k] for k in T.complexity_row(arch, row["P"], {})} == T.complexity_row(arch, row["P"], {})
        assert row["gtp_macs"] == A.gtp_macs(197, 384, 12, 6, row["P"])
    table = cli("complexity", "--N", "197", "--C", "384", "--P", "8")
    assert "TC-ViT dense" in table.output and "48.730" in table.output and "TC-ViT: n_l image tokens" in table.output
    k4 = json.loads(cli("complexity", "--N", "197", "--C", "384", "--method", "tcvit", "--hp", "K=4",
                        "--hp", "tcvit.newton_steps=1", "--format", "json").output)
    assert set(k4["rows"][0]) >= {"tcvit_macs", "tcvit_newton"} and "gtp_macs" not in k4["rows"][0]
    assert k4["rows"][0]["tcvit_macs"] == T.overhead(A.Arch(N=197, C=384), [8] * 12, {"K": 4}, "dense")
    assert k4["rows"][0]["tcvit_lazy"] is None and k4["hparams"]["tcvit"]["K"] == 4


@pytest.mark.parametrize("args,message", [
    (["--hp", "alpha=3"], "gtp and tcvit both have it"),
    (["--hp", "tcvit.cbar=mean"], "cbar must be one of"),
    (["--hp", "tcvit.gamma=1"], "unknown hyperparameter 'gamma'"),
    (["--method", "tc-vit"], "unknown method 'tc-vit'"),
])
def test_complexity_bad_hyperparameters_are_one_line(args, message):
    result = cli("complexity", "--N", "197", "--C", "384", *args)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") <= 2, result.output


def test_complexity_and_help_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from gtpcli.cli import app; "
            "r = CliRunner().invoke(app, ['complexity', '--N', '785', '--C', '768', '--method', 'tcvit', '--hp', 'K=4', "
            "'--per-layer']); assert r.exit_code == 0, r.output; "
            "assert 'TC-ViT' in r.output; "
            "h = CliRunner().invoke(app, ['profile', '--help']); assert 'tcvit' in h.output, h.output; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, [m for m in sys.modules if 'torch' in m]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_profile_measures_three_methods_with_the_labelled_reference(tmp_path):
    import json

    own = tmp_path / "tiny.yaml"
    own.write_text(TINY_PROFILE)
    result = cli("profile", own, "--method", "gtp,tome,tcvit", "--P", "0,6", "--no-speed", "--format", "json",
                 "--output", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["method"], r["P"]) for r in rows] == [("stock", 0)] + [(m, P) for m in ("gtp", "tome", "tcvit") for P in (0, 6)]
    for row in rows:  # GTP's last size update is never read, and fvcore's trace drops it: not exact there
        assert row["warnings"] == [] and (row["macs"] == row["analytic_macs"] or row["method"] == "gtp"), row
    tcvit = [r for r in rows if r["method"] == "tcvit"]
    assert tcvit[1]["hparams"] == {"K": 2, "alpha": 500.0, "beta": 3.5}
    assert tcvit[1]["paper_acc"] == 70.0 and tcvit[1]["paper_source"].startswith("finetuned with distillation")
    assert tcvit[1]["tokens"] == [65, 59, 53, 47]
    table = cli("profile", own, "--method", "tcvit", "--P", "0,6", "--no-speed", "--hp", "connectivity=lazy",
                "--output", tmp_path / "out2.json")
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())  # the caption wraps at the table's width
    assert "paper Acc (%), finetuned" in text and "paper rows: finetuned with distillation" in text


@pytest.mark.parametrize("args,message", [
    (["--hp", "tcvit.K=16"], "connectivity_dtype: float64"),
    (["--hp", "tcvit.K=3", "--hp", "tcvit.connectivity=lazy"], "K = 2 only"),
    (["--P", "17"], "layer 4"),
])
def test_profile_refuses_impossible_tcvit_settings_in_one_line(args, message, tmp_path):
    own = tmp_path / "tiny.yaml"
    own.write_text(TINY_PROFILE)
    result = cli("profile", own, "--method", "tcvit", "--no-speed", "--no-flops", *args, "--output", tmp_path / "o.json")
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.strip().count("\n") == 0


def test_profile_refuses_the_dominance_score_on_a_model_without_cls(tmp_path):
    own = tmp_path / "gap.yaml"
    own.write_text(TINY_PROFILE.replace("prefix_tokens: 1", "prefix_tokens: 0")
                   .replace("num_classes: 10}", "num_classes: 10, kwargs: {class_token: false, global_pool: avg}}")
                   .replace("reference:", "unused:\n").split("unused:")[0])
    result = cli("profile", own, "--method", "tcvit", "--no-speed", "--no-flops", "--output", tmp_path / "o.json")
    assert result.exit_code == 2 and "score: connectivity" in result.output, result.output
    ok = cli("profile", own, "--method", "tcvit", "--no-speed", "--hp", "score=connectivity", "--format", "json",
             "--output", tmp_path / "o2.json")
    assert ok.exit_code == 0, ok.output


def test_profile_reports_newton_diagnostics(tmp_path):
    import json

    own = tmp_path / "tiny.yaml"
    own.write_text(TINY_PROFILE)
    result = cli("profile", own, "--method", "tcvit", "--P", "6", "--no-speed", "--hp", "connectivity=newton",
                 "--format", "json", "--output", tmp_path / "o.json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][1]
    assert row["newton_residual_max"] > 1 and row["newton_fallbacks"] >= 0
    assert any("convergence is not guaranteed" in w for w in row["warnings"])
    assert row["macs"] == row["analytic_macs"]


def test_trace_labels_tcvits_stages(small_vit, fresh, image):
    from gtpcli.measure import trace

    assert {"tcvit.connectivity", "tcvit.select", "tcvit.fuse"} <= set(trace.STAGES)
    model = patched(small_vit, fresh, P=6)
    times = trace.stage_times(model, image(small_vit, batch=2), steps=1)
    assert {"tcvit.connectivity", "tcvit.select", "tcvit.fuse"} <= set(times)


@pytest.mark.slow
def test_check_gates_tcvit(tmp_path):
    import json

    own = tmp_path / "tiny.yaml"
    own.write_text(TINY_PROFILE + "check: {methods: [tcvit], P: '0,6', metrics: [macs, tokens, overhead_macs]}\n")
    baseline = tmp_path / "baseline.json"
    assert cli("check", own, "--update-baseline", baseline).exit_code == 0
    rows = json.loads(baseline.read_text())["rows"]
    assert {(r["method"], r["P"]) for r in rows} == {("stock", 0), ("tcvit", 0), ("tcvit", 6)}
    assert cli("check", own, "--baseline", baseline).exit_code == 0
    for row in rows:
        if row["method"] == "tcvit" and row["P"] == 6:
            row["overhead_macs"] -= 1
    baseline.write_text(json.dumps({"rows": rows, "env": json.loads(baseline.read_text())["env"]}))
    failed = cli("check", own, "--baseline", baseline)
    assert failed.exit_code == 1 and "tcvit P=6 overhead_macs" in failed.output, failed.output


def test_diagnose_answers_section_8(small_vit, fresh, image):
    model = fresh(small_vit)
    found = TP.diagnose(model, image(small_vit, batch=2), P=6)
    assert found["blocks_x_images"] == 8 and 0 <= found["newton_can_start_share"] <= 1
    assert found["newton2_rel_error_median"] > 0 and found["newton1_rel_error_median"] > 0
    assert 0 <= found["dropped_changed_without_dominance_mean"] <= 6
    strong = TP.diagnose(fresh(small_vit), image(small_vit, batch=2), P=6, beta=1e6)
    assert strong["dropped_changed_without_dominance_mean"] > 0        # a dominance that decides is seen
    assert 0 <= found["dropped_changed_row_vs_col_mean"] <= 6
    assert getattr(model, "reduction", None) is None  # unpatched again
    W = torch.eye(4, dtype=torch.float64)[None] * 0.9
    assert float(TP.newton_residual(W, 0.5)) == 0.0     # a diagonal W: X_0 is the exact inverse


def test_runs_on_lvvit():
    from gtpcli.models.lvvit import lvvit_s

    torch.manual_seed(0)
    model = lvvit_s(depth=4).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        stock = model(x)
        gtpcli.patch(model, "tcvit", P=0)
        assert (model(x) - stock).abs().max() <= 1e-5
        seen = []
        hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in model.blocks]
        model.reduction.P = 12
        assert torch.isfinite(model(x)).all() and seen == [197, 185, 173, 161]
        for h in hooks:
            h.remove()
