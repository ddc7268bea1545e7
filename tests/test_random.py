"""Random token dropping, the floor: P random image tokens out per block, never a prefix token, the same
ones for an image in any batch; the stock model at P = 0; MACs, profile, trace, complexity and bad input."""

from __future__ import annotations

import json
import random

import pytest
import timm
import torch
from test_tcvit import hand_attention
from typer.testing import CliRunner

import gtpcli
from gtpcli import methods
from gtpcli.cli import app
from gtpcli.cost import analytic as A
from gtpcli.errors import GtpcliError
from gtpcli.measure.flops import count_macs
from gtpcli.methods.random import patch as R
from gtpcli.models import backbones

runner = CliRunner()


@pytest.fixture(scope="module")
def deit_tiny():
    """DeiT-Tiny with random weights at 128 px: 64 image tokens + [CLS], 12 blocks."""
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=128).eval()


def analytic_macs(model, hparams=None):
    arch, removals = backbones.arch_of(model), model.reduction.removals
    return (sum(methods.backbone_macs(arch, "random", removals, hparams).values())
            + methods.implemented_overhead(arch, "random", removals, hparams))


def kept_of(model, x):
    """Each block's kept image-token indices, per image, after one forward of x."""
    with torch.no_grad():
        model(x)
    return {layer: kept.clone() for layer, kept in model.reduction.kept.items()}


# --- the draw ---------------------------------------------------------------------------------------

def test_the_word_arithmetic_is_murmur3_without_overflow():
    """`mix` on int64 tensors (products in 16-bit halves) against murmur3's fmix32 in Python's exact integers."""
    def fmix32(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) % 2 ** 32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) % 2 ** 32
        return h ^ (h >> 16)

    rng = random.Random(5)
    words = [0, 1, 2 ** 31, 2 ** 32 - 1] + [rng.getrandbits(32) for _ in range(2000)]
    assert R.mix(torch.tensor(words)).tolist() == [fmix32(w) for w in words]
    assert [R.mix(w) for w in words[:50]] == [fmix32(w) for w in words[:50]]


def dropped_mask(kept: torch.Tensor, n: int) -> torch.Tensor:
    return torch.ones(kept.shape[0], n, dtype=torch.bool).scatter(1, kept, False)


def test_no_position_is_favoured_in_any_block():
    """Over 4000 images, each of 64 positions is dropped by block 0 about P/n of the time, and by block 1 (among
    the tokens left) about P/n of the time too (within 5 binomial standard deviations); never twice."""
    images, n, P = 4000, 64, 8
    scores = R.drop_order(R.mix(torch.arange(images)), seed=0, n=n)
    first = R.kept_tokens(scores, P)
    assert first.shape == (images, n - P) and torch.equal(first, first.sort(dim=1).values)
    second = first.gather(1, R.kept_tokens(scores.gather(1, first), P))  # block 1's kept, as positions
    by_first = dropped_mask(first, n)
    by_second = dropped_mask(second, n) & ~by_first
    expected, spread = images * P / n, (images * P / n * (1 - P / n)) ** 0.5
    for dropped in (by_first, by_second):
        assert (dropped.sum(dim=1) == P).all()
        assert (dropped.sum(dim=0).float() - expected).abs().max() <= 5 * spread


def test_seeds_any_size_give_their_own_draw():
    keys = R.mix(torch.arange(200))
    draws = [R.kept_tokens(R.drop_order(keys, seed, 64), 8) for seed in (0, 1, 2 ** 32, 2 ** 40 + 1)]
    for i, first in enumerate(draws):
        for second in draws[i + 1:]:
            assert (first != second).any(dim=1).float().mean() > 0.95
    assert torch.equal(R.kept_tokens(R.drop_order(keys, 2 ** 40 + 1, 64), 8), draws[-1])


# --- the patched model ------------------------------------------------------------------------------

def test_p0_is_stock_timm(deit_tiny, fresh, image):
    x = image(deit_tiny, batch=3)
    with torch.no_grad():
        stock = deit_tiny(x)
        for P in (0, [0] * 12):
            assert (gtpcli.patch(fresh(deit_tiny), "random", P=P, seed=3)(x) - stock).abs().max() <= 1e-6


@pytest.mark.parametrize("P", [4, [0, 5, 3, 0, 1, 2, 6, 0, 4, 4, 7, 2]])
def test_token_counts_follow_the_schedule(P, deit_tiny, fresh, image, record_blocks):
    model = gtpcli.patch(fresh(deit_tiny), "random", P=P)
    removals = A.per_layer(P, 12)
    with torch.no_grad(), record_blocks(model) as rec:
        model(image(model, batch=2))
    expected = [65 - sum(removals[:layer]) for layer in range(12)]  # N - l P for a single P
    assert [x.shape[1] for x in rec["inputs"]] == expected == A.token_schedule(65, 12, removals)
    assert [x.shape[1] for x in rec["outputs"]] == [n - r for n, r in zip(expected, removals)]


@pytest.mark.parametrize("name, P", [("deit_tiny", 4), ("reg_vit", 9), ("small_gap_vit", [7, 0, 12, 3])])
def test_every_block_keeps_its_prefix_and_its_kept_tokens_in_order(name, P, request, fresh, image, record_blocks):
    """From each block's recorded input, by hand: attention and residual, then [the prefix tokens, the image
    tokens the block reports kept], then the MLP. The kept ones are n - P distinct indices in ascending order."""
    model = gtpcli.patch(fresh(request.getfixturevalue(name)), "random", P=P)
    prefix, removals = model.reduction.prefix, model.reduction.removals
    with torch.no_grad(), record_blocks(model) as rec:
        model(image(model, batch=2, seed=7))
        for layer, block in enumerate(model.blocks):
            x_in = rec["inputs"][layer]
            n = x_in.shape[1] - prefix
            for b in range(2):
                x = x_in[b] + block.ls1(hand_attention(block.attn, block.norm1(x_in[b]))[0])
                if removals[layer]:
                    kept = model.reduction.kept[layer][b].tolist()
                    assert kept == sorted(set(kept)) and len(kept) == n - removals[layer] and 0 <= kept[0] <= kept[-1] < n
                    x = torch.cat([x[:prefix], x[prefix:][kept]])
                x = x + block.ls2(block.mlp(block.norm2(x)))
                assert (rec["outputs"][layer][b] - x).abs().max().item() <= 1e-4
    assert prefix == {"deit_tiny": 1, "reg_vit": 5, "small_gap_vit": 0}[name]


def test_an_image_loses_the_same_tokens_in_any_batch(deit_tiny, fresh, image):
    """Five images alone, in another order, twice in one batch, or with others: the same kept tokens in every
    block and the same logits; different images lose different tokens."""
    model = gtpcli.patch(fresh(deit_tiny), "random", P=4)
    x = image(model, batch=5, seed=11)
    whole = kept_of(model, x)
    with torch.no_grad():
        logits = model(x)
    for order in ([4, 0], [2], [1, 1, 3], [3, 2, 1, 0, 4, 3, 2, 1]):
        kept = kept_of(model, x[order])
        assert all(torch.equal(kept[layer], whole[layer][order]) for layer in range(12)), order
        with torch.no_grad():
            assert torch.allclose(model(x[order]), logits[order], atol=1e-5), order
    first = whole[0]
    assert all(not torch.equal(first[i], first[j]) for i in range(5) for j in range(i + 1, 5))


def test_another_seed_drops_other_tokens(deit_tiny, fresh, image):
    x = image(deit_tiny, batch=4, seed=2)
    zero = kept_of(gtpcli.patch(fresh(deit_tiny), "random", P=4), x)
    assert all(torch.equal(zero[layer], kept) for layer, kept in
               kept_of(gtpcli.patch(fresh(deit_tiny), "random", P=4, seed=0), x).items())
    for seed in (1, 2 ** 33):
        other = kept_of(gtpcli.patch(fresh(deit_tiny), "random", P=4, seed=seed), x)
        assert all((other[layer] != zero[layer]).any(dim=1).all() for layer in range(12)), seed


@pytest.mark.parametrize("P", [4, [0, 5, 3, 0, 1, 2, 6, 0, 4, 4, 7, 2]])
def test_fvcore_counts_the_analytic_model_exactly(P, deit_tiny, fresh):
    """The draw is integer hashing and a top-k: nothing a MAC counter sees, so the backbone alone."""
    model = gtpcli.patch(fresh(deit_tiny), "random", P=P)
    count = count_macs(model, torch.randn(1, 3, 128, 128))
    assert count.uncounted == [] and methods.implemented_overhead(backbones.arch_of(model), "random", A.per_layer(P, 12)) == 0
    assert count.macs == analytic_macs(model)
    assert count.flop_counter_macs == count.matmul_macs


def test_bad_settings_are_one_line_errors(deit_tiny, fresh):
    for kwargs, message in (({"seed": -1}, ">= 0"), ({"seed": 1.5}, "integer"), ({"seed": "x"}, "number"),
                            ({"P": 6}, "too large")):
        with pytest.raises(GtpcliError, match=message):
            gtpcli.patch(fresh(deit_tiny), "random", **kwargs)


# --- the commands -----------------------------------------------------------------------------------

def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_profile_runs_random_at_p0_and_p4(tmp_path):
    result = invoke("profile", "deit_t", "--method", "random", "--P", "0,4", "--no-speed", "--format", "json",
                    "--output", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["method"], r["P"]) for r in rows] == [("stock", 0), ("random", 0), ("random", 4)]
    stock, p0, p4 = rows
    assert p0["macs"] == stock["macs"] and p0["tokens"] == stock["tokens"] == [197] * 12
    assert p4["tokens"] == [197 - 4 * layer for layer in range(12)]
    arch = A.Arch(N=197, C=192, L=12, H=3)
    assert p4["macs"] == p4["analytic_macs"] == sum(A.backbone_macs(arch, 4).values()) and p4["overhead_macs"] == 0
    assert p4["hparams"] == {"seed": 0} and not p4["warnings"]  # the profile's entry


def test_profile_compares_random_with_gtp(tmp_path):
    """At equal P both run the same token schedule; GTP's analytic cost is random's plus its own overhead,
    and random's counted MACs are its analytic ones exactly."""
    out = tmp_path / "out.json"
    result = invoke("profile", "deit_t", "--method", "random,gtp", "--P", "4", "--no-speed", "--output", out)
    assert result.exit_code == 0, result.output
    assert "deit_t + random" in result.output and "deit_t + gtp" in result.output
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["random"]["tokens"] == rows["gtp"]["tokens"]
    overhead = methods.implemented_overhead(A.Arch(N=197, C=192, L=12, H=3), "gtp", [4] * 12, rows["gtp"]["hparams"])
    assert overhead > 0 and rows["gtp"]["analytic_macs"] - rows["random"]["analytic_macs"] == overhead
    assert rows["random"]["macs"] == rows["random"]["analytic_macs"] < rows["gtp"]["macs"]


@pytest.mark.parametrize("hp, message", [("random.seed=-1", "random: seed must be >= 0"),
                                         ("random.seed=1.5", "seed must be an integer"),
                                         ("random.seed=x", "seed must be a number"),
                                         ("random.sed=1", "did you mean seed")])
def test_bad_hyperparameters_end_in_one_line_exit_2(hp, message, tmp_path):
    result = invoke("profile", "deit_t", "--method", "random", "--hp", hp, "--no-speed", "--output", tmp_path / "o.json")
    assert result.exit_code == 2 and message in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output
    assert not (tmp_path / "o.json").exists()


def test_complexity_shows_the_zero_overhead():
    result = invoke("complexity", "--model", "deit_t", "--method", "random", "--P", "4,8", "--per-layer",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["methods"] == ["random"] and [r["random_macs"] for r in data["rows"]] == [0, 0]
    assert all(layer.get("random_draw", 0) == 0 for r in data["rows"] for layer in r["layers"])


def test_trace_labels_the_draw(tmp_path):
    result = invoke("trace", "deit_tiny_patch16_224", "--method", "random", "--P", "8", "--batch-size", "2",
                    "--steps", "1", "--out", tmp_path, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "random.select" in {s["stage"] for s in data["stages"]}
    assert data["method_macs"] == 0 and data["method_macs_share"] == 0 and 0 < data["method_time_share"] < 1
