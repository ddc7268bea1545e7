"""GTP (GTP-ViT, paper section 3.2) as a registered method: hyperparameters, stage labels, the analytic
overhead (Eq. 15 and what the patched model runs) and its `gtpcli complexity` columns.

The patch itself is `patch.py`'s `GTP` (loaded on first use: it needs torch); readings: docs/methods/gtp.md.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...cost import analytic as A
from ..base import Column, HParam, Method

NAME = "gtp"

HPARAMS = (
    HParam("alpha", 0.1, "propagation strength (Eq. 10)", float, low=0),
    HParam("sparsity", 1.0, "attention sparsity theta, 1 = off", float, low=0, high=1, low_open=True),
    HParam("M", 8, "semantic neighbours per token", int, low=1),
    HParam("selection", "mixed", "token scores (Fig. 5)", str, ("mixed", "diag", "broad", "cls", "cossim", "random")),
    HParam("graph", "mixed", "graph type (Table 4); none = pure pruning", str, ("mixed", "spatial", "semantic", "none")),
    HParam("head_fusion", "max", "how per-head scores are fused", str, ("max", "mean")),
    HParam("prop_attn", True, "proportional attention (Eq. 11)", bool),
    HParam("variant", "paper", "paper equations, or the authors' released code", str, ("paper", "authors")),
)



def implemented_overhead(arch: A.Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """GTP as gtpcli runs it: the semantic graph on the N - prefix image tokens, dense
    (N_l - prefix - P) x P blocks of A_hat propagating features and sizes (and, where attention reads token
    positions, their 2 coordinates); `cossim` compares attention rows. Selection itself is
    not a MAC."""
    hparams = hparams or {}
    schedule = A.token_schedule(arch.N, arch.L, list(removals), arch.prefix)
    image = [n - arch.prefix for n in schedule]
    graph = hparams.get("graph", "mixed")
    selection = (sum(i * i * n for i, n, p in zip(image, schedule, removals) if p)  # attention rows compared
                 if hparams.get("selection") == "cossim" else 0)
    if not any(removals) or graph == "none" or hparams.get("alpha", 0.1) == 0:
        return selection
    semantic = (image[0] ** 2 * arch.C) if graph in ("mixed", "semantic") else 0
    carried = arch.C + 1 + (2 if arch.tracks_positions else 0)  # features, size, positions (x size)
    return selection + semantic + sum((n - p) * p * carried for n, p in zip(image, removals) if p)


def complexity_row(arch: A.Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Eq. 15 as the exact sum over layers and as printed (N_l with [CLS], the paper's bookkeeping)."""
    N, C, L, H = arch.N, arch.C, arch.L, arch.heads
    exact, printed = A.gtp_macs(N, C, L, H, P), A.gtp_macs_closed_form(N, C, L, H, P)
    return {"gtp_macs": A.as_number(exact), "gtp_macs_closed_form": A.as_number(printed),
            "gtp_closed_form_diff": A.as_number(printed - exact)}


def complexity_layers(arch: A.Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per layer: selection H N_l and propagation (N_l - P) P C."""
    return [{f"gtp_{k}": v for k, v in A.gtp_layer_terms(N_l, P, arch.C, arch.heads).items()}
            for N_l in A.token_schedule(arch.N, arch.L, P, arch.prefix)]


def complexity_once(arch: A.Arch, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The semantic graph, built once per image on all N tokens (Eq. 15's N^2 C)."""
    return {"gtp_graph": A.gtp_graph_macs(arch.N, arch.C)}


METHOD = Method(
    name=NAME,
    title="GTP",
    summary="graph-based token propagation: keep the N - P best by attention, propagate the rest over a graph",
    hparams=HPARAMS,
    stages=("gtp.graph", "gtp.select", "gtp.propagate"),
    patch="gtpcli.methods.gtp.patch:GTP",
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=(Column("gtp_macs", "GTP sum"), Column("gtp_macs_closed_form", "GTP Eq.15")),
    complexity_once=complexity_once,
    complexity_source="GTP Eq. 15",
    needs_cls="selection 'cls' reads the [CLS] token's attention",
)
