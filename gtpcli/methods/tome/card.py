"""ToMe (Bolya et al., ICLR 2023) as a registered method: hyperparameters, stage labels, the analytic
overhead (GTP paper's Eq. 14 and what the patched model runs) and its `gtpcli complexity` columns.

The patch itself is `patch.py`'s `ToMe` (loaded on first use: it needs torch); readings: docs/methods/tome.md.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Mapping, Sequence

from ...cost import analytic as A
from ..base import Column, HParam, Knob, Method

NAME = "tome"
NOTE = ("Eq. 14 as printed has P^2 C coefficient (L^3/12 + L^2/12 + L/8); its own sum gives "
        "(L^3/12 - L^2/8 + L/24). Rows show the exact sum; *_closed_form_diff = printed - sum.")

HPARAMS = (
    HParam("prop_attn", True, "proportional attention", bool),
)



def clamped_removals(N: int, L: int, prefix: int, P) -> tuple[list[int], list[tuple[int, int, int]]]:
    """ToMe never fails on a large r: each layer merges at most half of its image tokens. Returns the merges
    per layer and the clamps, (layer, asked, used)."""
    used, clamps, tokens = [], [], N
    for layer, r in enumerate(A.per_layer(P, L)):
        allowed = min(r, (tokens - prefix) // 2)
        if allowed < r:
            clamps.append((layer, r, allowed))
        used.append(allowed)
        tokens -= allowed
    return used, clamps


# r from 0 to half the image tokens (from there every layer merges half of its tokens, whatever r is).
KNOB = Knob("P", lambda arch: range((arch.N - arch.prefix) // 2 + 1),
            lambda arch, P, hparams: clamped_removals(arch.N, arch.L, arch.prefix, P)[0])


def implemented_overhead(arch: A.Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """ToMe as gtpcli runs it: all N_l tokens (prefix included, as the official code) are matched on keys
    averaged over heads, so the similarity has C/H channels, not Eq. 14's C. Merging is not a MAC."""
    schedule = A.token_schedule(arch.N, arch.L, list(removals), arch.prefix)
    head_dim = arch.C // arch.heads
    return sum(((n + 1) // 2) * (n // 2) * head_dim for n, p in zip(schedule, removals) if p)


def complexity_row(arch: A.Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Eq. 14 as the exact sum over layers and as printed (which is not equal to its own sum)."""
    exact, printed = A.tome_macs(arch.N, arch.C, arch.L, P), A.tome_macs_closed_form(arch.N, arch.C, arch.L, P)
    return {"tome_macs": A.as_number(exact), "tome_macs_closed_form": A.as_number(printed),
            "tome_closed_form_diff": A.as_number(Fraction(printed) - exact)}


def complexity_layers(arch: A.Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{f"tome_{k}": A.as_number(v) for k, v in A.tome_layer_terms(N_l, P, arch.C).items()}
            for N_l in A.token_schedule(arch.N, arch.L, P, arch.prefix)]


def complexity_notes(rows) -> list[str]:
    return [NOTE] if any(r.get("tome_closed_form_diff") for r in rows) else []


METHOD = Method(
    name=NAME,
    title="ToMe",
    summary="token merging: bipartite soft matching on keys, merge the r most similar pairs",
    hparams=HPARAMS,
    stages=("tome.match", "tome.merge"),
    patch="gtpcli.methods.tome.patch:ToMe",
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=(Column("tome_macs", "ToMe sum"), Column("tome_macs_closed_form", "ToMe Eq.14")),
    complexity_notes=complexity_notes,
    complexity_source="ToMe Eq. 14",
    aliases={"r": "P"},
    knob=KNOB,
)
