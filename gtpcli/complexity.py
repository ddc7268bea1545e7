"""`gtpcli complexity` as data: one row per (N, C, P) with exact sums, printed closed forms and their gap."""

from __future__ import annotations

from dataclasses import replace
from itertools import product
from typing import Any

from . import analytic as A

MAX_ROWS = 10_000  # a bigger grid is refused up front (it would take minutes and print megabytes)
TOME_NOTE = ("Eq. 14 as printed has P^2 C coefficient (L^3/12 + L^2/12 + L/8); its own sum gives "
             "(L^3/12 - L^2/8 + L/24). Rows show the exact sum; *_closed_form_diff = printed - sum.")


def complexity_result(arch: A.Arch, Ns: list[int], Cs: list[int], Ps: list[int], model: str | None,
                      layers: bool = False) -> dict[str, Any]:
    rows = []
    for N, C, P in product(Ns, Cs, Ps):
        point = replace(arch, N=N, C=C).validate()
        rows.append(complexity_row(point, P, with_backbone=model is not None, layers=layers))
    return {"model": model, "rows": rows, "notes": [TOME_NOTE] if any(r["tome_closed_form_diff"] for r in rows) else []}


def complexity_row(arch: A.Arch, P: int, with_backbone: bool, layers: bool) -> dict[str, Any]:
    N, C, L, H = arch.N, arch.C, arch.L, arch.heads
    A.token_schedule(N, L, P, arch.prefix)  # a P that empties a layer is an error, not a row
    gtp, tome = A.gtp_macs(N, C, L, H, P), A.tome_macs(N, C, L, P)
    gtp_cf, tome_cf = A.gtp_macs_closed_form(N, C, L, H, P), A.tome_macs_closed_form(N, C, L, P)
    row: dict[str, Any] = {
        "N": N, "C": C, "L": L, "H": H, "P": P,
        "gtp_macs": A.as_number(gtp),
        "tome_macs": A.as_number(tome),
        "gtp_macs_closed_form": A.as_number(gtp_cf),
        "tome_macs_closed_form": A.as_number(tome_cf),
        "gtp_closed_form_diff": A.as_number(gtp_cf - gtp),
        "tome_closed_form_diff": A.as_number(tome_cf - tome),
        "ratio": float(tome / gtp) if gtp else None,
    }
    if with_backbone:
        row["backbone_macs"] = sum(A.backbone_macs(arch, P).values())
    if layers:
        row["layers"] = layer_rows(arch, P)
    return row


def layer_rows(arch: A.Arch, P: int) -> list[dict[str, Any]]:
    """N_l and every cost term of layer l; layer 0 holds GTP's one-off graph construction."""
    rows = [{"layer": 0, "N_l": arch.N, "gtp_graph": A.gtp_graph_macs(arch.N, arch.C)}]
    for layer, N_l in enumerate(A.token_schedule(arch.N, arch.L, P, arch.prefix), start=1):
        terms = {f"gtp_{k}": v for k, v in A.gtp_layer_terms(N_l, P, arch.C, arch.heads).items()}
        terms |= {f"tome_{k}": A.as_number(v) for k, v in A.tome_layer_terms(N_l, P, arch.C).items()}
        terms |= {f"block_{k}": v for k, v in A.block_terms(N_l, P, arch.C, arch.mlp_ratio).items()}
        rows.append({"layer": layer, "N_l": N_l, **terms})
    return rows
