"""TC-ViT, connectivity-based token condensation (papers/tc-vit-connectivity-token-condensation.md;
specs/tc-vit.md), as one self-contained method: hyperparameters, analytic overhead, complexity columns,
trace stages and the patch.

In every block that removes tokens, between attention and MLP:
- W: the block's softmax attention over the image tokens, heads fused (mean by default);
- connectivity C = W + alpha W^2 + ... + alpha^(K-1) W^K (Eq. 8), exactly (Horner, K - 1 products), or
  Eq. 9 with a Newton inverse (`connectivity="newton"`), or, for K = 2, only the entries selection and
  fusion read (`connectivity="lazy"`: the same tokens and outputs without the n x n x n product);
- per-token connectivity C_bar (a mean of C over one token dimension, the column mean by default) and
  dominance D ([CLS] attention to each image token, renormalised over the image tokens);
- score S = -C_bar + beta D (Eq. 11); the n - P best are kept in their order, the other P are fused,
  each into the kept token t it is most connected to (argmax_t C[q, t]), by Eq. 12:
  t <- (t C[t,t] + sum_q q C[q,t]) / (C[t,t] + sum_q C[q,t]). Prefix tokens are never touched.

Everything above the "patch" section is plain arithmetic: `gtpcli complexity` imports this module
without torch. The Reduction subclass is built on first use (`reduction_class()`, or the attribute
`TCViT` of this module), because its base class lives with torch.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

from ..analytic import Arch
from ..errors import GtpcliError
from .base import Column, HParam, Method, image_schedule

NAME = "tcvit"
CONNECTIVITY = ("series", "newton", "lazy")
CBAR = ("col", "row", "row_offdiag")
DOMINANCE = ("renorm", "softmax_of_probs")
SCORES = ("full", "connectivity", "dominance")
W_BLOCKS = ("patch", "patch_renorm")
HEAD_FUSIONS = ("mean", "max")
DTYPES = ("float32", "float64")
DTYPE_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}

HPARAMS = (
    HParam("K", 2, "connectivity order: paths of length 1..K (Eq. 8)", int, low=1),
    HParam("alpha", 500.0, "adjustment factor of the high-order terms", float, low=0),
    HParam("beta", 3.5, "weight of the dominance in S = -C_bar + beta D (Eq. 11)", float, low=0),
    HParam("head_fusion", "mean", "how the H attention maps become W (and D)", str, HEAD_FUSIONS),
    HParam("w_block", "patch", "W = the image x image block of the map; patch_renorm: its rows renormalised to 1",
           str, W_BLOCKS),
    HParam("cbar", "col", "C_bar = mean of C over sources (col), over targets (row), or over targets but "
           "itself (row_offdiag)", str, CBAR),
    HParam("dominance", "renorm", "D = [CLS] row renormalised over image tokens, or a softmax of those "
           "probabilities", str, DOMINANCE),
    HParam("score", "full", "full: -C_bar + beta D; connectivity: -C_bar; dominance: D (Table 3)", str, SCORES),
    HParam("connectivity", "series", "series: exact Eq. 8; newton: Eq. 9 with a Newton inverse; lazy: exact, "
           "K = 2, only the entries used", str, CONNECTIVITY),
    HParam("newton_steps", 2, "Newton iterations from X_0 = diag(1/A_ii) (the paper: fewer than three)", int, low=1),
    HParam("fuse", True, "fuse discarded tokens by Eq. 12 (false: prune them, Table 4)", bool),
    HParam("track_sizes", False, "track how many patches each token stands for and use proportional "
           "attention (a gtpcli extra, not the paper)", bool),
    HParam("connectivity_dtype", "float32", "dtype of W, C and S (fp16/bf16 models are upcast)", str, DTYPES),
    HParam("prop_attn", None, "proportional attention (log sizes); unset: on exactly when track_sizes is", bool),
)
_NAMES = frozenset(h.name for h in HPARAMS)


# --- analytic overhead (torch-free) -------------------------------------------------------------
# Conventions (spec section 6): an n x n x n product is n^3 MACs; a mean or sum over m inputs costs m per
# output; an elementwise scaling one per element; adding two matrices or the identity nothing. n is the
# number of IMAGE tokens entering the block (prefix tokens excluded), as the paper's graph has them.

def powers_for(K: int) -> int:
    """Products that binary powering needs for W^K: floor(log2 K) squarings + popcount(K) - 1."""
    return K.bit_length() - 1 + bin(K).count("1") - 1


def _common(n: int, P: int, C: int, H: int, hp: Mapping[str, Any]) -> dict[str, int]:
    """Terms every variant has: W from the H maps, D, the score, the fusion."""
    terms = {"fuse_heads": H * n * n}
    if hp["w_block"] == "patch_renorm":
        terms["renorm"] = 2 * n * n
    terms["dominance"] = H * n if uses_dominance(hp) else 0
    terms["score"] = n
    terms["fuse"] = 3 * P * C if hp["fuse"] else 0
    return terms


def dense_terms(n: int, P: int, C: int, H: int, hp: Mapping[str, Any]) -> dict[str, int]:
    """One block of the exact series (Horner): K - 1 products and scalings, the mean giving C_bar."""
    K = hp["K"]
    return {**_common(n, P, C, H, hp), "powers": (K - 1) * n**3, "series_scale": (K - 1) * n * n, "cbar": n * n}


def newton_terms(n: int, P: int, C: int, H: int, hp: Mapping[str, Any]) -> dict[str, int]:
    """One block of Eq. 9 with `newton_steps` Newton steps: A = I - alpha W, X_0 = diag(1/A_ii), W^K by
    binary powering, B = W - alpha^K W W^K, X_1 = 2X_0 - X_0 A X_0 (diagonal scalings), each further
    step X(2I - AX) two products, C = B X_s."""
    s = hp["newton_steps"]
    return {**_common(n, P, C, H, hp), "newton_A": n * n, "newton_X0": n, "powers": powers_for(hp["K"]) * n**3,
            "newton_B": n**3 + n * n, "newton_step1": 2 * n * n, "newton_steps": (s - 1) * (2 * n**3 + n * n),
            "newton_C": n**3, "cbar": n * n}


def lazy_terms(n: int, P: int, C: int, H: int, hp: Mapping[str, Any]) -> dict[str, int]:
    """One block of the lazy exact path (K = 2): u = 1^T W and uW (or W1 and W(W1)) for C_bar, the P
    rows C[Q, :] = W_Q + alpha W_Q W, and C[t, t] for at most P receivers."""
    terms = {**_common(n, P, C, H, hp), "cbar_u": n * n, "cbar_uW": n * n, "cbar_scale": 2 * n,
             "rows": P * n * n + P * n, "diagonal": P * n + P}
    if hp["cbar"] == "row_offdiag":
        terms["cbar_diag"] = n * n  # the diagonal of W^2 for every token
    return terms


def paper_counted_terms(n: int, P: int, C: int, H: int, hp: Mapping[str, Any]) -> dict[str, int]:
    """What TC-ViT's published GFLOPs contain: one n^3 product per squaring of W (spec section 5)."""
    return {"squarings": math.ceil(math.log2(hp["K"])) * n**3}


VARIANTS = {"dense": dense_terms, "paper_counted": paper_counted_terms, "newton": newton_terms, "lazy": lazy_terms}


def variant_of(hp: Mapping[str, Any]) -> str:
    return {"series": "dense", "newton": "newton", "lazy": "lazy"}[hp["connectivity"]]


def layer_terms(arch: Arch, removals: Sequence[int], hp: Mapping[str, Any], variant: str) -> list[dict[str, int]]:
    """Per block: n_l, P_l and the variant's terms. A block that removes nothing runs no TC-ViT (zeros)."""
    terms = VARIANTS[variant]
    rows = []
    for n, P in image_schedule(arch, removals):
        found = terms(n, P, arch.C, arch.heads, hp) if P > 0 else {}
        rows.append({"n_l": n, "P": P, **found})
    return rows


def overhead(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None,
             variant: str | None = None) -> int:
    """G_TCViT: the exact integer sum over blocks of one variant's terms (default: the configured one)."""
    hp = METHOD.resolved(hparams or {})
    variant = variant or variant_of(hp)
    if variant == "lazy" and hp["K"] != 2:
        raise GtpcliError(f"tcvit: the lazy path is exact for K = 2 only, got K={hp['K']}")
    return sum(v for row in layer_terms(arch, removals, hp, variant) for k, v in row.items() if k not in ("n_l", "P"))


def implemented_overhead(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """What a MAC counter sees in the patched model (only matrix products are counted): series
    (K - 1) n^3; newton (m_K + 2s) n^3; lazy (1 + P) n^2 + P n (uW or W(W1), W_Q W, the receivers'
    diagonal as a batched product). Blocks that remove nothing run nothing."""
    hp = METHOD.resolved(hparams or {})
    total = 0
    for n, P in image_schedule(arch, removals):
        if P == 0:
            continue
        if hp["connectivity"] == "series":
            total += (hp["K"] - 1) * n**3
        elif hp["connectivity"] == "newton":
            total += (powers_for(hp["K"]) + 2 * hp["newton_steps"]) * n**3
        else:
            total += (1 + P) * n * n + P * n
    return total


COLUMNS = (
    Column("tcvit_macs", "TC-ViT dense", "n_l image tokens"),
    Column("tcvit_paper_counted", "TC-ViT paper", "n_l image tokens"),
    Column("tcvit_newton", "TC-ViT Eq.9+Newton", "n_l image tokens"),
    Column("tcvit_lazy", "TC-ViT lazy", "n_l image tokens"),
)


def complexity_row(arch: Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """G_TCViT for a constant P: the dense exact sum, the paper-counted squarings, Eq. 9 with Newton
    steps, the lazy path (K = 2 only), and what a MAC counter sees for the configured connectivity."""
    hp = METHOD.resolved(hparams)
    removals = [P] * arch.L
    row = {name: overhead(arch, removals, hp, name) for name in ("dense", "paper_counted", "newton")}
    return {"tcvit_macs": row["dense"], "tcvit_paper_counted": row["paper_counted"], "tcvit_newton": row["newton"],
            "tcvit_lazy": overhead(arch, removals, hp, "lazy") if hp["K"] == 2 else None,
            "tcvit_implemented": implemented_overhead(arch, removals, hp)}


def complexity_layers(arch: Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every term of every variant, per block: keys tcvit_<dense|paper|newton|lazy>_<term>, over n_l."""
    hp = METHOD.resolved(hparams)
    removals = [P] * arch.L
    variants = [v for v in VARIANTS if v != "lazy" or hp["K"] == 2]
    per_variant = {v: layer_terms(arch, removals, hp, v) for v in variants}
    rows = []
    for layer in range(arch.L):
        found = {}
        for v in variants:
            short = "paper" if v == "paper_counted" else v
            found |= {f"tcvit_{short}_{k}": value for k, value in per_variant[v][layer].items() if k not in ("n_l", "P")}
        rows.append(found)
    return rows


def complexity_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return ["TC-ViT columns count n_l = N_l - prefix image tokens (its graph has no [CLS]); dense = exact "
            "Eq. 8 (K - 1 products), paper = ceil(log2 K) n_l^3 (what its published GFLOPs contain), "
            "Eq.9+Newton with the configured steps, lazy = the exact K = 2 path without the n^3 product."]


# --- hyperparameter checks that need more than one value ------------------------------------------

def uses_dominance(hp: Mapping[str, Any]) -> bool:
    return hp["score"] == "dominance" or (hp["score"] == "full" and hp["beta"] != 0)


def check_settings(hp: Mapping[str, Any], has_cls: bool, max_tokens: int) -> None:
    """The combinations the method cannot run, each a one-line error (spec section 8)."""
    if hp["connectivity"] == "lazy" and hp["K"] != 2:
        raise GtpcliError(f"tcvit: connectivity 'lazy' is exact for K = 2 only, got K={hp['K']} "
                          "(use connectivity 'series')")
    if uses_dominance(hp) and not has_cls:
        raise GtpcliError("tcvit: the dominance D is the [CLS] token's attention, and this model has no [CLS] "
                          "(use score: connectivity)")
    # Every entry of C is at most sum_k alpha^(k-1) (W's rows sum to <= 1), and C_bar sums n of them (a
    # column of a matrix whose rows sum to 1 can hold up to n); Newton also forms alpha^K W^K.
    top = hp["K"] if hp["connectivity"] == "newton" else hp["K"] - 1
    limit = DTYPE_MAX[hp["connectivity_dtype"]]
    try:
        bound = max_tokens * sum(hp["alpha"] ** k for k in range(top + 1))
    except OverflowError:
        bound = math.inf
    if bound >= limit:
        raise GtpcliError(f"tcvit: K={hp['K']} with alpha={hp['alpha']:g} overflows {hp['connectivity_dtype']} "
                          f"(alpha^{top} times {max_tokens} tokens exceeds {limit:.3g}); use "
                          "connectivity_dtype: float64" if hp["connectivity_dtype"] == "float32" else
                          f"tcvit: K={hp['K']} with alpha={hp['alpha']:g} overflows even float64; lower K or alpha")


# --- the patch (torch) -----------------------------------------------------------------------------

def image_graph(weights, prefix: int, head_fusion: str = "mean", w_block: str = "patch", dtype=None):
    """W (B, n, n): the image x image block of the attention maps (B, H, N, N), heads fused."""
    block = weights[:, :, prefix:, prefix:]
    block = block.to(dtype) if dtype is not None else block
    W = block.mean(dim=1) if head_fusion == "mean" else block.amax(dim=1)
    if w_block == "patch_renorm":
        W = W / W.sum(dim=-1, keepdim=True)
    return W


def dominance(weights, prefix: int, how: str = "renorm", head_fusion: str = "mean", dtype=None):
    """D (B, n): [CLS] (token 0) attention to each image token, normalised over the image tokens."""
    rows = weights[:, :, 0, prefix:]
    rows = rows.to(dtype) if dtype is not None else rows
    rows = rows / rows.sum(dim=-1, keepdim=True) if how == "renorm" else rows.softmax(dim=-1)
    return rows.mean(dim=1) if head_fusion == "mean" else rows.amax(dim=1)


def series(W, K: int, alpha: float):
    """C = W + alpha W^2 + ... + alpha^(K-1) W^K (Eq. 8) by Horner: T <- W + alpha W T, K - 1 products."""
    C = W
    for _ in range(K - 1):
        C = W + alpha * (W @ C)
    return C


def matrix_power(W, K: int):
    """W^K by binary powering (powers_for(K) products)."""
    result, base = None, W
    while K:
        if K & 1:
            result = base if result is None else result @ base
        K >>= 1
        if K:
            base = base @ base
    return result


def newton(W, K: int, alpha: float, steps: int):
    """Eq. 9: C = W (I - alpha^K W^K) (I - alpha W)^-1, the inverse by Newton (Eq. 10) from
    X_0 = diag(1 / A_ii), A = I - alpha W, with `steps` iterations. Only an approximation of Eq. 8."""
    import torch

    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    A = eye - alpha * W
    x0 = 1.0 / A.diagonal(dim1=-2, dim2=-1)
    B = W - alpha**K * (W @ matrix_power(W, K))
    X = torch.diag_embed(2 * x0) - x0.unsqueeze(-1) * A * x0.unsqueeze(-2)  # X_1 = 2X_0 - X_0 A X_0
    for _ in range(steps - 1):
        X = X @ (2 * eye - A @ X)
    return B @ X


def newton_residual(W, alpha: float):
    """||I - A X_0||_1 (max column sum) per image: Newton converges from X_0 iff some norm of it is < 1."""
    import torch

    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    A = eye - alpha * W
    x0 = 1.0 / A.diagonal(dim1=-2, dim2=-1)
    return (eye - A * x0.unsqueeze(-2)).abs().sum(dim=-2).amax(dim=-1)


def cbar_of(C, how: str):
    """C_bar (B, n) from a dense C: column mean, row mean, or row mean without the diagonal."""
    if how == "col":
        return C.mean(dim=-2)
    if how == "row":
        return C.mean(dim=-1)
    n = C.shape[-1]
    return (C.sum(dim=-1) - C.diagonal(dim1=-2, dim2=-1)) / max(n - 1, 1)


def lazy_cbar(W, alpha: float, how: str):
    """C_bar of C = W + alpha W^2 without forming W^2: 1^T C = u + alpha uW with u = 1^T W (col), or
    C1 = r + alpha W r with r = W1 (row); row_offdiag also needs diag(W^2)."""
    n = W.shape[-1]
    if how == "col":
        u = W.sum(dim=-2)
        return (u + alpha * (u.unsqueeze(-2) @ W).squeeze(-2)) / n
    r = W.sum(dim=-1)
    rows = r + alpha * (W @ r.unsqueeze(-1)).squeeze(-1)
    if how == "row":
        return rows / n
    diagonal = W.diagonal(dim1=-2, dim2=-1) + alpha * (W * W.transpose(-1, -2)).sum(dim=-1)
    return (rows - diagonal) / max(n - 1, 1)


def score_of(cbar, D, hp: Mapping[str, Any]):
    """S (Eq. 11); the largest are kept."""
    if hp["score"] == "connectivity" or (hp["score"] == "full" and hp["beta"] == 0):
        return -cbar
    if hp["score"] == "dominance":
        return D
    return -cbar + hp["beta"] * D


def split(score, P: int):
    """Indices of the kept tokens (in their original order) and of the P discarded ones."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    keep = order[:, : score.shape[1] - P].sort(dim=-1).values
    return keep, order[:, score.shape[1] - P:]


def take(tokens, index):
    """tokens (B, n, d) at index (B, m) -> (B, m, d)."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def fuse_tokens(x, keep, drop, rows, self_weight, count: bool = True):
    """Eq. 12. x (B, n, c) image tokens; rows = C[drop, :] (B, P, n); self_weight (B, n - P) = C[t, t] of
    the kept tokens (only the receivers' entries are read). Each discarded q goes to the kept token t with
    the largest C[q, t], weight C[q, t]. Kept tokens that receive nothing are returned unchanged, bit for
    bit. Where the denominator is not positive (Newton's C can be negative) the receiver becomes the plain
    mean of itself and its matches. Returns (kept tokens (B, n - P, c), receiver index into keep (B, P),
    number of fallbacks, counted only with `count`: counting waits for the device).

    Written as t + sum_q w_q (q - t) / den_t, which is Eq. 12, so that only the P discarded tokens and their
    receivers are touched: no pass over all n - P kept tokens beyond gathering them."""
    import torch

    kept = take(x, keep)
    Cqk = rows.gather(2, keep.unsqueeze(1).expand(-1, rows.shape[1], -1))  # (B, P, n - P)
    weight, target = Cqk.max(dim=-1)
    denominator = self_weight.scatter_add(1, target, weight)
    matches = torch.zeros_like(denominator).scatter_add(1, target, torch.ones_like(weight))
    den_q, matches_q = denominator.gather(1, target), matches.gather(1, target)
    bad = ~(den_q > 0)
    scale = torch.where(bad, 1 / (1 + matches_q), weight / den_q.where(~bad, torch.ones_like(den_q)))
    at = target.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    shift = scale.unsqueeze(-1) * (take(x, drop) - kept.gather(1, at))
    fallbacks = int(((matches > 0) & ~(denominator > 0)).sum()) if count and bad.any() else 0
    return kept.scatter_add_(1, at, shift), target, fallbacks


def condense(x, weights, prefix: int, P: int, hp: Mapping[str, Any], stage=None, size=None):
    """One TC-ViT step on tokens x (B, N, c) with attention maps (B, H, N, N): (tokens (B, N - P, c),
    sizes (B, N - P, 1) or None, diagnostics). Pure function of its inputs (the tests call it directly)."""
    import contextlib

    import torch

    stage = stage or (lambda name: contextlib.nullcontext())
    dtype = getattr(torch, hp["connectivity_dtype"])
    alpha, how = hp["alpha"], hp["cbar"]
    info: dict[str, Any] = {}
    with stage("tcvit.connectivity"):
        W = image_graph(weights, prefix, hp["head_fusion"], hp["w_block"], dtype)
        D = dominance(weights, prefix, hp["dominance"], hp["head_fusion"], dtype) if uses_dominance(hp) else None
        C = None
        if hp["connectivity"] == "lazy":
            cbar = lazy_cbar(W, alpha, how)
        else:
            if hp["connectivity"] == "newton":
                C = newton(W, hp["K"], alpha, hp["newton_steps"])
                info["newton_residual"] = float(newton_residual(W, alpha).max())
            else:
                C = series(W, hp["K"], alpha)
            cbar = cbar_of(C, how)
    with stage("tcvit.select"):
        keep, drop = split(score_of(cbar, D, hp), P)
    info["keep"], info["drop"] = keep, drop
    image, image_size = x[:, prefix:], (size[:, prefix:] if size is not None else None)
    if not hp["fuse"]:
        with stage("tcvit.fuse"):
            out = torch.cat([x[:, :prefix], take(image, keep)], dim=1)
            new_size = torch.cat([size[:, :prefix], take(image_size, keep)], dim=1) if size is not None else None
        return out, new_size, info
    with stage("tcvit.connectivity"):
        if C is not None:
            rows = take(C, drop)
            self_weight = C.diagonal(dim1=-2, dim2=-1).gather(1, keep)
        else:  # lazy: C[Q, :] = W_Q + alpha W_Q W, and C[t, t] = W_tt + alpha W[t, :] . W[:, t] for receivers
            W_Q = take(W, drop)
            rows = W_Q + alpha * (W_Q @ W)
            slot = rows.gather(2, keep.unsqueeze(1).expand(-1, P, -1)).argmax(dim=-1)  # receiver among the kept
            receivers = keep.gather(1, slot)  # (B, P) token indices
            row_t, col_t = take(W, receivers), take(W.transpose(-1, -2), receivers)
            diagonal = (W.diagonal(dim1=-2, dim2=-1).gather(1, receivers)
                        + alpha * (row_t.unsqueeze(-2) @ col_t.unsqueeze(-1)).flatten(-3))
            self_weight = torch.zeros(keep.shape, dtype=W.dtype, device=W.device).scatter(1, slot, diagonal)
    with stage("tcvit.fuse"):
        fused, target, fallbacks = fuse_tokens(image.to(dtype), keep, drop, rows, self_weight,
                                               count=hp["connectivity"] == "newton")
        info["fallbacks"] = fallbacks
        out = torch.cat([x[:, :prefix], fused.to(x.dtype)], dim=1)
        new_size = None
        if size is not None:
            kept_size = take(image_size, keep).scatter_add(1, target.unsqueeze(-1), take(image_size, drop))
            new_size = torch.cat([size[:, :prefix], kept_size], dim=1)
    return out, new_size, info


def diagnose(model, images, P: int | Sequence[int] = 14, **hparams) -> dict[str, Any]:
    """Spec section 8's questions, on real attention maps: patch `model` with TC-ViT, run `images` and, in
    every reducing block, measure in float64 (per image): whether Newton can start (||I - A X_0||_1 < 1), how
    far Eq. 9 with 1 and 2 Newton steps is from the exact series, how many of the P dropped tokens change
    when the score drops the dominance (beta = 0: does beta matter?) and when C_bar is the row mean instead
    of the column mean. Returns medians and shares over all (image, block) pairs; the model is unpatched."""
    import torch

    from ..reduce import patch, unpatch

    patch(model, NAME, P=P, **hparams)
    red = model.reduction
    hp = dict(red.hp)
    found: dict[str, list[float]] = {"converges": [], "newton1": [], "newton2": [], "beta_changes": [],
                                     "row_changes": []}
    original = red.reduce

    def changed(a, b):
        return [len(set(x.tolist()) ^ set(y.tolist())) / 2 for x, y in zip(a, b)]

    def watch(layer, x, weights, keys):
        removed, p = red.removals[layer], red.prefix
        W = image_graph(weights, p, hp["head_fusion"], hp["w_block"], torch.float64)
        found["converges"] += (newton_residual(W, hp["alpha"]) < 1).double().tolist()
        exact = series(W, hp["K"], hp["alpha"])
        for steps in (1, 2):
            approx = newton(W, hp["K"], hp["alpha"], steps)
            found[f"newton{steps}"] += ((approx - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)).tolist()
        D = dominance(weights, p, hp["dominance"], hp["head_fusion"], torch.float64) if red.has_cls else None
        col, row = cbar_of(exact, "col"), cbar_of(exact, "row")
        _, drop = split(score_of(col, D, hp) if D is not None else -col, removed)
        _, drop_beta0 = split(-col, removed)
        _, drop_row = split(score_of(row, D, hp) if D is not None else -row, removed)
        if D is not None:
            found["beta_changes"] += changed(drop, drop_beta0)
        found["row_changes"] += changed(drop, drop_row)
        return original(layer, x, weights, keys)

    red.reduce = watch
    try:
        with torch.no_grad():
            model(images)
    finally:
        unpatch(model)

    def median(values):
        return float(torch.tensor(values, dtype=torch.float64).median()) if values else None

    return {"settings": hp, "blocks_x_images": len(found["converges"]),
            "newton_can_start_share": sum(found["converges"]) / max(len(found["converges"]), 1),
            "newton1_rel_error_median": median(found["newton1"]), "newton2_rel_error_median": median(found["newton2"]),
            "newton2_rel_error_max": max(found["newton2"], default=None),
            "dropped_changed_without_dominance_mean": (sum(found["beta_changes"]) / len(found["beta_changes"])
                                                       if found["beta_changes"] else None),
            "dropped_changed_row_vs_col_mean": sum(found["row_changes"]) / max(len(found["row_changes"]), 1)}


@functools.cache
def reduction_class() -> type:
    """The Reduction subclass (built once, on first use: its base class needs torch)."""
    from ..reduce.common import Reduction, stage

    class TCViT(Reduction):
        """TC-ViT's configuration and per-forward diagnostics, shared by all patched blocks."""

        method = NAME

        def __init__(self, model, P: int | Sequence[int] = 14, K: int = 2, alpha: float = 500.0,
                     beta: float = 3.5, head_fusion: str = "mean", w_block: str = "patch", cbar: str = "col",
                     dominance: str = "renorm", score: str = "full", connectivity: str = "series",
                     newton_steps: int = 2, fuse: bool = True, track_sizes: bool = False,
                     connectivity_dtype: str = "float32", prop_attn: bool | None = None):
            given = dict(K=K, alpha=alpha, beta=beta, head_fusion=head_fusion, w_block=w_block, cbar=cbar,
                         dominance=dominance, score=score, connectivity=connectivity, newton_steps=newton_steps,
                         fuse=fuse, track_sizes=track_sizes, connectivity_dtype=connectivity_dtype,
                         prop_attn=prop_attn)
            self.hp = METHOD.validate(given)
            if prop_attn and not track_sizes:
                raise GtpcliError("tcvit: prop_attn needs track_sizes (the paper tracks no token sizes)")
            self.has_cls = getattr(model, "cls_token", None) is not None
            self.image_tokens = model.patch_embed.num_patches
            check_settings(self.hp, self.has_cls, self.image_tokens)
            self.fallbacks = 0            # fusions whose Eq. 12 denominator was not positive (Newton)
            self.newton_residuals: list[tuple[int, float]] = []  # (layer, max ||I - A X_0||_1 over the batch)
            self.kept: dict[int, Any] = {}  # layer -> kept image-token indices of the last forward
            super().__init__(model, P, prop_attn=track_sizes if prop_attn is None else prop_attn)

        def __getattr__(self, name):  # hyperparameters read as attributes: model.reduction.alpha
            hp = self.__dict__.get("hp")
            if hp is not None and name in hp:
                return hp[name]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

        def __setattr__(self, name, value):  # and changed like P: model.reduction.K = 4 (checked first)
            if name in _NAMES and name != "prop_attn" and "hp" in self.__dict__:
                hp = {**self.hp, **METHOD.validate({name: value})}
                check_settings(hp, self.has_cls, self.image_tokens)
                self.__dict__["hp"] = hp
                if name == "track_sizes":
                    self.prop_attn = value
                return
            super().__setattr__(name, value)

        def start(self, x):
            super().start(x)
            self.newton_residuals, self.kept = [], {}

        def attention_need(self, layer: int) -> str:
            """The whole map where tokens are removed: W is its image block (and D its [CLS] row)."""
            return "map" if self.removals[layer] > 0 else "fused"

        def diagnostics(self) -> dict[str, Any]:
            """For result rows, since the last patch: Newton's fallbacks and its starting residual."""
            if self.hp["connectivity"] != "newton":
                return {}
            worst = max((r for _, r in self.newton_residuals), default=None)
            found: dict[str, Any] = {"newton_fallbacks": self.fallbacks, "newton_residual_max": worst, "warnings": []}
            if self.fallbacks:
                found["warnings"].append(f"Eq. 12 denominator <= 0 in {self.fallbacks} fusions (Newton's C has "
                                         "negative entries): plain means used there")
            if worst is not None and worst >= 1:
                found["warnings"].append(f"Newton starts from ||I - A X_0||_1 = {worst:.3g} >= 1: convergence "
                                         "is not guaranteed")
            return found

        def reduce(self, layer, x, weights, keys):
            size = self.sizes_or_ones(x) if self.hp["track_sizes"] else None
            out, size, info = condense(x, weights, self.prefix, self.removals[layer], self.hp, stage, size)
            self.size = size
            self.kept[layer] = info["keep"]
            self.fallbacks += info.get("fallbacks", 0)
            if "newton_residual" in info:
                self.newton_residuals.append((layer, info["newton_residual"]))
            return out

    TCViT.__qualname__ = "TCViT"  # pickles and prints as gtpcli.methods.tcvit.TCViT
    return TCViT


def __getattr__(name: str):
    if name == "TCViT":
        return reduction_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHOD = Method(
    name=NAME,
    title="TC-ViT",
    summary="connectivity-based token condensation: score by -C_bar + beta D, fuse by Eq. 12",
    hparams=HPARAMS,
    stages=("tcvit.connectivity", "tcvit.select", "tcvit.fuse"),
    load=reduction_class,
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=COLUMNS,
    complexity_notes=complexity_notes,
    complexity_hparams=("K", "newton_steps", "cbar", "score", "beta", "fuse", "w_block"),
    needs_cls="score 'full' (beta > 0) and 'dominance' read the [CLS] token's attention",
)
