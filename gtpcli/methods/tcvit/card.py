"""TC-ViT, connectivity-based token condensation, as a registered method: hyperparameters, analytic
overhead, complexity columns and trace stages (the patch is `patch.py`; readings and departures:
docs/methods/tcvit.md).

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

import math
from typing import Any, Mapping, Sequence

from ...cost.analytic import Arch
from ...errors import GtpcliError
from ..base import Column, HParam, Method, image_schedule

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
# Conventions (docs/methods/tcvit.md, cost conventions): an n x n x n product is n^3 MACs; a mean or sum over m inputs costs m per
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
    """What TC-ViT's published GFLOPs contain: one n^3 product per squaring of W (docs/methods/tcvit.md)."""
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
    """The combinations the method cannot run, each a one-line error (docs/methods/tcvit.md)."""
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


METHOD = Method(
    name=NAME,
    title="TC-ViT",
    summary="connectivity-based token condensation: score by -C_bar + beta D, fuse by Eq. 12",
    hparams=HPARAMS,
    stages=("tcvit.connectivity", "tcvit.select", "tcvit.fuse"),
    patch="gtpcli.methods.tcvit.patch:TCViT",
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=COLUMNS,
    complexity_notes=complexity_notes,
    complexity_hparams=("K", "newton_steps", "cbar", "score", "beta", "fuse", "w_block"),
    needs_cls="score 'full' (beta > 0) and 'dominance' read the [CLS] token's attention",
)
