"""The analytic model against an independent brute-force count, layer by layer."""

import random
from fractions import Fraction

import pytest

from gtpcli.cost import analytic as A
from gtpcli.errors import GtpcliError


def brute_force(N, C, L, H, P):
    """Walk the layers one by one, counting every term the paper names (appendix C.4)."""
    tome = gtp = Fraction(0)
    gtp += N * N * C  # semantic graph, once
    tokens = N
    for _ in range(L):
        tome += Fraction(tokens * tokens * C, 4) + P * C
        gtp += H * tokens + (tokens - P) * P * C
        tokens -= P
    return gtp, tome


def random_points(count, seed=0):
    rng = random.Random(seed)
    for _ in range(count):
        L = rng.randint(1, 24)
        H = rng.choice([1, 2, 3, 4, 6, 8, 12, 16])
        C = H * rng.choice([8, 16, 32, 64])
        P = rng.randint(0, 20)
        N = rng.randint(L * P + 2, L * P + 1200)
        yield N, C, L, H, P


@pytest.mark.parametrize("point", list(random_points(300)))
def test_exact_sums_match_brute_force(point):
    N, C, L, H, P = point
    gtp, tome = brute_force(N, C, L, H, P)
    assert A.gtp_macs(N, C, L, H, P) == gtp
    assert A.tome_macs(N, C, L, P) == tome


@pytest.mark.parametrize("point", list(random_points(300, seed=1)))
def test_gtp_closed_form_equals_its_sum(point):
    N, C, L, H, P = point
    assert A.gtp_macs_closed_form(N, C, L, H, P) == A.gtp_macs(N, C, L, H, P)


def test_tome_closed_form_as_printed_differs_from_its_sum():
    N, C, L, H, P = 197, 384, 12, 6, 8
    printed, exact = A.tome_macs_closed_form(N, C, L, P), A.tome_macs(N, C, L, P)
    assert printed != exact
    # The whole gap is the P^2 C coefficient: printed (L^3/12 + L^2/12 + L/8), sum (L^3/12 - L^2/8 + L/24).
    gap = (Fraction(L * L, 12) + Fraction(L, 8) + Fraction(L * L, 8) - Fraction(L, 24)) * P * P * C
    assert printed - exact == gap
    assert A.tome_macs_closed_form(N, C, L, 0) == A.tome_macs(N, C, L, 0)  # no P, no gap


def test_schedule_follows_p_and_names_the_layer_that_runs_out():
    assert A.token_schedule(197, 12, 8, prefix=1) == [197 - 8 * l for l in range(12)]
    assert A.token_schedule(10, 3, [1, 0, 2], prefix=1) == [10, 9, 9]
    with pytest.raises(GtpcliError, match=r"layer 10 has 16 image tokens"):
        A.token_schedule(197, 12, 20, prefix=1)
    with pytest.raises(GtpcliError, match="3 values"):
        A.per_layer([1, 2], 3)


def test_backbone_macs_of_deit_small_by_hand():
    arch = A.Arch(N=197, C=384, L=12, H=6)
    macs = A.backbone_macs(arch, 0)
    per_block = 4 * 197 * 384 * 384 + 2 * 197 * 197 * 384 + 8 * 197 * 384 * 384 + 5 * 2 * 197 * 384
    assert macs["blocks"] == 12 * per_block
    assert macs["embed"] == 196 * 384 * 3 * 16 * 16
    assert macs["head"] == 5 * 197 * 384 + 384 * 1000


def test_backbone_macs_shrink_with_p_as_the_schedule_says():
    arch = A.Arch(N=197, C=384, L=12, H=6)
    full, reduced = A.backbone_macs(arch, 0)["blocks"], A.backbone_macs(arch, 8)["blocks"]
    expected = sum(sum(A.block_terms(n, 8, A.Arch(N=197, C=384)).values()) for n in range(197, 197 - 12 * 8, -8))
    assert reduced == expected < full
