"""The setting solver of `gtpcli compare` (gtpcli/cost/solve.py, gtpcli/methods/solve.py): every method's
setting nearest a target GMACs, from the cost model alone, checked against MACs computed here by hand and
counted by fvcore on real patched models; targets out of reach get one line and the rest is still solved."""

from __future__ import annotations

import math

import pytest

import gtpcli
from gtpcli import methods
from gtpcli.cost.analytic import Arch
from gtpcli.cost.solve import Match, Miss, nearest, resolution, stock_macs
from gtpcli.measure.flops import count_macs
from gtpcli.methods.solve import Setting, candidates, solve, solve_all

DEIT_S = Arch(N=197, C=384, L=12, H=6)


def vit_macs(entering: list[int], leaving: list[int], C: int = 384, patches: int = 196, patch: int = 16,
             classes: int = 1000, final: int | None = None) -> int:
    """A plain ViT by hand: patch embedding (patches x C x 3 x patch^2); per block, qkv and projection
    4 n C^2, Q K^T and A V 2 n^2 C on the n tokens entering, the MLP 8 k C^2 on the k leaving, LayerNorms
    5 C (n + k); the final norm on the tokens left (5 C each) and the head C x classes."""
    blocks = sum(4 * n * C * C + 2 * n * n * C + 8 * k * C * C + 5 * C * (n + k) for n, k in zip(entering, leaving))
    return patches * C * 3 * patch * patch + blocks + 5 * C * (leaving[-1] if final is None else final) + C * classes


@pytest.mark.parametrize("gmacs", [3.5, 3.0, 2.6, 2.3])
def test_a_method_registered_later_is_solved_by_hand(gmacs, monkeypatch):
    """A card added to the registry (as `random` is: one P for every block, no MACs of its own) is solved
    with the others. Block l (from 0) sees 197 - l P tokens and its MLP 197 - (l + 1) P; P = 0..16."""
    import dataclasses

    card = dataclasses.replace(methods.get("gtp"), name="drop", title="Drop", hparams=(),
                               implemented_overhead=lambda arch, removals, hparams: 0)
    monkeypatch.setitem(methods.REGISTRY, "drop", card)
    costs = {P: vit_macs([197 - l * P for l in range(12)], [197 - (l + 1) * P for l in range(12)])
             for P in range(17)}
    found = solve_all(DEIT_S, round(gmacs * 1e9))["drop"]
    assert found == Setting("drop", "P", hand_nearest(gmacs * 1e9, costs), costs[found.value])


def test_deit_s_stock_by_hand():
    """197 tokens, C = 384: a block is 12 x 197 x 147456 + 2 x 197^2 x 384 + 10 x 384 x 197 = 379,147,776
    MACs; 12 of them, the embedding 196 x 384 x 768 = 57,802,752 and the head 5 x 384 x 197 + 384,000:
    4,608,338,304 MACs, fvcore's 4.6 GMACs for DeiT-S."""
    assert vit_macs([197] * 12, [197] * 12) == 4_608_338_304 == stock_macs(DEIT_S)


def hand_nearest(target: float, costs: dict) -> object:
    """The key whose cost is nearest the target (the first on ties)."""
    return min(costs, key=lambda key: abs(costs[key] - target))


@pytest.mark.parametrize("gmacs", [3.5, 3.0, 2.6, 2.3])
def test_evo_keep_ratio_on_deit_s_by_hand(gmacs):
    """Evo-ViT's stages at blocks 4 and 8: blocks 0-3 process all 197 tokens, blocks 4-11 [CLS] and
    int(196 p); every token is back for the final norm. Each p in 0.01 steps by hand, the nearest chosen."""
    costs = {}
    for i in range(1, 101):
        p = round(i / 100, 2)
        n = 1 + int(196 * p)
        costs[p] = vit_macs([197] * 4 + [n] * 8, [197] * 4 + [n] * 8, final=197)
    found = solve(DEIT_S, methods.get("evo"), round(gmacs * 1e9))
    assert isinstance(found, Setting) and found.knob == "keep_ratio"
    assert found.value == hand_nearest(gmacs * 1e9, costs) and found.macs == costs[found.value]


@pytest.mark.parametrize("gmacs", [3.5, 3.0, 2.6, 2.3])
def test_evit_keep_rate_on_deit_s_by_hand(gmacs):
    """EViT at blocks 3, 6, 9: n image tokens in, ceil(k n) kept and one fused token, so the MLP and later
    blocks see [CLS] + ceil(k n) + 1; the block also computes the [CLS] row (n + 1) C and the fused token
    (n - ceil(k n)) C. A block whose fusion would replace a single token is left alone."""
    costs = {}
    for i in range(1, 101):
        k = round(i / 100, 2)
        n, entering, leaving, extra = 196, [], [], 0
        for block in range(12):
            tokens = 1 + n
            if block in (3, 6, 9) and n - math.ceil(k * n) > 1:
                kept = math.ceil(k * n)
                extra += tokens * 384 + (n - kept) * 384
                n = kept + 1
            entering.append(tokens)
            leaving.append(1 + n)
        costs[k] = vit_macs(entering, leaving) + extra
    found = solve(DEIT_S, methods.get("evit"), round(gmacs * 1e9))
    assert isinstance(found, Setting) and found.knob == "keep_rate"
    assert found.value == hand_nearest(gmacs * 1e9, costs) and found.macs == costs[found.value]


@pytest.mark.parametrize("gmacs", [3.5, 3.0, 2.6, 2.3])
def test_resolution_on_deit_s_by_hand(gmacs):
    """The stock model at s x s patches, s = 1..14: the nearest input size is 16 s pixels."""
    costs = {16 * s: vit_macs([s * s + 1] * 12, [s * s + 1] * 12, patches=s * s) for s in range(1, 15)}
    found = resolution(DEIT_S, round(gmacs * 1e9))
    assert isinstance(found, Match) and found.value % 16 == 0
    assert found.value == hand_nearest(gmacs * 1e9, costs) and found.macs == costs[found.value]


def test_resolution_at_the_stock_cost_is_the_stock_size():
    assert resolution(DEIT_S, stock_macs(DEIT_S)) == Match(224, stock_macs(DEIT_S))
    assert "not a square grid" in resolution(Arch(N=1 + 12 * 16, C=384), 10**9).reason


def test_targets_out_of_reach_get_one_line_each_and_the_rest_is_solved():
    """Above the stock model every method refuses; 1.0 GMACs is below GTP's P = 16 (the last P that leaves
    every block a token) but ToMe, whose r is clamped to half of each block's tokens, reaches it."""
    above = solve_all(DEIT_S, round(5.0e9))
    assert all(isinstance(v, Miss) and "\n" not in v.reason for v in above.values())
    assert "above the stock model's 4.608" in above["gtp"].reason
    low = solve_all(DEIT_S, round(1.0e9))
    assert "the cheapest setting, P=16" in low["gtp"].reason
    assert isinstance(low["tome"], Setting) and low["tome"].value > 16
    for name, card in methods.REGISTRY.items():  # every registered method gets a setting or its reason
        assert name in low
        if card.matched_cost_knob() is None:
            assert "depend on the image" in low[name].reason


def test_nearest_one_step_below_the_cheapest_still_matches():
    """Costs 10, 20, 30: 5 is within one step (10) below the cheapest, so it takes it; -1 is not."""
    candidates_ = [("a", 30), ("b", 20), ("c", 10)]
    assert nearest(24, candidates_, 40, "x") == Match("b", 20)
    assert nearest(5, candidates_, 40, "x") == Match("c", 10)
    assert "the cheapest setting, x=c" in nearest(-1, candidates_, 40, "x").reason
    assert nearest(15, candidates_, 40, "x") == Match("b", 20)  # a tie: the first in knob order


def test_a_bad_hyperparameter_is_that_methods_one_line():
    found = solve_all(Arch(N=65, C=32, L=4, H=2, patch_size=8, num_classes=10), 10**6)
    assert "evit drop_loc '3,6,9'" in found["evit"].reason and "\n" not in found["evit"].reason


# Each method's schedule on the 4-block test ViT (the official 3,6,9 and 4,8 need 12 blocks).
SMALL_HPARAMS = {"evit": {"drop_loc": "1,2"}, "evo": {"stages": "2"}}
SOLVABLE = [name for name, card in methods.REGISTRY.items() if card.matched_cost_knob() is not None]


@pytest.mark.parametrize("method", SOLVABLE)
@pytest.mark.parametrize("share", [0.8, 0.65])
def test_every_method_lands_within_one_step_as_fvcore_counts_it(method, share, small_vit, fresh, image):
    """On the real patched model: fvcore's MACs at the solved setting are nearer the target than at either
    neighbouring value of the knob, and the target lies within one step of them."""
    from gtpcli.models import backbones

    arch = backbones.arch_of(small_vit)
    target = round(share * stock_macs(arch))
    hparams = SMALL_HPARAMS.get(method, {})
    found = solve(arch, methods.get(method), target, hparams)
    assert isinstance(found, Setting), found
    values = [value for value, _ in candidates(arch, methods.get(method), hparams)]
    at = values.index(found.value)

    def counted(value):
        """What runs, op by op: torch's FlopCounterMode on the matmuls, fvcore's LayerNorms (fvcore alone
        misses GTP's last size update, which its trace drops as unread: tests/test_flops.py)."""
        model = gtpcli.patch(fresh(small_vit), method, **hparams, **{found.knob: value})
        count = count_macs(model, image(small_vit))
        return count.flop_counter_macs + count.macs - count.matmul_macs

    mine = counted(found.value)
    assert mine == found.macs
    neighbours = [counted(values[i]) for i in (at - 1, at + 1) if 0 <= i < len(values)]
    assert all(abs(mine - target) <= abs(other - target) for other in neighbours)
    assert abs(mine - target) <= max(abs(mine - other) for other in neighbours)
