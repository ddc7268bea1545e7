"""`gtpcli complexity` as data: one row per (N, C, P) with each method's analytic overhead, read from the
method registry: each method's own module gives its columns (exact sums, printed closed forms, variants),
per-layer terms and notes."""

from __future__ import annotations

from dataclasses import replace
from itertools import product
from typing import Any, Mapping, Sequence

from ..cost import analytic as A
from ..errors import GtpcliError
from ..methods import REGISTRY, scheduled

MAX_ROWS = 10_000  # a bigger grid is refused up front (it would take minutes and print megabytes)


def complexity_result(arch: A.Arch, Ns: list[int], Cs: list[int], Ps: list[int], model: str | None,
                      layers: bool = False, methods: Sequence[str] | None = None,
                      hparams: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """`methods`: registered names (default: all); `hparams`: {method: {name: value}} for the analytic
    variants that depend on them (TC-ViT's K, newton_steps, ...)."""
    methods = list(methods or scheduled())
    for m in methods:
        if REGISTRY[m].adaptive:
            raise GtpcliError(f"{m}: token counts depend on the image, so there is no analytic schedule; "
                              f"`gtpcli profile MODEL --method {m}` measures E[GMACs] over images")
    hparams = {m: REGISTRY[m].resolved((hparams or {}).get(m, {})) for m in methods}
    rows = []
    for N, C, P in product(Ns, Cs, Ps):
        point = replace(arch, N=N, C=C).validate()
        rows.append(complexity_row(point, P, with_backbone=model is not None, layers=layers, methods=methods,
                                   hparams=hparams))
    notes = [note for m in methods for note in REGISTRY[m].complexity_notes(rows)]
    used = {m: {k: hparams[m][k] for k in REGISTRY[m].complexity_hparams} for m in methods}
    return {"model": model, "methods": methods, "hparams": {m: v for m, v in used.items() if v}, "rows": rows,
            "tokens": {c.key: c.tokens for m in methods for c in REGISTRY[m].columns}, "notes": notes}


def complexity_row(arch: A.Arch, P: int, with_backbone: bool, layers: bool, methods: Sequence[str] | None = None,
                   hparams: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    methods = list(methods or scheduled())
    hparams = hparams or {}
    A.token_schedule(arch.N, arch.L, P, arch.prefix)  # a P that empties a layer is an error, not a row
    row: dict[str, Any] = {"N": arch.N, "C": arch.C, "L": arch.L, "H": arch.heads, "P": P}
    for m in methods:
        row |= REGISTRY[m].complexity_row(arch, P, hparams.get(m, {}))
    if "gtp_macs" in row and "tome_macs" in row:
        row["ratio"] = row["tome_macs"] / row["gtp_macs"] if row["gtp_macs"] else None
    if with_backbone:
        row["backbone_macs"] = sum(A.backbone_macs(arch, P).values())
    if layers:
        row["layers"] = layer_rows(arch, P, methods, hparams)
    return row


def layer_rows(arch: A.Arch, P: int, methods: Sequence[str] | None = None,
               hparams: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """N_l (all tokens), n_l (image tokens) and every cost term of layer l; layer 0 holds what is computed
    once per image (GTP's graph)."""
    methods = list(methods or scheduled())
    hparams = hparams or {}
    once = {}
    for m in methods:
        if REGISTRY[m].complexity_once is not None:
            once |= REGISTRY[m].complexity_once(arch, hparams.get(m, {}))
    rows = [{"layer": 0, "N_l": arch.N, **once}]
    per_method = [REGISTRY[m].complexity_layers(arch, P, hparams.get(m, {})) for m in methods]
    for layer, N_l in enumerate(A.token_schedule(arch.N, arch.L, P, arch.prefix), start=1):
        terms: dict[str, Any] = {}
        for found in per_method:
            terms |= found[layer - 1]
        terms |= {f"block_{k}": v for k, v in A.block_terms(N_l, P, arch).items()}
        rows.append({"layer": layer, "N_l": N_l, "n_l": N_l - arch.prefix, **terms})
    return rows
