"""TPC-ViT (gtpcli/methods/tpc/patch.py) against answers known in closed form (docs/methods/tpc.md).

The crafted model: rows 0-1 of every attn.proj and mlp.fc2 and channels 0-1 of pos_embed are zero, so
channels 0-1 of every token stay what the patch embedding wrote, and the patch embedding writes the patch's
mean brightness m_k there. Then b_k = sigma(gamma m_k - c)^2 in every block and, without TDR (xi = 1), token k
halts after M_k = min(L, ceil((1 - delta) / b_k)) blocks.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

import gtpcli
from gtpcli.models import backbones
from gtpcli.errors import GtpcliError
from gtpcli.cost import adaptive
from gtpcli.methods.tpc import card
from gtpcli.methods.tpc import patch as T

from conftest import _custom

GRID, PATCH, L = 8, 8, 4          # _custom: 64 x 64 images, 8 x 8 patches, 4 blocks: 65 tokens
N = GRID * GRID + 1
DELTA = 0.01


def crafted(cls_value: float = 10.0, seed: int = 0) -> torch.nn.Module:
    model = _custom(seed)
    with torch.no_grad():
        for block in model.blocks:
            for linear in (block.attn.proj, block.mlp.fc2):
                linear.weight[0:2] = 0
                linear.bias[0:2] = 0
        model.pos_embed[..., 0:2] = 0
        model.patch_embed.proj.weight[0:2] = 1 / (3 * PATCH * PATCH)
        model.patch_embed.proj.bias[0:2] = 0
        model.cls_token[..., 0:2] = cls_value
    return model


def images(brightness: np.ndarray) -> torch.Tensor:
    """(B, GRID, GRID) patch brightness -> (B, 3, 64, 64) images, each patch uniform."""
    pixels = np.kron(brightness, np.ones((PATCH, PATCH)))
    return torch.tensor(pixels, dtype=torch.float32).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def halting_blocks(brightness: np.ndarray, cls_value: float, scale: float, center: float) -> np.ndarray:
    """M_k for [CLS] and every patch, in closed form (xi = 1), float64."""
    values = np.concatenate([np.full((len(brightness), 1), cls_value), brightness.reshape(len(brightness), -1)], 1)
    b = 1 / (1 + np.exp(-(scale * values - center))) ** 2
    ratio = (1 - DELTA) / b
    assert np.all(np.abs(ratio - np.round(ratio)) > 1e-3), "a token on a halting boundary: pick another seed"
    return np.minimum(L, np.ceil(ratio)).astype(int)


def counts_of(blocks: np.ndarray) -> np.ndarray:
    """Tokens entering block l = tokens that run at least l blocks."""
    return np.stack([(blocks >= layer).sum(1) for layer in range(1, L + 1)], 1)


BRIGHT = np.random.default_rng(3).uniform(-1, 1, (5, GRID, GRID))
BRIGHT[1] += 0.6   # brighter images halt earlier: the counts must differ between images
BRIGHT[2] -= 0.6
GATES = dict(gate_scale=5.0, gate_center=0.0, delta=DELTA)


def run(model, x, **options):
    with torch.no_grad():
        logits = model(x)
    return logits, model.tpc.last


# 1 ---------------------------------------------------------------------------------------------------

def test_gathered_counts_equal_the_closed_form_and_never_increase():
    model = gtpcli.patch(crafted(), "tpc", xi=1.0, kappa=1000, **GATES)
    blocks = halting_blocks(BRIGHT, 10.0, 5.0, 0.0)
    for i in range(len(BRIGHT)):                       # batch 1: the exact gathered path
        _, trace = run(model, images(BRIGHT[i:i + 1]))
        assert trace.counts[0].tolist() == counts_of(blocks[i:i + 1])[0].tolist()
        assert trace.halt_block[0].tolist() == blocks[i].tolist()
    _, trace = run(model, images(BRIGHT))              # a padded batch records the same per-image counts
    counts = trace.counts.numpy()
    assert counts.tolist() == counts_of(blocks).tolist()
    assert len({tuple(c) for c in counts.tolist()}) > 1, "counts must differ across images"
    assert np.all(np.diff(counts, axis=1) <= 0)
    assert counts[:, 0].tolist() == [N] * len(BRIGHT)


# 2 ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_masked_and_gathered_give_the_same_logits(batching):
    model = gtpcli.patch(crafted(cls_value=0.3), "tpc", xi=0.5, kappa=20, batching=batching, **GATES)
    x = images(BRIGHT)
    gathered, trace = run(model, x)
    singles = torch.cat([run(model, x[i:i + 1])[0] for i in range(len(x))])
    model.tpc.execution = "masked"
    masked, masked_trace = run(model, x)
    assert torch.allclose(gathered, masked, atol=1e-5) and torch.allclose(singles, masked, atol=1e-5)
    assert torch.equal(trace.counts, masked_trace.counts)
    assert len(set(trace.counts[:, -1].tolist())) > 1


# 3 ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("execution", ["gathered", "masked"])
def test_nothing_halting_and_kappa_at_least_n_is_stock_timm(execution):
    stock = _custom(seed=2)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = stock(x)
    model = gtpcli.patch(stock, "tpc", gate_center=1e4, kappa=N, execution=execution)
    logits, trace = run(model, x)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert trace.counts.tolist() == [[N] * L] * 3
    gtpcli.unpatch(model)
    assert "tpc" not in model._modules and "forward_features" not in model.__dict__
    with torch.no_grad():
        assert torch.equal(model(x), expected)


# 4 ---------------------------------------------------------------------------------------------------

ATTN = types.SimpleNamespace(scale=1.0, attn_drop=torch.nn.Identity(), training=False)


def weights_of(q, k, alive=None, kappa=2, stabilizer=True):
    """The attention map _mix applies: with v = identity its output is the map itself."""
    n = k.shape[-2]
    v = torch.eye(n).expand(*k.shape[:-1], n)
    return T._mix(ATTN, q, k, v, alive, types.SimpleNamespace(stabilizer=stabilizer, kappa=kappa))


def test_stabiliser_keeps_the_kappa_euclidean_nearest_keys_not_the_largest_dot_products():
    q = torch.tensor([[[[1.0, 0.0]]]])
    keys = torch.tensor([[[[10.0, 0.0], [1.2, 0.0], [0.8, 0.1], [-1.0, 0.0]]]])
    # dot products 10, 1.2, 0.8, -1 (top 2: keys 0, 1); squared distances 81, 0.04, 0.05, 4 (nearest: 1, 2)
    row = weights_of(q, keys)[0, 0, 0]
    assert (row > 0).tolist() == [False, True, True, False]
    assert row.sum().item() == pytest.approx(1.0)
    assert row[1] / row[2] == pytest.approx(math.exp(1.2 - 0.8), rel=1e-5)  # softmax over the two kept


def test_every_row_keeps_exactly_kappa_keys():
    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4)
    weights = weights_of(q, k, kappa=4)
    assert ((weights > 0).sum(-1) == 4).all()
    distance = torch.cdist(q, k)                      # an independent Euclidean ranking
    nearest = distance.topk(4, dim=-1, largest=False).indices
    assert torch.equal(torch.zeros_like(weights, dtype=torch.bool).scatter_(-1, nearest, True), weights > 0)


# 5 ---------------------------------------------------------------------------------------------------

def test_analytic_per_image_macs_equal_fvcore_and_the_mean_is_not_the_macs_at_the_mean_counts():
    from gtpcli.measure.flops import count_macs

    model = gtpcli.patch(crafted(cls_value=0.3), "tpc", xi=0.5, kappa=20, **GATES)
    cost = card.cost(backbones.arch_of(model))
    x = images(BRIGHT[:3])
    counted, counts = [], []
    for i in range(len(x)):
        _, trace = run(model, x[i:i + 1])
        counts.append(trace.counts[0].tolist())
        counted.append(count_macs(model, x[i:i + 1]).macs)
        assert counted[-1] == adaptive.image_macs(cost, counts[-1]), (i, counts[-1])
    assert len({tuple(c) for c in counts}) > 1
    row = adaptive.summarize(cost, counts)
    assert row["gmacs"] == pytest.approx(sum(counted) / len(counted) / 1e9, rel=1e-12)
    assert row["gmacs"] > row["gmacs_at_mean_tokens"] and row["jensen_gap_gmacs"] > 0


@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_executed_macs_of_a_batch_are_what_fvcore_counts_on_it(batching):
    from gtpcli.measure.flops import count_macs

    model = gtpcli.patch(crafted(cls_value=0.3), "tpc", xi=0.5, kappa=20, batching=batching, **GATES)
    cost = card.cost(backbones.arch_of(model))
    x = images(BRIGHT[:3])
    _, trace = run(model, x)
    executed, ideal = adaptive.batch_macs(cost, trace.counts.tolist(), batching)
    assert count_macs(model, x).macs == executed and executed > ideal
    if batching == "padded":   # sum over blocks of B x block(max n_l), by hand
        widest = trace.counts.max(0).values.tolist()
        assert executed == 3 * cost.fixed + sum(3 * cost.block(layer, n) for layer, n in enumerate(widest))


# 6 ---------------------------------------------------------------------------------------------------

def simulate(brightness: np.ndarray, xi: float, cls_value: float = 0.3) -> np.ndarray:
    """Eq. 9 and the halting rule re-implemented in NumPy: counts entering each block, per image."""
    values = np.concatenate([np.full((len(brightness), 1), cls_value), brightness.reshape(len(brightness), -1)], 1)
    raw = 1 / (1 + np.exp(-(5.0 * values))) ** 2
    counts = np.zeros((len(values), L), dtype=int)
    for i, b_raw in enumerate(raw):
        alive, cum = np.ones(N, bool), np.zeros(N)
        for layer in range(L):
            counts[i, layer] = alive.sum()
            if not alive.any():
                break
            b = xi * b_raw + (1 - xi) * b_raw[alive].mean()
            b = np.ones(N) if layer == L - 1 else b
            cum = cum + b
            alive = alive & (cum < 1 - DELTA)
    return counts


@pytest.mark.parametrize("xi", [1.0, 0.0, 0.3, 0.7])
def test_token_distribution_regulariser(xi):
    model = gtpcli.patch(crafted(cls_value=0.3), "tpc", xi=xi, kappa=1000, **GATES)
    _, trace = run(model, images(BRIGHT))
    assert trace.counts.tolist() == simulate(BRIGHT, xi).tolist()
    if xi == 0:     # every token of an image has the same b: all halt together
        assert all(set(row) <= {N, 0} for row in trace.counts.tolist())
    if xi == 1:
        assert trace.counts.tolist() == counts_of(halting_blocks(BRIGHT, 0.3, 5.0, 0.0)).tolist()


def test_regulariser_mean_is_over_the_active_tokens_only():
    ctl = types.SimpleNamespace(xi=0.5)
    b = torch.tensor([[0.2, 0.4, 0.9]])
    alive = torch.tensor([[True, True, False]])
    mixed = T.TPC._regularised(ctl, b, alive, None, 1, False)
    assert torch.allclose(mixed, torch.tensor([[0.25, 0.35, 0.6]]))   # mean of the active two is 0.3


# 7 ---------------------------------------------------------------------------------------------------

def test_halted_tokens_neither_attend_nor_are_attended():
    torch.manual_seed(2)
    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    alive = torch.tensor([[True, False, True, True, False, True]])
    weights = weights_of(q, k, alive, kappa=100)
    assert (weights[..., ~alive[0]] == 0).all()
    gathered = weights_of(q[:, :, alive[0]], k[:, :, alive[0]], kappa=100)
    assert torch.allclose(weights[:, :, alive[0]][..., alive[0]], gathered, atol=1e-6)
    model = gtpcli.patch(crafted(cls_value=0.3), "tpc", xi=1.0, kappa=1000, execution="masked", **GATES)
    x = images(BRIGHT[:2])
    _, trace = run(model, x)
    halted = ~trace.active[:, 1]                     # halted after block 1: out of every later block
    assert halted.any()
    assert trace.active[:, 1:][halted.unsqueeze(1).expand(-1, L - 1, -1)].sum() == 0


def test_stop_at_cls_halt_keeps_the_logits_and_lowers_the_macs():
    model = gtpcli.patch(crafted(cls_value=0.6), "tpc", xi=1.0, kappa=1000, **GATES)  # [CLS] runs 2 blocks
    x = images(BRIGHT[:3] - 0.5)                     # dark patches: most run all 4 blocks
    logits, trace = run(model, x)
    assert trace.cls_halt.tolist() == [2, 2, 2]
    cost = card.cost(backbones.arch_of(model))
    full = adaptive.summarize(cost, trace.counts.tolist(), trace.cls_halt.tolist())
    model.tpc.stop_at_cls_halt = True
    stopped_logits, stopped = run(model, x)
    assert torch.allclose(stopped_logits, logits, atol=1e-6)
    assert stopped.counts[:, 2:].sum() == 0
    lower = adaptive.summarize(cost, stopped.counts.tolist())
    assert lower["gmacs"] < full["gmacs"] and lower["gmacs"] == pytest.approx(full["useful_gmacs"])


# 8 ---------------------------------------------------------------------------------------------------

def test_only_the_nonmonotone_experiment_restarts_tokens():
    model = crafted(cls_value=0.3)
    with torch.no_grad():   # block 1 adds 2 to the gate channels, block 2 takes it away again
        model.blocks[0].mlp.fc2.bias[0:2] = 2.0
        model.blocks[1].mlp.fc2.bias[0:2] = -2.0
    x = images(BRIGHT[:2])
    gtpcli.patch(model, "tpc", xi=1.0, kappa=1000, execution="masked", mode="nonmonotone", **GATES)
    _, trace = run(model, x)
    active = trace.active.int()
    assert ((active[:, 1] == 0) & (active[:, 2] == 1)).any(), "no token paused in block 2 and back in block 3"
    gtpcli.patch(model, "tpc", xi=1.0, kappa=1000, execution="masked", **GATES)
    _, trace = run(model, x)
    assert (trace.active.int().diff(dim=1) <= 0).all()
    with pytest.raises(GtpcliError, match="masked"):
        gtpcli.patch(model, "tpc", mode="nonmonotone")


# training, checkpoints, models ----------------------------------------------------------------------

def test_losses_and_learnable_gates_train():
    model = gtpcli.patch(_custom(seed=4), "tpc", gate_scale=5.0, gate_center=1.0, learn_gates=True, kappa=20,
                         execution="masked", target_depth=3)
    model.train()
    assert {"tpc.gate_scale", "tpc.gate_center"} <= set(dict(model.named_parameters()))
    x, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    losses = model.tpc.losses(model(x), target, phi_p=0.01, phi_d=0.1)
    assert set(losses) == {"task", "ponder", "distribution", "total"}
    assert 1 <= losses["ponder"].item() <= L + 1      # M_k + r_k per token: between 1 and L + 1
    assert losses["distribution"].item() >= 0
    losses["total"].backward()
    assert model.tpc.gate_center.grad is not None and model.tpc.gate_center.grad != 0
    prior = T.distribution_prior(4, 3)
    assert prior.sum().item() == pytest.approx(1) and prior.argmax().item() == 2
    assert T.kl_to_prior(prior.clone(), 3).item() == pytest.approx(0, abs=1e-6)


def test_checkpoint_is_a_plain_state_dict_with_a_tpc_mapping(tmp_path):
    model = gtpcli.patch(_custom(seed=5), "tpc", gate_center=3.0, kappa=16, learn_gates=True)
    with torch.no_grad():
        model.tpc.gate_center.fill_(2.5)
    T.save_checkpoint(model, tmp_path / "tpc.pth")
    hp = T.checkpoint_hparams(tmp_path / "tpc.pth")
    assert hp["gate_center"] == 2.5 and hp["kappa"] == 16 and hp["gate_dims"] == (0, 1)
    stock = _custom(seed=6)
    backbones.load_checkpoint(stock, tmp_path / "tpc.pth")     # strict: no tpc.* keys in the state dict
    torch.save({"state_dict": stock.state_dict()}, tmp_path / "plain.pth")
    assert T.checkpoint_hparams(tmp_path / "plain.pth") is None
    torch.save({"state_dict": stock.state_dict(), "tpc": {"kapa": 3}}, tmp_path / "bad.pth")
    with pytest.raises(GtpcliError, match="did you mean kappa"):
        T.checkpoint_hparams(tmp_path / "bad.pth")


def test_lvvit_masked_and_gathered_agree():
    from gtpcli.models.lvvit import LVViT

    torch.manual_seed(0)
    model = LVViT(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5).eval()
    gtpcli.patch(model, "tpc", gate_scale=3.0, gate_center=-3.0, kappa=8)
    x = torch.randn(3, 3, 32, 32)
    gathered, trace = run(model, x)
    model.tpc.execution = "masked"
    masked, _ = run(model, x)
    assert torch.allclose(gathered, masked, atol=1e-5) and trace.counts[:, -1].lt(17).any()


def test_refusals_are_one_line():
    with pytest.raises(GtpcliError, match="no \\[CLS\\]"):
        gtpcli.patch(_custom(seed=0, global_pool="avg", class_token=False), "tpc")
    with pytest.raises(GtpcliError, match="delta"):
        gtpcli.patch(_custom(seed=0), "tpc", delta=0)
    with pytest.raises(GtpcliError, match="gate_dims"):
        gtpcli.patch(_custom(seed=0), "tpc", gate_dims=(0, 99))


def test_a_sweep_point_names_the_method_once_in_its_error():
    """The sweep's `apply` adds the method's name to a patch's ValueError, but not to a GtpcliError that
    already names it (it printed "tpc: tpc: ...")."""
    from gtpcli.methods.patching import apply

    with pytest.raises(GtpcliError) as caught:
        apply(_custom(seed=0), "tpc", None, {"gate_dims": (0, 99)})
    assert str(caught.value).startswith("tpc: gate_dims") and str(caught.value).count("tpc:") == 1
