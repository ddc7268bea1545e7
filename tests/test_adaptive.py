"""Input-dependent cost accounting (gtpcli/cost/adaptive.py) against answers worked out by hand."""

import pytest

from gtpcli.cost import analytic as A
from gtpcli.cost import adaptive as M

# per token n, per pair n^2, 10 fixed: small enough to do by hand
TOY = M.Cost(per_token=lambda layer, n: n, per_pair=lambda layer, n: n * n, fixed=10)
COUNTS = [[4, 2], [2, 2]]   # image 0: 10 + (4 + 16) + (2 + 4) = 36; image 1: 10 + 6 + 6 = 22


def test_per_image_macs_and_their_mean_not_the_macs_at_the_mean_counts():
    assert [M.image_macs(TOY, c) for c in COUNTS] == [36, 22]
    row = M.summarize(TOY, COUNTS)
    assert row["gmacs"] * 1e9 == pytest.approx(29)               # (36 + 22) / 2
    assert row["gmacs_std"] * 1e9 == pytest.approx(7)            # population std of 36, 22
    assert row["tokens"] == [3, 2]
    assert row["gmacs_at_mean_tokens"] * 1e9 == pytest.approx(28)  # 10 + (3 + 9) + (2 + 4)
    assert row["jensen_gap_gmacs"] * 1e9 == pytest.approx(1)     # E[n^2] - E[n]^2 of block 0 = 10 - 9
    assert row["images"] == 2 and row["adaptive"] is True
    assert row["gmacs_p5"] * 1e9 == pytest.approx(22 + 14 * 0.05)
    assert row["gmacs_p95"] * 1e9 == pytest.approx(22 + 14 * 0.95)


def test_equal_counts_have_no_jensen_gap():
    row = M.summarize(TOY, [[3, 2], [3, 2], [3, 2]])
    assert row["jensen_gap_gmacs"] == 0 and row["gmacs_std"] == 0


def test_useful_macs_stop_at_the_given_block():
    row = M.summarize(TOY, COUNTS, useful_blocks=[1, 2])   # image 0 stops after block 1: 10 + 20 = 30
    assert row["useful_gmacs"] * 1e9 == pytest.approx((30 + 22) / 2)
    assert M.summarize(TOY, COUNTS)["useful_gmacs"] == M.summarize(TOY, COUNTS)["gmacs"]


def test_distribution_of_one_block():
    d = M.distribution([3, 3, 5, 9])
    assert (d["mean"], d["min"], d["p50"], d["max"]) == (5, 3, 4, 9)
    assert d["std"] == pytest.approx(6 ** 0.5)                 # deviations -2 -2 0 4: (4 + 4 + 16) / 4
    assert d["hist"] == {"edges": [3, 4, 5, 6, 7, 8, 9, 10], "counts": [2, 0, 1, 0, 0, 0, 1]}
    wide = M.histogram(list(range(65)), bins=16)                # 65 values: width ceil(65 / 16) = 5
    assert wide["edges"][:3] == [0, 5, 10] and len(wide["counts"]) == 13 and sum(wide["counts"]) == 65


def test_percentile_interpolates_like_numpy():
    assert M.percentile([4, 1, 3, 2], 50) == 2.5
    assert M.percentile([1, 2, 3, 4], 5) == pytest.approx(1.15)
    assert M.percentile([7], 95) == 7


def test_batching_modes_executed_and_ideal():
    assert M.batch_macs(TOY, COUNTS, "single") == (58, 58)
    # padded: block 0 runs 2 images at 4 tokens, 2 (4 + 16); block 1 at 2, 2 (2 + 4); plus 2 x 10 fixed
    assert M.batch_macs(TOY, COUNTS, "padded") == (40 + 12 + 20, 58)
    # packed: block 0 per-token work on 4 + 2 tokens, pair work padded to 4 for both; block 1 (2 + 2) + 2 x 4
    assert M.batch_macs(TOY, COUNTS, "packed") == (6 + 32 + 12 + 20, 58)
    padded = M.batching(TOY, COUNTS + [[1, 1]], "padded", batch_size=2)   # batches [0, 1] and [2]
    assert padded["executed_gmacs"] * 1e9 == pytest.approx((72 + 14) / 3)   # image [1, 1]: 10 + 2 + 2
    assert padded["ideal_gmacs"] * 1e9 == pytest.approx((58 + 14) / 3)
    assert padded["ratio"] == pytest.approx(86 / 72) and padded["batch_size"] == 2
    assert M.batching(TOY, COUNTS, "single", batch_size=32)["batch_size"] == 1
    with pytest.raises(ValueError):
        M.batch_macs(TOY, COUNTS, "sorted")


def test_vit_cost_is_the_stock_block_of_the_analytic_model():
    arch = A.Arch(N=65, C=64, L=4, H=2, patch_size=4, num_classes=10)
    cost = M.vit_cost(arch)
    for n in (1, 17, 65):
        assert cost.block(0, n) == sum(A.block_terms(n, 0, arch).values())
    stock = A.backbone_macs(arch, 0)   # its final norm runs on all 65 tokens, ours on [CLS] only
    assert M.image_macs(cost, [65] * 4) == stock["embed"] + stock["blocks"] + stock["head"] - 5 * 64 * 64


def test_no_images_is_an_error():
    with pytest.raises(ValueError):
        M.summarize(TOY, [])
