"""ATS, adaptive token sampling (Fayyaz et al., ECCV 2022), as a training-free patch following its official
code (adaptivetokensampling/ATS, `libs/models/transformers/ats_block.py`; specs/baselines.md section 3).

In each ATS block (the official default: blocks 3 to 11, counted from 0), after the softmax:
- significance of image token j: S_j = (sum_h A_h[CLS, j]) * ||v_j|| (v_j: the values of all heads
  concatenated), normalised to sum 1. Tokens dropped by an earlier ATS block count as S_j = 0, as in the
  official masked execution (their values are zeroed), so the sampling sees N_ref - 1 scores every time;
- sort ascending, cumulative sum, rescale the CDF to [0, 1]; place N_ref - 1 points evenly on the y-axis from
  the smallest positive CDF value to 1 (N_ref = the model's initial token count) and take, for each, the token
  whose CDF value is nearest; duplicates collapse, so fewer tokens survive when the significance is
  concentrated: the count depends on the image. [CLS] (every prefix token) is always kept;
- the sampled tokens, in ascending significance, are the block's attention output rows plus their residual;
  the MLP runs on them only.

So ATS is an *adaptive* method: rows carry E[GMACs] over images (gtpcli/measure/adaptive.py). Batches are
padded to their largest count with the padding masked out of attention (the official DROP_TOKENS path);
an image's tokens do not depend on the batch it is in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..analytic import NORM_MACS_PER_ELEMENT, Arch
from ..errors import GtpcliError
from .base import HParam, Method, parse_blocks

NAME = "ats"
OFFICIAL_LAYERS = "3-11"

HPARAMS = (
    HParam("layers", OFFICIAL_LAYERS, "ATS blocks, counted from 0 as the official code: a range 3-11 or a list "
           "3,5,7 (GTP's Tables 8/9 print ranges like 7-11)", str),
)
STAGES = ("ats.score", "ats.sample", "ats.gather")
COUNTS_NOTE = ("Per-image MACs as fvcore counts them at batch 1: every block's attention on the tokens entering "
               "it plus the [CLS] row of an ATS block (N C), its MLP and the final norm on the tokens leaving it. "
               "Counts per image: tokens entering each block, then those leaving the last one (L + 1 values).")


def ats_blocks(text: str, depth: int) -> tuple[int, ...]:
    """'7-11' -> (7, 8, 9, 10, 11); '3,5' -> (3, 5); blocks of a `depth`-block model, counted from 0."""
    return parse_blocks(text, depth, "ats layers")


def cost(arch: Arch, hparams: Mapping[str, Any] | None = None):
    """Per-image MACs from the L + 1 counts (tokens entering block l; the last: leaving block L - 1). Entry l
    carries block l's attention (qkv, QK^T, AV, proj, norm1, and the [CLS] row of an ATS block) and the MLP of
    block l - 1 (which runs on the tokens entering block l); entry L the last MLP and the final norm."""
    from ..analytic import embed_macs
    from ..measure.adaptive import Cost

    C, hidden, L = arch.C, int(arch.C * arch.mlp_ratio), arch.L
    sampling = set(ats_blocks((hparams or {}).get("layers", OFFICIAL_LAYERS), L))
    norm = NORM_MACS_PER_ELEMENT * C

    def per_token(layer: int, n: float) -> float:
        mlp = (2 * C * hidden + norm) * n if layer > 0 else 0
        if layer == L:
            return mlp + norm * n  # the final norm on every token left
        return mlp + (4 * C * C + norm) * n + (C * n if layer in sampling else 0)

    def per_pair(layer: int, n: float) -> float:
        return 2 * n * n * C if layer < L else 0

    return Cost(per_token, per_pair, fixed=embed_macs(arch) + C * arch.num_classes)


def _no_schedule(*args, **kwargs):
    raise GtpcliError("ats: token counts depend on the image, there is no per-P schedule; compare it at matched "
                      "E[GMACs] (`gtpcli profile deit_s --bins paper`)")


# --- the patch (torch) ------------------------------------------------------------------------------

def significance(first_row, values, prefix: int):
    """(B, n): sum over heads of the [CLS] row (B, H, N) times the norm of each token's values (B, H, N, d)
    over all heads, at the image tokens, normalised to sum 1."""
    B, H, N, d = values.shape
    norms = values.transpose(1, 2).reshape(B, N, H * d).norm(dim=-1)
    scores = (first_row.sum(dim=1) * norms)[:, prefix:]
    return scores / scores.sum(dim=-1, keepdim=True)


def inverse_transform_sample(scores, reference: int):
    """The official sampling on scores (B, m), m <= reference (0 = a token dropped earlier or padding): the
    scores padded with zeros to `reference`, sorted ascending, CDF rescaled to [0, 1], `reference` points from
    the smallest positive CDF value to 1, each taking the nearest CDF value's token (the first one on ties),
    duplicates collapsed. Returns (indices into the m tokens (B, k), ascending significance, padded with 0;
    which are real (B, k); counts (B,))."""
    import torch

    B, m = scores.shape
    full = torch.cat([scores.new_zeros(B, reference - m), scores], dim=1)
    ordered, order = full.sort(dim=1)
    cdf = ordered.cumsum(dim=1)
    low, high = cdf.min(dim=1, keepdim=True).values, cdf.max(dim=1, keepdim=True).values
    cdf = (cdf - low) / (high - low)
    start = (cdf + (cdf == 0).to(cdf.dtype) * 1e8).min(dim=1, keepdim=True).values
    steps = torch.arange(reference, device=scores.device, dtype=cdf.dtype)
    ys = torch.linspace(0, 1, reference, device=scores.device, dtype=cdf.dtype)
    ys = start + ((ys * (reference - 1)) - start * steps) / (reference - 1)
    picks = (ys.unsqueeze(2) - cdf.unsqueeze(1)).abs().argmin(dim=2).sort(dim=1).values  # (B, reference)
    fresh = torch.ones_like(picks, dtype=torch.bool)
    fresh[:, 1:] = picks[:, 1:] != picks[:, :-1]
    counts = fresh.sum(dim=1)
    k = int(counts.max())
    slot = torch.where(fresh, picks, picks.new_full((), reference)).sort(dim=1).values[:, :k]  # unique first
    real = slot < reference
    tokens = order.gather(1, slot.clamp(max=reference - 1)) - (reference - m)
    return torch.where(real, tokens, torch.zeros_like(tokens)), real, counts


@dataclass
class Trace:
    """What the last forward recorded, per image (the adaptive sweep reads `counts`)."""

    counts: Any          # (B, L + 1) tokens entering each block (prefix included), then leaving the last
    sampled: dict        # ATS block -> (B, k) indices of the sampled tokens among that block's image tokens


def ats_block_forward(self, x, attn_mask=None, is_causal: bool = False):
    """A timm block under ATS: attention over the valid tokens (padding masked), then, in an ATS block,
    sampling before the MLP."""
    from ..reduce.common import attend, stage

    red = self.reduction
    layer = self.layer_index
    if layer == 0:
        red.start(x)
    red.record(layer, x)
    sampling = layer in red.blocks
    with stage("attention"):
        out, seen, _ = attend(self.attn, self.norm1(x), red.key_bias(x), "cls" if sampling else "fused")
        x = x + self.drop_path1(self.ls1(out))
    if sampling:
        x = red.sample(layer, x, seen)
    with stage("mlp"):
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    if layer == red.num_layers - 1:
        red.record(red.num_layers, x)
    return x


@functools.cache
def reduction_class() -> type:
    """The Reduction subclass (built on first use: its base class needs torch)."""
    import torch

    from ..reduce.common import Reduction, stage

    class ATS(Reduction):
        """ATS blocks at `layers`; per-image counts of the last forward in `last`."""

        method = NAME
        block_forward = ats_block_forward  # batches padded to their widest image (no packed path)

        def __init__(self, model, layers: str = OFFICIAL_LAYERS, P=None):
            if P is not None:
                _no_schedule()
            METHOD.require_cls(model)
            self.hp = METHOD.validate({"layers": layers})
            self.blocks = ats_blocks(self.hp["layers"], len(model.blocks))
            self.last: Trace | None = None
            super().__init__(model, 0, prop_attn=False)

        @property
        def variant_label(self) -> str:
            return f"paper: ATS blocks {self.hp['layers']} (counted from 0)"

        def start(self, x):
            super().start(x)
            self.valid = None  # (B, N) which tokens are real, None while all are
            self.counts = x.new_zeros(x.shape[0], self.num_layers + 1, dtype=torch.long)
            self.last = Trace(self.counts, {})

        def record(self, layer: int, x) -> None:
            self.counts[:, layer] = x.shape[1] if self.valid is None else self.valid.sum(dim=1)

        def key_bias(self, x):
            """-inf on padded keys (B, 1, 1, N), None without padding."""
            if self.valid is None:
                return None
            bias = torch.zeros(self.valid.shape, dtype=x.dtype, device=x.device).masked_fill(~self.valid, float("-inf"))
            return bias[:, None, None, :]

        def sample(self, layer: int, x, seen):
            p = self.prefix
            with stage("ats.score"):
                scores = significance(seen.first_row, seen.values, p)
            with stage("ats.sample"):
                index, real, _ = inverse_transform_sample(scores, self.tokens - p)
            with stage("ats.gather"):
                image = x[:, p:].gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                self.last.sampled[layer] = index
                if bool(real.all()):
                    self.valid = None
                    return torch.cat([x[:, :p], image], dim=1)
                self.valid = torch.cat([real.new_ones(x.shape[0], p), real], dim=1)
                return torch.cat([x[:, :p], image * real.unsqueeze(-1)], dim=1)

    ATS.__qualname__ = "ATS"
    return ATS


def __getattr__(name: str):
    if name == "ATS":
        return reduction_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHOD = Method(
    name=NAME,
    schedule="sampling in the ATS blocks given by layers",
    title="ATS",
    summary="adaptive token sampling: inverse-transform sampling of tokens by [CLS] attention x value norm "
            "(input-dependent counts)",
    hparams=HPARAMS,
    stages=STAGES,
    load=reduction_class,
    implemented_overhead=_no_schedule,
    complexity_row=_no_schedule,
    complexity_layers=_no_schedule,
    columns=(),
    needs_cls="every setting: tokens are scored by the [CLS] token's attention",
    adaptive=True,
    sweep_key="layers",
    cost=cost,
)
