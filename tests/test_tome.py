"""ToMe (bipartite soft matching, size-weighted merging) against independent computations."""

from __future__ import annotations

import pytest
import torch

import gtpcli
from gtpcli.methods.blocks import size_bias
from gtpcli.methods.tome.patch import ToMe, bipartite_matching, merge


def block_counts(record):
    return [x.shape[1] for x in record["inputs"]]


def hand_attention(attn, h, size):
    """softmax(QK^T scale + log s) V on one image (N, C), written out; returns (output, keys (H, N, d))."""
    n, _ = h.shape
    qkv = attn.qkv(h).reshape(n, 3, attn.num_heads, -1).permute(1, 2, 0, 3)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    logits = (q @ k.transpose(-1, -2)) * attn.scale
    if size is not None:
        logits = logits + size.reshape(1, 1, n).log()
    out = (torch.softmax(logits, dim=-1) @ v).transpose(0, 1).reshape(n, -1)
    return attn.proj(attn.norm(out)), k


def hand_matching(metric: torch.Tensor, r: int, prefix: int = 0) -> tuple[dict[int, int], list[int]]:
    """Bipartite soft matching on one image (N, d), by the official ToMe rules: tokens at even positions
    (set A) each pick their most cosine-similar token at an odd position (set B), over all tokens; the
    prefix tokens in A never merge and those in B never receive; the r A tokens with the most similar
    partners are merged. Returns ({A position: B position}, the unmerged A positions in similarity order)."""
    rows = metric.double().tolist()
    n = len(rows)

    def cos(i, j):
        a, b = rows[i], rows[j]
        return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5

    edges = []
    for i in range(0, n, 2):
        if i < prefix:
            edges.append((float("-inf"), i, None))
            continue
        best = max((j for j in range(1, n, 2) if j >= prefix), key=lambda j: cos(i, j))
        edges.append((cos(i, best), i, best))
    edges.sort(key=lambda e: (-e[0], e[1]))
    if 0 < r < len(edges):
        assert edges[r - 1][0] - edges[r][0] > 1e-6, "tied edges at the cut: ill-posed test input"
    return {i: j for _, i, j in edges[:r]}, [i for _, i, _ in edges[r:]]


def hand_order(n: int, pairs: dict[int, int], unmerged: list[int], prefix: int) -> list[int]:
    """Positions of the surviving tokens in the official output order: with prefix tokens, the prefix in
    its order, then the unmerged A tokens by position, then B; without, unmerged A in similarity order, then B."""
    b_rows = list(range(1, n, 2))
    if prefix == 0:
        return unmerged + b_rows
    lead = list(range(prefix))
    return lead + sorted(i for i in unmerged if i >= prefix) + [j for j in b_rows if j >= prefix]


def hand_merge(x: torch.Tensor, size: torch.Tensor, pairs: dict[int, int], order: list[int]):
    """Size-weighted average of each B token with the A tokens merged into it; one image (N, C), (N, 1),
    the surviving tokens and sizes in `order` (positions of the unmerged A tokens and of every B token)."""
    tokens, sizes = [], []
    for j in order:
        members = [j] + [i for i, partner in pairs.items() if partner == j]
        total = sum(size[m] for m in members)
        tokens.append(sum(x[m] * size[m] for m in members) / total)
        sizes.append(total)
    return torch.stack(tokens), torch.stack(sizes)


# --- r = 0 is the stock model; LayerScale is kept ------------------------------------------------------

@pytest.mark.parametrize("name", ["deit_small", "vit_medium_gap", "reg_vit", "reg_gap_vit", "qk_norm_vit"])
def test_r0_equals_stock(name, request, fresh, image):
    stock = request.getfixturevalue(name)
    img = image(stock)
    with torch.no_grad():
        expected = stock(img)
        model = gtpcli.patch(fresh(stock), "tome", r=0)
        assert model.reduction.method == "tome" and model.reduction.removals == [0] * len(model.blocks)
        got = model(img)
    assert (got - expected).abs().max().item() <= 1e-5


def test_layerscale_is_kept(vit_medium_gap, fresh, image):
    model = fresh(vit_medium_gap)
    assert all(type(b.ls1).__name__ == "LayerScale" for b in model.blocks)
    img = image(model)
    with torch.no_grad():
        before = model(img)
        for index, block in enumerate(model.blocks):
            block.ls1.gamma.fill_(0.37 + 0.05 * index)
            block.ls2.gamma.fill_(1.9 - 0.1 * index)
        expected = model(img)
        assert (expected - before).abs().max().item() > 1e-3  # the gammas matter
        gtpcli.patch(model, "tome", r=0)
        got = model(img)
        gtpcli.unpatch(model)
        gtpcli.patch(model, "gtp", P=0)
        got_gtp = model(img)
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got_gtp - expected).abs().max().item() <= 1e-5


def test_unpatch_restores_exactly(small_gap_vit, fresh, image):
    model = fresh(small_gap_vit)
    img = image(model, batch=2)
    with torch.no_grad():
        expected = model(img)
        gtpcli.patch(model, "tome", r=6)
        model(img)
        gtpcli.unpatch(model)
        assert torch.equal(model(img), expected)
    assert "reduction" not in model.__dict__


# --- schedule and clamping -------------------------------------------------------------------------------

def test_token_schedule(vit_tiny, fresh, image, record_blocks):
    model = gtpcli.patch(fresh(vit_tiny), "tome", r=8)
    img = image(model)
    with torch.no_grad(), record_blocks(model) as rec:
        out = model(img)
    assert block_counts(rec) == [197 - 8 * l for l in range(12)]
    assert model.reduction.clamped == []
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    size = model.reduction.size
    assert size.shape == (1, 197 - 8 * 12, 1)
    assert size[0, 0, 0].item() == 1.0  # the [CLS] token is never merged
    assert abs(size[0, 1:].sum().item() - 196) <= 1e-3  # ToMe conserves size
    model.reduction.P = [4, 0, 2, 6, 0, 0, 8, 1, 0, 3, 5, 7]
    with torch.no_grad(), record_blocks(model) as rec:
        model(img)
    Ps = [4, 0, 2, 6, 0, 0, 8, 1, 0, 3, 5, 7]
    assert block_counts(rec) == [197 - sum(Ps[:l]) for l in range(12)]


@pytest.mark.parametrize("r", [20, 40, [0, 30, 30, 30]])
def test_large_r_is_clamped(r, small_vit, fresh, image, record_blocks):
    model = gtpcli.patch(fresh(small_vit), "tome", r=r)
    asked = [r] * 4 if isinstance(r, int) else list(r)
    # 64 image tokens; a layer with n image tokens can merge at most n // 2 of them
    image_tokens, used, clamped = 64, [], []
    for layer, want in enumerate(asked):
        can = min(want, image_tokens // 2)
        if can < want:
            clamped.append((layer, want, can))
        used.append(can)
        image_tokens -= can
    assert model.reduction.clamped == clamped and clamped
    assert model.reduction.removals == used
    with torch.no_grad(), record_blocks(model) as rec:
        out = model(image(model, batch=2))
    assert block_counts(rec) == [65 - sum(used[:l]) for l in range(4)]
    assert all(count >= 2 for count in block_counts(rec))
    assert torch.isfinite(out).all()
    size = model.reduction.size
    assert size.shape == (2, 65 - sum(used), 1)
    assert torch.allclose(size[:, 1:].sum(dim=1), torch.full((2, 1), 64.0), atol=1e-3)


def test_clamping_when_set_after_patching(small_vit, fresh):
    model = gtpcli.patch(fresh(small_vit), "tome", r=4)
    assert model.reduction.clamped == []
    model.reduction.P = 1000
    assert model.reduction.clamped and model.reduction.clamped[0] == (0, 1000, 32)
    model.reduction.P = 4
    assert model.reduction.clamped == []


@pytest.mark.parametrize("name", ["reg_vit", "reg_gap_vit", "small_gap_vit"])
def test_total_size_is_the_number_of_image_tokens(name, request, fresh, image):
    stock = request.getfixturevalue(name)
    model = gtpcli.patch(fresh(stock), "tome", r=9)
    p = stock.num_prefix_tokens
    with torch.no_grad():
        model(image(model, batch=2))
    size = model.reduction.size
    assert size.shape == (2, p + 64 - 4 * 9, 1)
    assert torch.equal(size[:, :p], torch.ones_like(size[:, :p]))
    assert torch.allclose(size[:, p:].sum(dim=1), torch.full((2, 1), 64.0), atol=1e-4)
    assert torch.all(size[:, p:] >= 1)


# --- matching and merging ----------------------------------------------------------------------------------

def hand_tokens(eighth: torch.Tensor | None = None) -> torch.Tensor:
    """Nine tokens whose cosine similarities decide ToMe's merges; positions 0, 2, 4, 6, 8 are set A.
    Best partners: 0 -> 1 (1.0, but 0 is [CLS] when there is a prefix), 6 -> 7 (0.995), 4 -> 5 (0.981),
    2 -> 3 (0.894), 8 -> 3 (0.781)."""
    e = torch.eye(8)
    rows = [e[0] + e[1], e[0] + e[1], e[2] + 0.5 * e[3], e[2], e[4], e[4] + 0.2 * e[5], e[6] + 0.1 * e[7], e[6],
            e[2] + 0.8 * e[3] if eighth is None else eighth]
    return torch.stack(rows)


def tome_groups(tokens: torch.Tensor, r: int, prefix: int):
    """gtpcli's matching and size-weighted merge of one image (N, d) with unit sizes: tokens and sizes."""
    x = tokens.unsqueeze(0)
    unmerged, merged, partner = bipartite_matching(x, r, prefix)
    out = merge(torch.cat([x, torch.ones_like(x[..., :1])], dim=-1), unmerged, merged, partner, prefix)[0]
    return out[:, :-1] / out[:, -1:], out[:, -1]


def expected_groups(tokens: torch.Tensor, groups: list[list[int]]):
    return torch.stack([tokens[g].mean(dim=0) for g in groups]), torch.tensor([float(len(g)) for g in groups])


@pytest.mark.parametrize("prefix,r,groups", [
    # [CLS] is A[0] and never merges, though its twin (position 1) is the best pair of all;
    # the unmerged A tokens come back in position order ([0, 2, 8], not similarity order [2, 8, 0])
    (1, 2, [[0], [2], [8], [1], [3], [5, 4], [7, 6]]),
    (1, 3, [[0], [8], [1], [3, 2], [5, 4], [7, 6]]),
    (1, 1, [[0], [2], [4], [8], [1], [3], [5], [7, 6]]),
    # no prefix: position 0 is an image token and merges first; unmerged A stay in similarity order
    (0, 2, [[4], [2], [8], [1, 0], [3], [5], [7, 6]]),
    (0, 4, [[8], [1, 0], [3, 2], [5, 4], [7, 6]]),
])
def test_official_rules_hand_built(prefix, r, groups):
    tokens = hand_tokens()
    got, size = tome_groups(tokens, r, prefix)
    want, want_size = expected_groups(tokens, groups)
    assert torch.allclose(got, want) and torch.equal(size, want_size)


def test_distillation_token_never_receives():
    """[CLS] (A[0]) and the distillation token (B[0]) lead in their order; token 8, the distillation token's
    twin, must take its second-best partner (3) instead: ToMe's `scores[..., :, 0] = -inf`."""
    e = torch.eye(8)
    tokens = hand_tokens(eighth=e[0] + e[1] + 0.3 * e[2])
    got, size = tome_groups(tokens, 4, prefix=2)
    want, want_size = expected_groups(tokens, [[0], [1], [3, 2, 8], [5, 4], [7, 6]])
    assert torch.allclose(got, want) and torch.equal(size, want_size)
    got, _ = tome_groups(tokens, 3, prefix=1)  # without the protection 8 merges into 1
    want, _ = expected_groups(tokens, [[0], [2], [1, 8], [3], [5, 4], [7, 6]])
    assert torch.allclose(got, want)


@pytest.mark.parametrize("n,r,prefix", [(12, 3, 0), (13, 6, 1), (9, 4, 0), (2, 1, 0), (14, 5, 2), (21, 8, 5)])
def test_bipartite_matching_random(n, r, prefix):
    metric = torch.randn(2, n, 5)
    unmerged, merged, partner = bipartite_matching(metric, r, prefix)
    n_a = (n + 1) // 2
    for b in range(2):
        assert sorted(unmerged[b].tolist() + merged[b].tolist()) == list(range(n_a))
        got = {2 * a: 2 * j + 1 for a, j in zip(merged[b].tolist(), partner[b].tolist())}
        pairs, rest = hand_matching(metric[b], r, prefix)
        assert got == pairs
        assert [2 * a for a in unmerged[b].tolist()] == (sorted(rest) if prefix else rest)


@pytest.mark.parametrize("n,r,prefix", [(12, 3, 0), (13, 6, 1), (20, 9, 2), (21, 8, 5)])
def test_merge_conserves_size_weighted_sums(n, r, prefix):
    x = torch.randn(2, n, 4, dtype=torch.float64)
    size = 1 + 3 * torch.rand(2, n, 1, dtype=torch.float64)
    unmerged, merged, partner = bipartite_matching(torch.randn(2, n, 3, dtype=torch.float64), r, prefix)
    features = merge(torch.cat([x * size, size], dim=-1), unmerged, merged, partner, prefix)
    assert features.shape == (2, n - r, 5)
    assert torch.equal(features[:, :prefix], torch.cat([x * size, size], dim=-1)[:, :prefix])  # prefix leads
    assert torch.allclose((x * size).sum(dim=1), features[..., :-1].sum(dim=1))
    assert torch.allclose(size.sum(dim=1), features[..., -1:].sum(dim=1))


@pytest.mark.parametrize("name", ["small_vit", "reg_vit", "small_gap_vit"])
def test_tome_reduce_against_hand_merge(name, request, fresh):
    """One `ToMe.reduce` with non-uniform incoming sizes: size-weighted averages in the official order."""
    stock = request.getfixturevalue(name)
    model = gtpcli.patch(fresh(stock), "tome", r=7)
    red = model.reduction
    p = red.prefix
    n = p + 64
    x = torch.randn(1, n, stock.embed_dim)
    size = torch.cat([torch.ones(1, p, 1), 1 + 2 * torch.rand(1, 64, 1)], dim=1)
    keys = torch.randn(1, 2, n, 16)
    red.size = size.clone()
    out = red.reduce(0, x, None, keys)
    assert out.shape == (1, n - 7, stock.embed_dim)
    assert torch.equal(out[:, :p], x[:, :p])
    assert torch.equal(red.size[:, :p], size[:, :p])
    pairs, unmerged = hand_matching(keys.mean(dim=1)[0], 7, p)
    tokens, sizes = hand_merge(x[0], size[0], pairs, hand_order(n, pairs, unmerged, p))
    assert torch.allclose(out[0], tokens, atol=1e-5)
    assert torch.allclose(red.size[0], sizes, atol=1e-5)


@pytest.mark.parametrize("name,r", [("small_vit", 6), ("reg_gap_vit", 5), ("qk_norm_vit", [10, 3, 0, 8]),
                                    ("small_gap_vit", 7), ("reg_vit", 9)])
def test_every_block_against_hand_tome(name, r, request, fresh, image, record_blocks):
    """Each block, from its recorded input and sizes: attention with log-size bias, matching on the
    head-averaged keys of all tokens, size-weighted merging in the official order, MLP."""
    stock = request.getfixturevalue(name)
    model = gtpcli.patch(fresh(stock), "tome", r=r)
    p = stock.num_prefix_tokens
    rs = [r] * 4 if isinstance(r, int) else r
    with torch.no_grad(), record_blocks(model) as rec:
        model(image(model, batch=2, seed=5))
        for layer, block in enumerate(model.blocks):
            x_in, size_in, got = rec["inputs"][layer], rec["sizes"][layer], rec["outputs"][layer]
            next_size = rec["sizes"][layer + 1] if layer + 1 < len(model.blocks) else model.reduction.size
            for b in range(2):
                s = torch.ones(x_in.shape[1], 1) if size_in is None else size_in[b]
                out, k = hand_attention(block.attn, block.norm1(x_in[b]), s)
                x = x_in[b] + block.ls1(out)
                if rs[layer] > 0:
                    pairs, unmerged = hand_matching(k.mean(dim=0), rs[layer], p)
                    x, s = hand_merge(x, s, pairs, hand_order(x.shape[0], pairs, unmerged, p))
                x = x + block.ls2(block.mlp(block.norm2(x)))
                assert got.shape[1] == x.shape[0]
                assert (got[b] - x).abs().max().item() <= 1e-4
                assert torch.allclose(next_size[b], s, atol=1e-5)


def test_bias_is_log_size():
    size = torch.tensor([[[1.0], [2.0], [4.0]]])
    bias = size_bias(size)
    assert bias.shape == (1, 1, 1, 3)
    assert torch.allclose(bias.flatten(), torch.log(torch.tensor([1.0, 2.0, 4.0])))
    assert size_bias(None) is None


# --- batches and dtypes --------------------------------------------------------------------------------------

def test_batch_equals_images_alone(vit_tiny, fresh, image):
    model = gtpcli.patch(fresh(vit_tiny), "tome", r=8)
    img = image(model, batch=3, seed=4)
    with torch.no_grad():
        together = model(img)
        for b in range(3):
            assert (together[b] - model(img[b:b + 1])[0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_on_cpu(dtype, small_vit, fresh, image):
    model = gtpcli.patch(fresh(small_vit), "tome", r=6).to(dtype)
    with torch.no_grad():
        out = model(image(model, batch=2, dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, 10) and torch.isfinite(out).all()


def test_tome_instance_is_the_reduction(small_vit, fresh):
    model = gtpcli.patch(fresh(small_vit), "tome", r=3)
    assert isinstance(model.reduction, ToMe)
    assert model.reduction.prefix == 1 and model.reduction.tokens == 65
