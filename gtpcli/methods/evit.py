"""EViT (Liang et al., ICLR 2022, "Not All Patches are What You Need") as a training-free patch:
hyperparameters, analytic overhead and the Reduction, in one module (specs/baselines.md section 2).

At each drop location (official `shrink_base` models: blocks 3, 6, 9 counted from 0), between the attention
residual and the MLP:
- attentiveness a_j of image token j = the [CLS] row of the softmax attention map, averaged over heads
  (softmax over all keys, [CLS] included, not renormalised);
- keep the ceil(k n) most attentive of the n image tokens (n counts an earlier fused token too), gathered in
  descending attentiveness;
- fuse the others into one token sum_j a_j x_j (raw a_j, no division by their sum), appended after the kept
  ones. No token sizes, no proportional attention. The MLP runs on [CLS] + kept + fused.

With `P` given instead (an int or one per block), it is gtpcli's equal-P variant, not EViT: every block with
P_l > 0 drops its P_l + 1 least attentive tokens and appends their fused token (net P_l removed), so
`--method gtp,tome,evit --P 0..14` compares at equal tokens removed per layer.

Everything above the "patch" section is plain arithmetic (no torch).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

from ..analytic import Arch
from .base import Column, HParam, Method, parse_blocks

NAME = "evit"
PAPER_DROP_LOC = "3,6,9"

HPARAMS = (
    HParam("keep_rate", 0.7, "token keeping rate k at each drop location (not with P)", float,
           low=0, high=1, low_open=True, own_schedule=True),
    HParam("drop_loc", PAPER_DROP_LOC, "blocks that drop tokens, counted from 0, comma-separated (official "
           "DeiT-S/B models: 3,6,9; not with P)", str, own_schedule=True),
    HParam("fuse_token", True, "fuse the inattentive tokens into one token weighted by attentiveness "
           "(false: prune them)", bool),
)


def drop_blocks(text: str, depth: int) -> tuple[int, ...]:
    return parse_blocks(text, depth, "evit drop_loc")


def kept_count(keep_rate: float, n: int) -> int:
    """ceil(k n) as the official code computes it (float product, then ceil)."""
    return math.ceil(keep_rate * n)


def keep_rate_removals(arch: Arch, keep_rate: float, drop_loc: str, fuse_token: bool = True) -> list[int]:
    """Tokens each block removes under EViT's own schedule. A drop location removes n - ceil(k n), minus the
    fused token it adds. One that would drop a single token with fusion removes nothing: gtpcli then leaves
    the block alone (the official code would replace that token by a_j x_j)."""
    n = arch.N - arch.prefix
    removals = [0] * arch.L
    for block in drop_blocks(drop_loc, arch.L):
        kept = kept_count(keep_rate, n)
        if kept < n:
            removals[block] = n - kept - (1 if fuse_token else 0)
            n -= removals[block]
    return removals


def dropped(removal: int, fuse_token: bool) -> int:
    """Image tokens a block takes out of the kept set: its net removal, plus one when they become a fused token."""
    return removal + 1 if fuse_token and removal > 0 else removal


def implemented_overhead(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    """Per dropping block: the [CLS] row of the attention map computed beside the fused kernel (q_0 K^T over
    the N_l tokens, N_l C) and the fused token a^T X_drop ((1 x m) by (m x C)). Ranking (a mean over heads,
    top-k) is not a MAC."""
    from ..analytic import token_schedule

    fuse = (hparams or {}).get("fuse_token", True)
    tokens = token_schedule(arch.N, arch.L, list(removals), arch.prefix)
    return sum((n + (dropped(r, True) if fuse else 0)) * arch.C for n, r in zip(tokens, removals) if r > 0)


def complexity_row(arch: Arch, P: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The equal-P variant at this P (EViT's own schedule has no P: see `gtpcli profile --bins paper`)."""
    return {"evit_macs": implemented_overhead(arch, [P] * arch.L, hparams)}


def complexity_layers(arch: Arch, P: int, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    from ..analytic import token_schedule

    fuse = hparams.get("fuse_token", True)
    return [{"evit_cls_row": n * arch.C if P else 0, "evit_fuse": dropped(P, True) * arch.C if fuse and P else 0}
            for n in token_schedule(arch.N, arch.L, P, arch.prefix)]


def complexity_notes(rows) -> list[str]:
    return ["EViT column: gtpcli's equal-P variant (P + 1 tokens fused into one per block); EViT's own "
            "keep-rate schedule is in `gtpcli profile --bins paper`."]


# --- the patch (torch) ------------------------------------------------------------------------------

def attentiveness(first_row, prefix: int):
    """a (B, n): the [CLS] row (B, H, N) of the attention map at the image tokens, averaged over heads."""
    return first_row[:, :, prefix:].mean(dim=1)


def select_and_fuse(x, a, kept: int, prefix: int, fuse_token: bool, stage=None):
    """One EViT step on tokens x (B, N, C) with attentiveness a (B, n): [prefix, the `kept` most attentive
    image tokens in descending attentiveness, then sum_j a_j x_j over the others (when `fuse_token`)].
    Returns (tokens, kept image indices). Pure function (the tests call it directly)."""
    import contextlib

    import torch

    stage = stage or (lambda name: contextlib.nullcontext())
    image = x[:, prefix:]
    with stage("evit.rank"):
        order = a.argsort(dim=-1, descending=True, stable=True)
        keep, drop = order[:, :kept], order[:, kept:]
    C = x.shape[-1]
    parts = [x[:, :prefix], image.gather(1, keep.unsqueeze(-1).expand(-1, -1, C))]
    if fuse_token and drop.shape[1]:
        with stage("evit.fuse"):
            others = image.gather(1, drop.unsqueeze(-1).expand(-1, -1, C))
            parts.append(a.gather(1, drop).unsqueeze(1).to(x.dtype) @ others)  # (B, 1, m) @ (B, m, C)
    return torch.cat(parts, dim=1), keep


@functools.cache
def reduction_class() -> type:
    """The Reduction subclass (built on first use: its base class needs torch)."""
    from ..reduce.common import Reduction, stage

    class EViT(Reduction):
        """EViT's schedule (keep_rate at drop_loc) or, with P, gtpcli's equal-P variant."""

        method = NAME

        def __init__(self, model, P: int | Sequence[int] | None = None, keep_rate: float = 0.7,
                     drop_loc: str = PAPER_DROP_LOC, fuse_token: bool = True):
            METHOD.require_cls(model)
            self.hp = METHOD.validate(dict(keep_rate=keep_rate, drop_loc=drop_loc, fuse_token=fuse_token))
            self.kept: dict[int, Any] = {}  # layer -> kept image-token indices of the last forward
            super().__init__(model, P, prop_attn=False)

        @property
        def variant_label(self) -> str:
            """What a result row is: EViT's own schedule, or gtpcli's equal-P variant."""
            if self.P is None:
                return f"paper: keep_rate {self.hp['keep_rate']:g} at blocks {self.hp['drop_loc']}"
            return "gtpcli variant: equal P, P + 1 tokens fused per block"

        def schedule_removals(self, P):
            if P is not None:
                return super().schedule_removals(P)
            arch = Arch(N=self.tokens, C=1, L=self.num_layers, H=1, prefix=self.prefix)
            return keep_rate_removals(arch, self.hp["keep_rate"], self.hp["drop_loc"], self.hp["fuse_token"])

        def start(self, x):
            super().start(x)
            self.kept = {}

        def attention_need(self, layer: int) -> str:
            """Only the [CLS] row of the map, beside the fused kernel, where tokens are dropped."""
            return "cls" if self.removals[layer] > 0 else "fused"

        def reduce(self, layer, x, attention, keys):
            n = x.shape[1] - self.prefix
            kept = n - dropped(self.removals[layer], self.hp["fuse_token"])
            with stage("evit.rank"):
                a = attentiveness(attention.first_row, self.prefix)
            out, self.kept[layer] = select_and_fuse(x, a, kept, self.prefix, self.hp["fuse_token"], stage)
            return out

    EViT.__qualname__ = "EViT"
    return EViT


def __getattr__(name: str):
    if name == "EViT":
        return reduction_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHOD = Method(
    name=NAME,
    schedule="keep_rate at drop_loc (with P: gtpcli's equal-P variant)",
    title="EViT",
    summary="keep the tokens the [CLS] token attends to most, fuse the rest into one (keep_rate at drop_loc)",
    hparams=HPARAMS,
    stages=("evit.rank", "evit.fuse"),
    load=reduction_class,
    implemented_overhead=implemented_overhead,
    complexity_row=complexity_row,
    complexity_layers=complexity_layers,
    columns=(Column("evit_macs", "EViT equal-P", "N_l incl. prefix ([CLS] row); P + 1 fused tokens"),),
    complexity_notes=complexity_notes,
    complexity_hparams=("fuse_token",),
    needs_cls="every setting: tokens are ranked by the [CLS] token's attention",
)
