"""GTP (paper section 3.2) against independent computations: dense adjacency matrices built by hand,
a hand-written attention, and a dense re-implementation of a whole GTP forward pass."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gtpcli
from gtpcli import methods
from gtpcli.methods import blocks as common
from gtpcli.methods.blocks import AttentionSummary, attend, size_bias, sparsify
from gtpcli.methods.gtp.patch import (GTP, Graph, build_graph, semantic_neighbours, spatial_neighbours, split, split_graph,
                               token_scores)

# --- independent helpers --------------------------------------------------------------------------


def dense_spatial(height: int, width: int) -> torch.Tensor:
    """The spatial adjacency of Eq. 5, cell by cell."""
    n = height * width
    A = torch.zeros(n, n)
    for r in range(height):
        for c in range(width):
            for r2 in range(height):
                for c2 in range(width):
                    if (r, c) != (r2, c2) and abs(r - r2) <= 1 and abs(c - c2) <= 1:
                        A[r * width + c, r2 * width + c2] = 1.0
    return A


def dense_semantic(x: torch.Tensor, M: int, keep_ties: bool = False) -> torch.Tensor:
    """Eq. 6-7 by brute force on one image (N, C): row i marks its M most cosine-similar other tokens
    (with `keep_ties`, every token at least as similar as the M-th, the authors' `>= T_i`)."""
    rows = x.double().tolist()
    n = len(rows)
    norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
    A = torch.zeros(n, n)
    for i in range(n):
        sims = sorted(((sum(a * b for a, b in zip(rows[i], rows[j])) / (norms[i] * norms[j]), j)
                       for j in range(n) if j != i), reverse=True)
        chosen = [j for s, j in sims if s >= sims[M - 1][0]] if keep_ties else [j for _, j in sims[:M]]
        for j in chosen:
            A[i, j] = 1.0
    return A


def dense_graph(x: torch.Tensor, grid: tuple[int, int], M: int, kind: str, keep_ties: bool = False) -> torch.Tensor:
    """A_hat = D^-1/2 A D^-1/2 (Eq. 9) with D the row sums of A, for one image (N, C)."""
    n = x.shape[0]
    A = torch.zeros(n, n)
    if kind in ("spatial", "mixed"):
        A = torch.maximum(A, dense_spatial(*grid))
    if kind in ("semantic", "mixed"):
        A = torch.maximum(A, dense_semantic(x, min(M, n - 1), keep_ties))
    d = A.sum(dim=1)
    inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    return inv[:, None] * A * inv[None, :]


def hand_sparsify(w: torch.Tensor, theta: float, variant: str = "paper") -> torch.Tensor:
    """Per head (H, N, N): keep the ceil(theta N^2) largest entries, zero the others; the authors' code
    zeroes the entries below the k-th smallest, k = int(N^2 (1 - theta)), so keeps N^2 - k + 1."""
    H, n, _ = w.shape
    keep = math.ceil(theta * n * n) if variant == "paper" else min(n * n, n * n - int(n * n * (1 - theta)) + 1)
    out = torch.zeros_like(w)
    for h in range(H):
        flat = w[h].flatten()
        values = flat.tolist()
        top = sorted(range(len(values)), key=lambda i: -values[i])[:keep]
        mask = torch.zeros_like(flat)
        mask[top] = 1.0
        out[h] = (flat * mask).view(n, n)
    return out


def hand_attention(attn, h: torch.Tensor, size: torch.Tensor | None, theta: float = 1.0, variant: str = "paper"):
    """Multi-head attention on one image (N, C), written out: softmax(QK^T scale + log s) V.
    Returns (output (N, C), weights (H, N, N), keys (H, N, d))."""
    n, _ = h.shape
    H = attn.num_heads
    qkv = attn.qkv(h).reshape(n, 3, H, -1).permute(1, 2, 0, 3)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q @ k.transpose(-1, -2)) * attn.scale
    if size is not None:
        logits = logits + size.reshape(1, 1, n).log()
    w = torch.softmax(logits, dim=-1)
    if theta < 1.0:
        w = hand_sparsify(w, theta, variant)
    out = (w @ v).transpose(0, 1).reshape(n, -1)
    return attn.proj(attn.norm(out)), w, k


def hand_scores(w: torch.Tensor, prefix: int, selection: str, fusion: str, variant: str = "paper") -> list[float]:
    """Importance of each image token of one attention map (H, N, N), entry by entry (Eq. 3-4; the
    authors' code sums Psi over the token's own row too; cossim as their code defines it)."""
    H, n, _ = w.shape
    w = w.tolist()
    agg = max if fusion == "max" else (lambda values: sum(values) / len(values))
    if selection == "cossim":
        rows = [[agg([w[h][i][c] for h in range(H)]) for c in range(n)] for i in range(prefix, n)]
        unit = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]
        return [-sum(sum(a * b for a, b in zip(ri, rj)) for rj in unit) for ri in unit]
    scores = []
    for i in range(prefix, n):
        gamma = agg([w[h][i][i] for h in range(H)])
        psi = agg([sum(w[h][j][i] for j in range(n) if j != i or variant == "authors") for h in range(H)])
        cls = agg([w[h][0][i] for h in range(H)])
        scores.append({"mixed": gamma * psi, "diag": gamma, "broad": psi, "cls": cls}[selection])
    return scores


def top_split(scores: list[float], P: int) -> tuple[list[int], list[int]]:
    """Kept (ascending) and propagated image-token indices; refuses an ambiguous (tied) boundary."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    n_keep = len(scores) - P
    if 0 < n_keep < len(scores):
        gap = scores[order[n_keep - 1]] - scores[order[n_keep]]
        assert gap > 1e-5 * abs(scores[order[0]]), "tied scores at the cut: ill-posed test input"
    return sorted(order[:n_keep]), order[n_keep:]


def embed(model, img):
    x = model.patch_embed(img)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def reference_gtp(model, img, P, alpha=0.1, M=8, graph="mixed", selection="mixed", fusion="max",
                  prop_attn=True, theta=1.0, variant="paper"):
    """A whole GTP forward pass with dense matrices, one image at a time.
    Returns (logits, final sizes (B, N, 1), tokens entering each block)."""
    p = model.num_prefix_tokens
    grid = tuple(model.patch_embed.grid_size)
    L = len(model.blocks)
    Ps = [P] * L if isinstance(P, int) else list(P)
    x_all = embed(model, img)
    feats, sizes, schedule = [], [], None
    for b in range(x_all.shape[0]):
        x = x_all[b]
        n = x.shape[0]
        authors = variant == "authors"
        degree = M + 1 if authors and p == 0 else M  # the authors' code: M + 1 neighbours without [CLS]
        A_hat = dense_graph(x[p:], grid, degree, graph, authors) if graph != "none" else torch.zeros(n - p, n - p)
        size = torch.ones(n, 1)
        counts = []
        for layer, block in enumerate(model.blocks):
            counts.append(x.shape[0])
            out, w, _ = hand_attention(block.attn, block.norm1(x), size if prop_attn else None,
                                       theta if Ps[layer] > 0 or authors else 1.0, variant)
            x = x + block.ls1(out)
            if Ps[layer] > 0:
                keep, prop = top_split(hand_scores(w, p, selection, fusion, variant), Ps[layer])
                image, image_size = x[p:], size[p:]
                Ap = A_hat[keep][:, prop]
                image_new = image[keep] + alpha * Ap @ image[prop]  # Eq. 10
                size_new = image_size[keep] + alpha * Ap @ image_size[prop]  # Eq. 12
                A_hat = A_hat[keep][:, keep]
                x = torch.cat([x[:p], image_new])
                size = torch.cat([size[:p], size_new])
            x = x + block.ls2(block.mlp(block.norm2(x)))
        feats.append(x)
        sizes.append(size)
        schedule = counts
    x = torch.stack(feats)
    return model.forward_head(model.norm(x)), torch.stack(sizes), schedule


def block_counts(record):
    return [x.shape[1] for x in record["inputs"]]


def stock_block(block, x, attn_mask=None):
    """The stock timm Block.forward on a (possibly patched) block."""
    stock = getattr(type(block), "_stock_class", type(block))
    return stock.forward(block, x, attn_mask=attn_mask)


# --- P = 0 is the stock model; unpatch restores it --------------------------------------------------

MODELS_P0 = ["deit_small", "vit_medium_gap", "reg_vit", "reg_gap_vit", "qk_norm_vit"]


def test_vit_medium_gap_has_what_it_is_used_for(vit_medium_gap):
    """The P = 0 tests rely on this model having no [CLS], GAP, LayerScale and no qkv bias."""
    m = vit_medium_gap
    assert m.cls_token is None and m.num_prefix_tokens == 0 and m.global_pool == "avg"
    assert all(type(b.ls1).__name__ == "LayerScale" and type(b.ls2).__name__ == "LayerScale" for b in m.blocks)
    assert all(b.attn.qkv.bias is None for b in m.blocks)
    # the LayerScale gammas are distinctive (set by the fixture), not timm's 1e-6
    assert float(m.blocks[0].ls1.gamma.detach().min()) > 0.4


@pytest.mark.parametrize("name", MODELS_P0)
def test_p0_equals_stock(name, request, fresh, image):
    stock = request.getfixturevalue(name)
    assert name != "reg_vit" or stock.num_prefix_tokens == 5
    assert name != "reg_gap_vit" or (stock.num_prefix_tokens == 4 and stock.cls_token is None)
    assert name != "qk_norm_vit" or type(stock.blocks[0].attn.q_norm).__name__ == "LayerNorm"
    img = image(stock)
    with torch.no_grad():
        expected = stock(img)
        model = gtpcli.patch(fresh(stock), "gtp", P=0)
        got = model(img)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("options", [dict(sparsity=0.3), dict(selection="random", graph="semantic"),
                                     dict(prop_attn=False, alpha=1.0), dict(P=[0, 0, 0, 0])])
def test_p0_equals_stock_whatever_the_options(options, small_vit, fresh, image):
    options = {"P": 0, **options}
    img = image(small_vit, batch=2)
    with torch.no_grad():
        expected = small_vit(img)
        got = gtpcli.patch(fresh(small_vit), "gtp", **options)(img)
    assert (got - expected).abs().max().item() <= 1e-5


def test_setting_p_to_zero_after_patching_gives_stock(small_vit, fresh, image):
    img = image(small_vit)
    model = gtpcli.patch(fresh(small_vit), "gtp", P=6)
    with torch.no_grad():
        expected = small_vit(img)
        reduced = model(img)
        model.reduction.P = 0
        got = model(img)
    assert (reduced - expected).abs().max().item() > 1e-3  # P = 6 really changed something
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["small_vit", "reg_gap_vit"])
def test_unpatch_restores_exactly(name, request, fresh, image):
    stock = request.getfixturevalue(name)
    img = image(stock, batch=2)
    model = fresh(stock)
    with torch.no_grad():
        expected = model(img)
        gtpcli.patch(model, "gtp", P=5)
        assert model(img).shape == expected.shape
        gtpcli.unpatch(model)
        got = model(img)
    assert torch.equal(got, expected)
    assert "reduction" not in model.__dict__
    for block, original in zip(model.blocks, stock.blocks):
        assert type(block) is type(original)
        assert not hasattr(block, "reduction") and not hasattr(block, "layer_index")
    for (name_a, a), (name_b, b) in zip(model.state_dict().items(), stock.state_dict().items()):
        assert name_a == name_b and torch.equal(a, b)


def test_patch_twice_and_unpatch(small_vit, fresh, image):
    img = image(small_vit)
    model = fresh(small_vit)
    with torch.no_grad():
        expected = model(img)
        gtpcli.patch(model, "gtp", P=4)
        gtpcli.patch(model, "tome", r=4)  # re-patching replaces the previous reduction
        assert model.reduction.method == "tome"
        assert all(block.reduction is model.reduction for block in model.blocks)
        model(img)
        gtpcli.unpatch(model)
        assert torch.equal(model(img), expected)


# --- token schedule and prefix tokens ---------------------------------------------------------------

def test_token_schedule_constant_p(vit_tiny, fresh, image, record_blocks):
    model = gtpcli.patch(fresh(vit_tiny), "gtp", P=8)
    img = image(model)
    N, L = 197, 12
    with torch.no_grad(), record_blocks(model) as rec:
        out = model(img)
    assert block_counts(rec) == [N - l * 8 for l in range(L)]
    assert model.reduction.schedule() == [N - l * 8 for l in range(L)]
    assert out.shape == (1, 1000)
    assert model.reduction.size.shape == (1, N - L * 8, 1)
    # the strength can be changed between forward passes
    model.reduction.P = 4
    with torch.no_grad(), record_blocks(model) as rec:
        model(img)
    assert block_counts(rec) == [N - l * 4 for l in range(L)]
    assert model.reduction.size.shape == (1, N - L * 4, 1)


def test_token_schedule_per_layer_list(vit_tiny, fresh, image, record_blocks):
    Ps = [0, 3, 10, 0, 7, 1, 16, 2, 0, 5, 9, 4]
    model = gtpcli.patch(fresh(vit_tiny), "gtp", P=Ps)
    with torch.no_grad(), record_blocks(model) as rec:
        model(image(model))
    expected = [197 - sum(Ps[:l]) for l in range(12)]
    assert block_counts(rec) == expected
    assert model.reduction.size.shape == (1, 197 - sum(Ps), 1)


@pytest.mark.parametrize("name,graph", [("reg_vit", "mixed"), ("small_vit", "none"), ("reg_gap_vit", "mixed")])
def test_prefix_tokens_are_carried(name, graph, request, fresh, image, record_blocks):
    """Prefix tokens are never removed: every block's prefix rows are exactly what the stock block
    computes on the same input (with the proportional-attention bias of the sizes at that block)."""
    stock = request.getfixturevalue(name)
    model = gtpcli.patch(fresh(stock), "gtp", P=5, alpha=0.5, graph=graph)
    p = stock.num_prefix_tokens
    img = image(model, batch=2)
    with torch.no_grad(), record_blocks(model) as rec:
        model(img)
        N = rec["inputs"][0].shape[1]
        assert block_counts(rec) == [N - 5 * l for l in range(len(model.blocks))]
        for layer, block in enumerate(model.blocks):
            x, size, got = rec["inputs"][layer], rec["sizes"][layer], rec["outputs"][layer]
            assert got.shape[1] == x.shape[1] - 5
            if layer > 0:
                assert size.shape[:2] == x.shape[:2]
                assert torch.equal(size[:, :p], torch.ones_like(size[:, :p]))  # prefix sizes stay 1
            expected = stock_block(block, x, None if size is None else size_bias(size))
            assert (got[:, :p] - expected[:, :p]).abs().max().item() <= 1e-5
            if graph == "none":  # pure pruning: every image row is one of the stock rows, each once
                distance = (got[:, p:, None] - expected[:, None, p:]).abs().amax(dim=-1)
                best = distance.min(dim=-1)
                assert best.values.max().item() <= 1e-4
                assert all(len(set(row.tolist())) == row.numel() for row in best.indices)


# --- graph construction -----------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(4, 5), (3, 3), (1, 4), (2, 2), (14, 14)])
def test_spatial_neighbours(h, w):
    nbrs = spatial_neighbours(h, w)
    assert nbrs.shape == (h * w, 8)
    dense = dense_spatial(h, w)
    sets = []
    for i in range(h * w):
        row = [int(j) for j in nbrs[i] if j >= 0]
        assert len(row) == len(set(row)) and i not in row
        assert set(row) == set(torch.nonzero(dense[i]).flatten().tolist())
        assert all(j == -1 for j in nbrs[i].tolist() if j < 0)
        sets.append(set(row))
    for i in range(h * w):  # symmetric
        assert all(i in sets[j] for j in sets[i])
    if h >= 2 and w >= 2:
        corners = [0, w - 1, (h - 1) * w, h * w - 1]
        assert all(len(sets[c]) == 3 for c in corners)
    if h >= 3 and w >= 3:
        edges = [c for c in range(1, w - 1)] + [r * w for r in range(1, h - 1)]
        assert all(len(sets[e]) == 5 for e in edges)
        interior = [r * w + c for r in range(1, h - 1) for c in range(1, w - 1)]
        assert all(len(sets[i]) == 8 for i in interior)


def smooth_tokens(B, h, w, C, seed=0):
    """Token features that vary smoothly over the grid (so semantic neighbours are often spatial ones)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(h).repeat_interleave(w).float()
    cols = torch.arange(w).repeat(h).float()
    basis = torch.stack([torch.sin(rows * 0.7 + k) + torch.cos(cols * 0.9 - k) for k in range(C)], dim=-1)
    return basis.expand(B, -1, -1) + 0.3 * torch.randn(B, h * w, C, generator=g)


def test_semantic_neighbours_brute_force():
    x = torch.randn(2, 20, 6)
    M = 4
    idx = semantic_neighbours(x, M)
    assert idx.shape == (2, 20, M)
    for b in range(2):
        A = dense_semantic(x[b], M)
        for i in range(20):
            assert set(idx[b, i].tolist()) == set(torch.nonzero(A[i]).flatten().tolist())


@pytest.mark.parametrize("M", [1, 4, 8])
def test_semantic_graph(M):
    h, w = 4, 5
    x = torch.randn(2, h * w, 7)
    dense = build_graph(x, (h, w), M, "semantic").dense(h * w)
    for b in range(2):
        A = dense_semantic(x[b], M)
        pattern = (dense[b] != 0).float()
        assert torch.equal(pattern.sum(dim=1), torch.full((h * w,), float(M)))  # exactly M out-neighbours
        assert torch.all(dense[b].diagonal() == 0)  # no self loops
        assert torch.equal(pattern, A)  # the M most cosine-similar ones
        d = A.sum(1)
        assert torch.allclose(dense[b], A / torch.sqrt(d[:, None] * d[None, :]), atol=1e-6)


@pytest.mark.parametrize("kind", ["spatial", "mixed"])
def test_spatial_and_mixed_graph_normalisation(kind):
    h, w, M = 5, 6, 6
    x = smooth_tokens(2, h, w, 8)
    graph = build_graph(x, (h, w), M, kind)
    assert isinstance(graph, Graph)
    dense = graph.dense(h * w)
    overlaps = 0
    for b in range(2):
        spatial = dense_spatial(h, w)
        semantic = dense_semantic(x[b], M)
        A = spatial if kind == "spatial" else torch.maximum(spatial, semantic)  # union, each edge once
        overlaps += int((spatial * semantic).sum())
        d = A.sum(dim=1)
        expected = A / torch.sqrt(d[:, None] * d[None, :])  # D^-1/2 A D^-1/2, row degrees
        assert torch.allclose(dense[b], expected, atol=1e-6)
        assert torch.all(dense[b].diagonal() == 0)
        if kind == "mixed":
            degree_from_weights = ((dense[b] != 0).sum(1)).float()
            assert torch.equal(degree_from_weights, d)
    if kind == "mixed":
        assert overlaps > 0  # the union really had shared edges to count once


def test_graph_is_per_image():
    h, w, M = 4, 4, 3
    x = torch.randn(3, h * w, 5)
    together = build_graph(x, (h, w), M, "mixed").dense(h * w)
    for b in range(3):
        alone = build_graph(x[b:b + 1], (h, w), M, "mixed").dense(h * w)
        assert torch.allclose(together[b], alone[0])
        assert torch.allclose(together[b], dense_graph(x[b], (h, w), M, "mixed"), atol=1e-6)


# --- propagation ------------------------------------------------------------------------------------

def random_split(B, n, P, seed=0):
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(B)])
    return perms[:, P:].sort(dim=-1).values, perms[:, :P]


@pytest.mark.parametrize("kind", ["mixed", "spatial", "semantic"])
def test_split_graph(kind):
    h, w, M, B, P = 5, 5, 5, 2, 7
    n = h * w
    x = smooth_tokens(B, h, w, 6, seed=1)
    graph = build_graph(x, (h, w), M, kind)
    keep, prop = random_split(B, n, P)
    matrix, restricted = split_graph(graph, keep, prop)
    assert matrix.shape == (B, n - P, P)
    for b in range(B):
        A_hat = dense_graph(x[b], (h, w), M, kind)
        assert torch.allclose(matrix[b], A_hat[keep[b]][:, prop[b]], atol=1e-6)
        assert torch.allclose(restricted.dense(n - P)[b], A_hat[keep[b]][:, keep[b]], atol=1e-6)
    # a second round, on the restricted graph (new numbering), still indexes the original A_hat
    keep2, prop2 = random_split(B, n - P, 4, seed=2)
    matrix2, restricted2 = split_graph(restricted, keep2, prop2)
    for b in range(B):
        A1 = dense_graph(x[b], (h, w), M, kind)[keep[b]][:, keep[b]]
        assert torch.allclose(matrix2[b], A1[keep2[b]][:, prop2[b]], atol=1e-6)
        assert torch.allclose(restricted2.dense(n - P - 4)[b], A1[keep2[b]][:, keep2[b]], atol=1e-6)


def hand_map(H, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(1, H, n, n, generator=g), dim=-1)


@pytest.mark.parametrize("alpha", [0.1, 0.7])
def test_gtp_reduce_is_eq_10_and_12(alpha, reg_vit, fresh):
    """One GTP layer through `GTP.reduce`, with non-uniform incoming sizes, against dense Eq. 10/12."""
    model = gtpcli.patch(fresh(reg_vit), "gtp", P=6, alpha=alpha, M=5)
    red = model.reduction
    p, grid = red.prefix, red.grid
    n_img = grid[0] * grid[1]
    C = 64
    x0 = smooth_tokens(1, *grid, C, seed=3)
    red.graph = build_graph(x0, grid, red.M, red.graph_kind)
    x = torch.randn(1, p + n_img, C)
    size = 1 + 2 * torch.rand(1, p + n_img, 1)
    red.size = size.clone()
    weights = hand_map(2, p + n_img, seed=4)
    keys = torch.randn(1, 2, p + n_img, 32)
    out = red.reduce(1, x, weights, keys)
    keep, prop = top_split(hand_scores(weights[0], p, "mixed", "max"), 6)
    A_hat = dense_graph(x0[0], grid, 5, "mixed")
    Ap = A_hat[keep][:, prop]
    image, image_size = x[0, p:], size[0, p:]
    expected = torch.cat([x[0, :p], image[keep] + alpha * Ap @ image[prop]])
    expected_size = torch.cat([size[0, :p], image_size[keep] + alpha * Ap @ image_size[prop]])
    assert out.shape == (1, p + n_img - 6, C)
    assert torch.allclose(out[0], expected, atol=1e-5)
    assert torch.allclose(red.size[0], expected_size, atol=1e-6)
    assert torch.allclose(red.graph.dense(n_img - 6)[0], A_hat[keep][:, keep], atol=1e-6)


CONFIGS = [
    dict(),
    dict(alpha=0.5, M=4),
    dict(alpha=0.3, graph="spatial"),
    dict(alpha=0.3, graph="semantic", M=3),
    dict(alpha=0.3, graph="none"),
    dict(alpha=0.4, selection="diag"),
    dict(alpha=0.4, selection="broad", head_fusion="mean"),
    dict(alpha=0.4, selection="mixed", head_fusion="mean"),
    dict(alpha=0.4, selection="cls"),
    dict(alpha=0.4, prop_attn=False),
    dict(alpha=0.4, sparsity=0.8),
    dict(alpha=0.4, P=[3, 0, 10, 5]),
    dict(alpha=0.4, selection="cossim", sparsity=0.9),
    dict(variant="authors"),
    dict(variant="authors", alpha=0.4, sparsity=0.97, P=[3, 0, 10, 5]),
    dict(variant="authors", alpha=0.4, graph="semantic", M=3),
    dict(variant="authors", alpha=0.4, selection="broad", head_fusion="mean"),
    dict(variant="authors", alpha=0.4, selection="broad"),
]


@pytest.mark.parametrize("name,config", [
    pytest.param(name, c, id=name + "-" + (",".join(f"{k}={v}" for k, v in c.items()) or "default"))
    for name in ("small_vit", "small_gap_vit") for c in CONFIGS
    if not (name == "small_gap_vit" and c.get("selection") == "cls")])  # cls needs a [CLS] token
def test_whole_forward_against_dense_reference(config, name, request, fresh, image, record_blocks):
    stock = request.getfixturevalue(name)
    options = {"P": 6, **config}
    model = gtpcli.patch(fresh(stock), "gtp", **options)
    img = image(stock, seed=7)
    ref_kwargs = dict(P=options["P"], alpha=options.get("alpha", 0.1), M=options.get("M", 8),
                      graph=options.get("graph", "mixed"), selection=options.get("selection", "mixed"),
                      fusion=options.get("head_fusion", "max"), prop_attn=options.get("prop_attn", True),
                      theta=options.get("sparsity", 1.0), variant=options.get("variant", "paper"))
    with torch.no_grad(), record_blocks(model) as rec:
        got = model(img)
        expected, expected_size, schedule = reference_gtp(stock, img, **ref_kwargs)
    assert block_counts(rec) == schedule
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.allclose(model.reduction.size, expected_size, atol=1e-5)


def test_alpha_zero_and_no_graph_are_pure_pruning(small_vit, fresh, image):
    img = image(small_vit, batch=2)
    with torch.no_grad():
        zero = gtpcli.patch(fresh(small_vit), "gtp", P=7, alpha=0.0)
        none = gtpcli.patch(fresh(small_vit), "gtp", P=7, graph="none", alpha=0.5)
        propagating = gtpcli.patch(fresh(small_vit), "gtp", P=7, alpha=0.5)
        a, b, c = zero(img), none(img), propagating(img)
        pruned, pruned_size, _ = reference_gtp(small_vit, img, P=7, alpha=0.0)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, pruned, atol=1e-4)
    assert torch.equal(zero.reduction.size, torch.ones_like(zero.reduction.size))
    assert torch.equal(none.reduction.size, torch.ones_like(none.reduction.size))
    assert (a - c).abs().max().item() > 1e-3  # propagation matters when it is on


# --- sparsification and proportional attention -----------------------------------------------------

@pytest.mark.parametrize("theta,n", [(0.1, 7), (0.25, 7), (0.5, 7), (0.73, 7), (1.0, 7), (0.3, 11), (0.01, 13)])
def test_sparsify_keeps_the_largest(theta, n):
    w = torch.softmax(torch.randn(2, 3, n, n), dim=-1)
    out = sparsify(w, theta)
    keep = math.ceil(theta * n * n)
    assert theta == 1.0 or keep != theta * n * n  # a non-integer product: no rounding question here
    assert out.shape == w.shape
    for b in range(2):
        for h in range(3):
            nz = out[b, h] != 0
            assert int(nz.sum()) == keep
            assert torch.equal(out[b, h][nz], w[b, h][nz])  # kept values unchanged, no renormalisation
            if keep < n * n:
                assert w[b, h][nz].min() > w[b, h][~nz].max()  # the kept ones are the largest
            expected = hand_sparsify(w[b, h].unsqueeze(0), theta)[0]
            assert torch.equal(out[b, h], expected)


@pytest.mark.parametrize("theta,n", [(0.07, 10), (0.7, 10), (0.04, 35)])
def test_sparsify_count_when_theta_n2_is_an_integer(theta, n):
    """theta N^2 is a whole number here (7, 70, 49): exactly that many values survive, not one more."""
    w = torch.softmax(torch.randn(1, 2, n, n), dim=-1)
    expected = round(theta * n * n)
    assert abs(theta * n * n - expected) < 1e-9
    out = sparsify(w, theta)
    assert [int((out[0, h] != 0).sum()) for h in range(2)] == [expected, expected]


def assert_summary_of(summary, w, atol=1e-6):
    """An AttentionSummary against the hand map w (H, N, N) of one image."""
    assert torch.allclose(summary.diagonal, w.diagonal(dim1=-2, dim2=-1), atol=atol)
    assert torch.allclose(summary.columns, w.sum(dim=-2), atol=atol)
    assert torch.allclose(summary.first_row, w[:, 0], atol=atol)


@pytest.mark.parametrize("need", ["fused", "summary", "map"])
@pytest.mark.parametrize("name", ["qk_norm_vit", "small_vit"])
@pytest.mark.parametrize("block_bytes", [1 << 22, 9 * 9 * 4 * 3])  # everything at once; 3 slices at a time
def test_attend_with_proportional_attention(need, name, block_bytes, request, monkeypatch):
    monkeypatch.setattr(common, "BLOCK_BYTES", block_bytes)
    model = request.getfixturevalue(name)
    attn = model.blocks[1].attn
    B, n, C = 2, 9, model.embed_dim
    x = torch.randn(B, n, C)
    size = 1 + 4 * torch.rand(B, n, 1)
    with torch.no_grad():
        out, seen, keys = attend(attn, x, size_bias(size), need=need)
        for b in range(B):
            exp_out, exp_w, exp_k = hand_attention(attn, x[b], size[b])
            assert torch.allclose(out[b], exp_out, atol=1e-5)
            assert torch.allclose(keys[b], exp_k, atol=1e-6)
            if need == "map":
                assert torch.allclose(seen[b], exp_w, atol=1e-6)
            elif need == "summary":
                assert_summary_of(AttentionSummary(seen.diagonal[b], seen.columns[b], seen.first_row[b]), exp_w)
        if need == "fused":
            assert seen is None
        # all sizes 1 is plain attention, i.e. timm's own module
        plain, _, _ = attend(attn, x, size_bias(torch.ones(B, n, 1)), need=need)
        assert torch.allclose(plain, attn(x), atol=1e-5)
        unbiased, _, _ = attend(attn, x, None, need=need)
        assert torch.allclose(unbiased, attn(x), atol=1e-5)


@pytest.mark.parametrize("need", ["fused", "summary", "map"])
def test_attend_sparsified_output(need, small_vit, monkeypatch):
    monkeypatch.setattr(common, "BLOCK_BYTES", 8 * 8 * 4)  # one slice at a time
    attn = small_vit.blocks[0].attn
    x = torch.randn(1, 8, small_vit.embed_dim)
    size = 1 + torch.rand(1, 8, 1)
    with torch.no_grad():
        out, seen, _ = attend(attn, x, size_bias(size), need=need, sparsity=0.4)
        exp_out, exp_w, _ = hand_attention(attn, x[0], size[0], theta=0.4)
    if need == "map":
        assert torch.allclose(seen[0], exp_w, atol=1e-6)
    else:  # sparsification needs the map even when selection does not: the blocked path computes it
        assert_summary_of(AttentionSummary(seen.diagonal[0], seen.columns[0], seen.first_row[0]), exp_w)
    assert torch.allclose(out[0], exp_out, atol=1e-5)


# --- token selection --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["paper", "authors"])
@pytest.mark.parametrize("fusion", ["max", "mean"])
@pytest.mark.parametrize("selection", ["mixed", "diag", "broad", "cls", "cossim"])
def test_selection_on_hand_built_map(selection, fusion, variant):
    prefix, n, P = 1, 11, 5
    weights = hand_map(2, n, seed=29)
    scores = token_scores(weights, prefix, selection, fusion, variant=variant)
    expected = hand_scores(weights[0], prefix, selection, fusion, variant)
    assert scores.shape == (1, n - prefix)
    assert torch.allclose(scores[0], torch.tensor(expected), atol=1e-6)
    keep, prop = split(scores, P)
    exp_keep, exp_prop = top_split(expected, P)
    assert keep[0].tolist() == exp_keep
    assert sorted(prop[0].tolist()) == sorted(exp_prop)


def test_selection_strategies_disagree_on_the_hand_built_map():
    """Guards the test above: on that map the strategies pick different tokens, so each is pinned."""
    weights = hand_map(2, 11, seed=29)
    picks = {(s, f): tuple(top_split(hand_scores(weights[0], 1, s, f), 5)[0])
             for s in ("mixed", "diag", "broad", "cls") for f in ("max", "mean")}
    assert len(set(picks.values())) >= 6
    for f in ("max", "mean"):
        assert all(picks[("mixed", f)] != picks[(s, f)] for s in ("diag", "broad", "cls"))
    assert all(picks[(s, "max")] != picks[(s, "mean")] for s in ("mixed", "diag", "broad"))


def test_selection_with_several_prefix_tokens():
    prefix, n, P = 3, 9, 2
    weights = hand_map(2, n, seed=5)
    for selection in ("mixed", "diag", "broad"):
        scores = token_scores(weights, prefix, selection, "max")
        expected = hand_scores(weights[0], prefix, selection, "max")
        assert torch.allclose(scores[0], torch.tensor(expected), atol=1e-6)


def explicit_map() -> torch.Tensor:
    """A 1-prefix, 4-image-token map of two heads (rows = queries, each summing to 1), worked out by hand below."""
    h0 = torch.tensor([[0.40, 0.15, 0.15, 0.15, 0.15],
                       [0.10, 0.50, 0.10, 0.20, 0.10],
                       [0.10, 0.10, 0.20, 0.50, 0.10],
                       [0.10, 0.10, 0.10, 0.60, 0.10],
                       [0.10, 0.30, 0.10, 0.10, 0.40]])
    h1 = torch.tensor([[0.20, 0.20, 0.20, 0.20, 0.20],
                       [0.20, 0.20, 0.20, 0.20, 0.20],
                       [0.05, 0.05, 0.70, 0.10, 0.10],
                       [0.20, 0.20, 0.20, 0.20, 0.20],
                       [0.25, 0.25, 0.25, 0.05, 0.20]])
    return torch.stack([h0, h1]).unsqueeze(0)


def test_mixed_selection_explicit_example():
    """A 1-prefix, 4-image-token map whose Gamma x Psi ranking is worked out by hand."""
    weights = explicit_map()
    # Gamma (max over heads of A_ii), image tokens 1..4: [0.5, 0.7, 0.6, 0.4]
    # Psi: column sums without the diagonal, per head, then max:
    #   head 0: col1 0.15+0.10+0.10+0.30=0.65  col2 0.45  col3 0.15+0.20+0.50+0.10=0.95  col4 0.45
    #   head 1: col1 0.20+0.05+0.20+0.25=0.70  col2 0.85  col3 0.20+0.20+0.10+0.05=0.55  col4 0.70
    #   max: [0.70, 0.85, 0.95, 0.70]
    # Gamma x Psi = [0.35, 0.595, 0.57, 0.28] -> keep image tokens 1 and 2 (0-based among images)
    scores = token_scores(weights, 1, "mixed", "max")
    assert torch.allclose(scores[0], torch.tensor([0.35, 0.595, 0.57, 0.28]), atol=1e-6)
    keep, prop = split(scores, 2)
    assert keep[0].tolist() == [1, 2] and sorted(prop[0].tolist()) == [0, 3]
    # keeping one: diag keeps image token 1 (Gamma 0.7), broad image token 2 (Psi 0.95); cls is row 0
    assert split(token_scores(weights, 1, "diag", "max"), 3)[0][0].tolist() == [1]
    assert split(token_scores(weights, 1, "broad", "max"), 3)[0][0].tolist() == [2]
    assert torch.allclose(token_scores(weights, 1, "cls", "max")[0], torch.tensor([0.2, 0.2, 0.2, 0.2]))
    assert torch.allclose(token_scores(weights, 1, "cls", "mean")[0], torch.tensor([0.175, 0.175, 0.175, 0.175]))


def test_cossim_selection():
    """The authors' CosSim: attention rows (over all keys) fused over heads, compared by cosine; a token
    whose row resembles the others' is redundant. Image tokens 1 and 3 have the same rows here."""
    h0 = torch.tensor([[0.40, 0.15, 0.15, 0.15, 0.15],
                       [0.10, 0.50, 0.10, 0.20, 0.10],
                       [0.05, 0.05, 0.80, 0.05, 0.05],
                       [0.10, 0.10, 0.10, 0.60, 0.10],
                       [0.10, 0.50, 0.10, 0.20, 0.10]])
    h1 = torch.tensor([[0.20, 0.20, 0.20, 0.20, 0.20],
                       [0.30, 0.10, 0.20, 0.20, 0.20],
                       [0.10, 0.10, 0.10, 0.10, 0.60],
                       [0.20, 0.20, 0.20, 0.20, 0.20],
                       [0.30, 0.10, 0.20, 0.20, 0.20]])
    weights = torch.stack([h0, h1]).unsqueeze(0)
    # max over heads, rows of image tokens 0..3: [.3 .5 .2 .2 .2], [.1 .1 .8 .1 .6], [.2 .2 .2 .6 .2], [.3 .5 .2 .2 .2]
    rows = torch.tensor([[.3, .5, .2, .2, .2], [.1, .1, .8, .1, .6], [.2, .2, .2, .6, .2], [.3, .5, .2, .2, .2]])
    unit = rows / rows.norm(dim=-1, keepdim=True)
    expected = -(unit @ unit.T).sum(dim=-1)
    scores = token_scores(weights, 1, "cossim", "max")
    assert torch.allclose(scores[0], expected, atol=1e-6)
    assert torch.allclose(scores[0], torch.tensor(hand_scores(weights[0], 1, "cossim", "max")), atol=1e-6)
    keep, prop = split(scores, 2)
    assert sorted(prop[0].tolist()) == [0, 3]  # the redundant pair is propagated
    assert not torch.allclose(token_scores(weights, 1, "cossim", "mean"), scores)  # fusion matters


def test_authors_psi_includes_the_diagonal():
    """On `explicit_map`, the authors' Psi adds each token's own
    attention: head 0 columns [1.15, 0.65, 1.55, 0.85], head 1 [0.90, 1.55, 0.75, 0.90]."""
    weights = explicit_map()
    broad = token_scores(weights, 1, "broad", "max", variant="authors")
    assert torch.allclose(broad[0], torch.tensor([1.15, 1.55, 1.55, 0.90]), atol=1e-6)
    mean = token_scores(weights, 1, "broad", "mean", variant="authors")
    assert torch.allclose(mean[0], torch.tensor([1.025, 1.10, 1.15, 0.875]), atol=1e-6)
    mixed = token_scores(weights, 1, "mixed", "max", variant="authors")  # Gamma [0.5, 0.7, 0.6, 0.4]
    assert torch.allclose(mixed[0], torch.tensor([0.575, 1.085, 0.93, 0.36]), atol=1e-6)
    # keeping one by broad: the paper's Psi picks image token 2 (0.95 against 0.85), the authors' ...
    assert split(token_scores(weights, 1, "broad", "mean"), 3)[0][0].tolist() == [2]
    assert split(mean, 3)[0][0].tolist() == [2]
    assert token_scores(weights, 1, "diag", "max", variant="authors").equal(token_scores(weights, 1, "diag", "max"))


def test_variants_pick_different_tokens(small_vit, fresh, image):
    """Guards the dense-reference tests: the diagonal in Psi changes which tokens are kept, and the
    variants' outputs differ on a whole model."""
    weights = hand_map(2, 11, seed=32)
    picks = {v: top_split(hand_scores(weights[0], 1, "mixed", "max", v), 6)[0] for v in ("paper", "authors")}
    assert picks == {"paper": [1, 2, 6, 9], "authors": [1, 2, 3, 6]}
    for variant in ("paper", "authors"):
        assert split(token_scores(weights, 1, "mixed", "max", variant=variant), 6)[0][0].tolist() == picks[variant]
    img = image(small_vit, batch=2, seed=7)
    with torch.no_grad():
        paper, authors = (gtpcli.patch(fresh(small_vit), "gtp", P=6, selection="broad", variant=v)(img)
                          for v in ("paper", "authors"))
    assert (paper - authors).abs().max().item() > 1e-3


@pytest.mark.parametrize("theta,n,paper,authors", [
    (0.9, 10, 90, 92),    # int(100 * (1 - 0.9)) is int(9.999999999999998) = 9: 100 - 9 + 1
    (0.5, 7, 25, 26),     # ceil(24.5) = 25; int(24.5) = 24: 49 - 24 + 1
    (0.7, 10, 70, 71),    # int(30.000000000000004) = 30
    (0.995, 10, 100, 100),  # k = int(0.5) = 0: the authors' code keeps everything (its kthvalue needs k >= 1)
])
def test_sparsify_counts_of_both_variants(theta, n, paper, authors):
    w = torch.softmax(torch.randn(1, 2, n, n), dim=-1)
    for variant, count in (("paper", paper), ("authors", authors)):
        out = sparsify(w, theta, variant)
        assert [int((out[0, h] != 0).sum()) for h in range(2)] == [count, count]
        assert torch.equal(out[0], hand_sparsify(w[0], theta, variant))


def test_authors_semantic_graph_keeps_ties():
    """Tokens 1 and 2 are equally similar to token 0: with M = 1 the paper keeps one, the authors both."""
    angle = torch.tensor(0.3)
    x = torch.stack([torch.tensor([1.0, 0.0, 0.0]), torch.stack([angle.cos(), angle.sin(), torch.tensor(0.0)]),
                     torch.stack([angle.cos(), -angle.sin(), torch.tensor(0.0)]), torch.tensor([0.0, 0.0, 1.0])])
    paper = semantic_neighbours(x.unsqueeze(0), 1)[0]
    authors = semantic_neighbours(x.unsqueeze(0), 1, keep_ties=True)[0]
    assert paper.shape == (4, 1) and paper[0].item() in (1, 2)
    # token 3 is orthogonal to all three others: a three-way tie, all kept; rows are padded with -1
    assert authors.shape == (4, 3)
    neighbours = [sorted(j for j in row if j >= 0) for row in authors.tolist()]
    assert neighbours == [[1, 2], [0], [0], [0, 1, 2]]
    A = dense_semantic(x, 1, keep_ties=True)
    assert neighbours == [torch.nonzero(A[i]).flatten().tolist() for i in range(4)]


@pytest.mark.parametrize("name,degree", [("small_vit", 5), ("small_gap_vit", 6)])
def test_authors_semantic_degree_without_cls(name, degree, request, fresh, image):
    """M neighbours per token with [CLS], M + 1 without, in the authors' variant; always M in the paper's."""
    stock = request.getfixturevalue(name)
    for variant, expected in (("paper", 5), ("authors", degree)):
        model = gtpcli.patch(fresh(stock), "gtp", P=4, M=5, graph="semantic", variant=variant)
        red = model.reduction
        red.start(embed(model, image(model, batch=2, seed=3)))
        pattern = red.graph.dense(64) != 0
        assert torch.equal(pattern.sum(dim=-1), torch.full((2, 64), expected))


def test_authors_sparsify_every_block(small_vit, fresh):
    for variant, expected in (("paper", [0.8, 1.0, 0.8, 1.0]), ("authors", [0.8] * 4)):
        red = gtpcli.patch(fresh(small_vit), "gtp", P=[4, 0, 4, 0], sparsity=0.8, variant=variant).reduction
        assert [red.sparsity(layer) for layer in range(4)] == expected


def test_unknown_variant_is_refused(small_vit, fresh):
    with pytest.raises(ValueError, match="variant must be one of paper, authors"):
        gtpcli.patch(fresh(small_vit), "gtp", P=4, variant="official")


def test_random_selection_shapes_and_range():
    weights = hand_map(2, 10)
    scores = token_scores(weights.expand(3, -1, -1, -1), 2, "random", "max")
    assert scores.shape == (3, 8)
    assert torch.all((scores >= 0) & (scores < 1))
    keep, prop = split(scores, 3)
    assert keep.shape == (3, 5) and prop.shape == (3, 3)
    for b in range(3):
        assert keep[b].tolist() == sorted(keep[b].tolist())
        assert sorted(keep[b].tolist() + prop[b].tolist()) == list(range(8))


@pytest.mark.parametrize("selection,sparsity", [("random", 1.0), ("random", 0.9), ("cossim", 1.0), ("cossim", 0.9)])
def test_random_and_cossim_selection_run_in_a_model(selection, sparsity, small_vit, fresh, image, record_blocks):
    """These strategies need no attention map; with sparsity 1 none is computed (fused attention)."""
    model = gtpcli.patch(fresh(small_vit), "gtp", P=6, selection=selection, sparsity=sparsity)
    with torch.no_grad(), record_blocks(model) as rec:
        out = model(image(model, batch=2))
    assert block_counts(rec) == [65 - 6 * l for l in range(4)]
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vit_medium_gap", "small_gap_vit", "reg_gap_vit"])
def test_cls_selection_needs_a_cls_token(name, request, fresh):
    stock = request.getfixturevalue(name)
    assert stock.cls_token is None
    model = fresh(stock)
    with pytest.raises(ValueError):
        gtpcli.patch(model, "gtp", P=4, selection="cls")
    assert "reduction" not in model.__dict__


@pytest.mark.parametrize("bad", [dict(selection="nope"), dict(graph="dense"), dict(head_fusion="min"),
                                 dict(sparsity=0.0), dict(sparsity=1.5), dict(M=0)])
def test_bad_options_raise(bad, small_vit, fresh):
    with pytest.raises(ValueError):
        gtpcli.patch(fresh(small_vit), "gtp", P=2, **bad)


# --- a P that exhausts the tokens --------------------------------------------------------------------

@pytest.mark.parametrize("P", [16, 40, [0, 0, 60, 5], [64, 0, 0, 0]])
def test_exhausting_p_raises_naming_the_layer(P, small_vit, fresh):
    # 64 image tokens, 4 layers: each layer must keep at least one image token
    with pytest.raises(ValueError, match="layer"):
        gtpcli.patch(fresh(small_vit), "gtp", P=P)


def test_largest_valid_p_runs(small_vit, fresh, image, record_blocks):
    model = gtpcli.patch(fresh(small_vit), "gtp", P=15)  # 64 - 4 * 15 = 4 image tokens at the end
    with torch.no_grad(), record_blocks(model) as rec:
        out = model(image(model))
    assert block_counts(rec) == [65, 50, 35, 20]
    assert model.reduction.size.shape == (1, 5, 1)
    assert torch.isfinite(out).all()


def test_setting_an_exhausting_p_raises(small_vit, fresh):
    model = gtpcli.patch(fresh(small_vit), "gtp", P=4)
    with pytest.raises(ValueError, match="layer"):
        model.reduction.P = 20


# --- batches and dtypes -------------------------------------------------------------------------------

def test_batch_equals_images_alone(vit_tiny, fresh, image):
    model = gtpcli.patch(fresh(vit_tiny), "gtp", P=8)
    img = image(model, batch=3, seed=3)
    with torch.no_grad():
        together = model(img)
        size_together = model.reduction.size.clone()
        for b in range(3):
            alone = model(img[b:b + 1])
            assert (together[b] - alone[0]).abs().max().item() <= 1e-4
            assert torch.allclose(size_together[b], model.reduction.size[0], atol=1e-5)


def test_batch_with_a_repeated_image_gives_repeated_rows(small_gap_vit, fresh, image):
    model = gtpcli.patch(fresh(small_gap_vit), "gtp", P=9, alpha=0.5)
    one = image(model, seed=1)
    other = image(model, seed=2)
    with torch.no_grad():
        out = model(torch.cat([one, other, one]))
    assert torch.allclose(out[0], out[2], atol=1e-5)
    assert (out[0] - out[1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_on_cpu(dtype, vit_tiny, fresh, image, record_blocks):
    model = gtpcli.patch(fresh(vit_tiny), "gtp", P=8, sparsity=0.9).to(dtype)
    img = image(model, batch=2, dtype=dtype)
    with torch.no_grad(), record_blocks(model) as rec:
        out = model(img)
    assert out.dtype == dtype and out.shape == (2, 1000)
    assert torch.isfinite(out).all()
    assert block_counts(rec) == [197 - 8 * l for l in range(12)]
    assert model.reduction.size.dtype == dtype and torch.isfinite(model.reduction.size).all()


def test_cossim_macs_match_the_analytic_model(small_vit, fresh):
    """cossim compares attention rows: N_img^2 N MACs per reducing layer, which fvcore counts and the
    analytic model adds; the authors' variant costs what the paper's does."""
    from gtpcli.cost import analytic as A
    from gtpcli.models import backbones
    from gtpcli.measure.flops import count_macs

    arch = backbones.arch_of(small_vit)
    image = torch.randn(1, 3, 64, 64)
    counted, analytic = {}, {}
    for name, hparams in {"paper": {}, "cossim": {"selection": "cossim"}, "authors": {"variant": "authors"}}.items():
        model = gtpcli.patch(fresh(small_vit), "gtp", P=6, **hparams)
        counted[name] = count_macs(model, image).macs
        analytic[name] = methods.implemented_overhead(arch, "gtp", model.reduction.removals, hparams)
    assert counted["cossim"] - counted["paper"] == analytic["cossim"] - analytic["paper"] == sum(
        (n - 1) ** 2 * n for n in (65, 59, 53, 47))
    assert counted["authors"] == counted["paper"]
