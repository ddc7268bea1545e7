"""ATS, adaptive token sampling (Fayyaz et al., ECCV 2022), as a training-free patch following its official
code (adaptivetokensampling/ATS, `libs/models/transformers/ats_block.py`; readings and departures: docs/methods/ats.md).

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

So ATS is an *adaptive* method: rows carry E[GMACs] over images (gtpcli/cost/adaptive.py). Batches are
padded to their largest count with the padding masked out of attention.

`variant` says which CDF the sampling reads (the two official paths, `DROP_TOKENS` off or on):
- "masked" (default): the CDF over all N_ref - 1 slots, a token dropped earlier counting as a zero, as the
  official masked execution keeps them; an image's tokens do not depend on the batch it is in;
- "authors_eval": the CDF over the tokens the block holds, as the authors' DeiT-S evaluation config runs it
  (`DROP_TOKENS: True` packs each batch to its widest image). Rescaled by its minimum, the least significant
  token lands at 0 and is never sampled, where the masked CDF starts at a dropped token's 0. The two differ
  only in an image that holds fewer than N_ref - 1 tokens and no zero slot: the widest of its batch (every
  image at batch 1) once an earlier ATS block dropped some. A narrower image's padding is its zero slot, so
  under "authors_eval" an image's tokens depend on its batch, as in the authors' runs.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...cost.analytic import NORM_MACS_PER_ELEMENT, Arch
from ...errors import GtpcliError
from ..base import HParam, Method, parse_blocks

NAME = "ats"
OFFICIAL_LAYERS = "3-11"
VARIANTS = ("masked", "authors_eval")

HPARAMS = (
    HParam("layers", OFFICIAL_LAYERS, "ATS blocks, counted from 0 as the official code: a range 3-11 or a list "
           "3,5,7 (GTP's Tables 8/9 print ranges like 7-11)", str),
    HParam("variant", "masked", "the CDF over every slot, dropped tokens as zeros (masked), or over the tokens "
           "the block holds, as the authors' DeiT-S evaluation packs them (authors_eval)", str, VARIANTS),
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
    from ...cost.adaptive import Cost
    from ...cost.analytic import embed_macs, token_macs

    C, L = arch.C, arch.L
    sampling = set(ats_blocks((hparams or {}).get("layers", OFFICIAL_LAYERS), L))
    attention, pair, mlp = token_macs(arch)
    norm = NORM_MACS_PER_ELEMENT * C
    head_per_token = (0 if arch.pooled_norm else norm) + arch.pool_per_token  # final norm, attention pool
    head_fixed = (norm if arch.pooled_norm else 0) + arch.pool_fixed + C * arch.num_classes

    def per_token(layer: int, n: float) -> float:
        before = mlp * n if layer > 0 else 0
        if layer == L:
            return before + head_per_token * n  # on every token left
        return before + attention * n + (C * n if layer in sampling else 0)

    def per_pair(layer: int, n: float) -> float:
        return pair * n * n if layer < L else 0

    return Cost(per_token, per_pair, fixed=embed_macs(arch) + head_fixed)


def _no_schedule(*args, **kwargs):
    raise GtpcliError("ats: token counts depend on the image, there is no per-P schedule; compare it at matched "
                      "E[GMACs] (`gtpcli profile deit_s --bins paper`)")


METHOD = Method(
    name=NAME,
    schedule="sampling in the ATS blocks given by layers",
    title="ATS",
    summary="adaptive token sampling: inverse-transform sampling of tokens by [CLS] attention x value norm "
            "(input-dependent counts)",
    hparams=HPARAMS,
    stages=STAGES,
    patch="gtpcli.methods.ats.patch:ATS",
    implemented_overhead=_no_schedule,
    complexity_row=_no_schedule,
    complexity_layers=_no_schedule,
    columns=(),
    needs_cls="every setting: tokens are scored by the [CLS] token's attention",
    adaptive=True,
    sweep_key="layers",
    cost=cost,
)
