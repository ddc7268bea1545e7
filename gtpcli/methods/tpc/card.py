"""TPC-ViT, the token propagation controller (readings and departures: docs/methods/tpc.md) as a
registered method: hyperparameters, trace stages and the per-image cost model.

Each token halts once its cumulative break probability b = sigma(gamma t_1 - beta) sigma(gamma t_2 - beta)
(two channels of the block output, Eq. 4-5, after the token distribution regulariser of Eq. 9) reaches 1 - delta
(Eq. 6); the [CLS] state the head reads is the ACT-weighted sum of its block outputs (Eq. 7-8, 11). So the
token count per block depends on the image: TPC is an *adaptive* method, swept by delta instead of P, and
measured by E[GMACs] over images (gtpcli/cost/adaptive.py). The patch is a model-level one
(`patch.py`, loaded on first use: it needs torch).

Readings where the paper is wrong or silent (docs/methods/tpc.md), each a keyword here:
- beta is a gate *centre*: sigma(gamma t - beta). As printed, sigma(5 t + 40) is ~1 for any t > -6 and every
  token would halt after block 1; A-ViT's code (which TPC extends) has sigmoid(t * gate_scale - gate_center).
- Algorithm 1 cannot restart a token (b >= 0, so the cumulative sum only grows): `mode="as_written"` is monotone;
  `mode="nonmonotone"` (a paused token is still computed and may come back) is an experiment with no saving.
- Halted tokens are zeroed around both LayerNorms and their keys masked (A-ViT's code), so masked training
  equals removing them at inference.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...cost.analytic import NORM_MACS_PER_ELEMENT, Arch
from ...errors import GtpcliError
from ..base import HParam, Method

NAME = "tpc"
MODES = ("as_written", "nonmonotone")
EXECUTIONS = ("gathered", "masked")
BATCHINGS = ("padded", "packed")

HPARAMS = (
    HParam("gate_scale", 5.0, "gamma: multiplies the gate channel (Eq. 5)", float, low=0, low_open=True),
    HParam("gate_center", 40.0, "beta read as the gates' centre, sigma(gamma t - beta) (the paper prints "
           "+beta, which halts every token after block 1)", float),
    HParam("delta", 0.01, "a token halts once its cumulative break probability reaches 1 - delta (Eq. 6)",
           float, low=0, high=1, low_open=True),
    HParam("xi", 0.5, "token distribution regulariser (Eq. 9): b <- xi b + (1 - xi) mean_image(b); 1 = off",
           float, low=0, high=1),
    HParam("kappa", 100, "stabiliser: each query attends to its kappa Euclidean-nearest keys (Eq. 17-18)",
           int, low=1),
    HParam("gate_dims", (0, 1), "the two channels of the block output read by the pause and non-restart gates",
           tuple),
    HParam("stabilizer", True, "kappa-nearest-key attention (the paper: DeiT and LV-ViT, not Swin)", bool),
    HParam("target_depth", None, "M_target of the distribution prior N(M_target, 1) (training only; the paper "
           "does not give it)", float, low=0, low_open=True),
    HParam("learn_gates", False, "gate_scale and gate_center as two learnable scalars", bool),
    HParam("mode", "as_written", "as_written: monotone halting (Algorithm 1); nonmonotone: a paused token is "
           "still computed and may restart (an experiment, no saving)", str, MODES),
    HParam("stop_at_cls_halt", False, "stop computing an image once its [CLS] token halts (its logits are "
           "final then)", bool),
    HParam("execution", "gathered", "gathered: only active tokens are computed; masked: dense with masks "
           "(training, reference)", str, EXECUTIONS),
    HParam("batching", "padded", "gathered batches: every block padded to the batch's largest count, or "
           "linear layers on the packed active tokens and attention padded per image", str, BATCHINGS),
)

UNTRAINED = "gates not trained: token counts reflect an untrained controller"
STAGES = ("tpc.gates", "tpc.stabilizer", "tpc.gather")
COUNTS_NOTE = ("MACs as fvcore counts them: matmuls and LayerNorms on the active tokens; the gates, TDR, ACT "
               "sums and the stabiliser's key norms and top-kappa are elementwise work fvcore does not count; "
               "attention runs dense over the active tokens (the kappa mask is applied to the logits)")



def cost(arch: Arch, hparams: Mapping[str, Any] | None = None):
    """Per-image MACs of a TPC model from its per-block active counts, as fvcore counts the gathered path
    (COUNTS_NOTE): a plain block on the n active tokens; patch embedding; the final norm and head on [CLS]
    (or, for a model with a token-labeling head, on every token's ACT state)."""
    from ...cost.adaptive import Cost, vit_cost
    from ...cost.analytic import embed_macs

    block = vit_cost(arch)
    head = NORM_MACS_PER_ELEMENT * arch.C + arch.C * arch.num_classes
    if arch.aux_head:  # LV-ViT: norm on every token's ACT state, aux head on every image token
        head = NORM_MACS_PER_ELEMENT * arch.N * arch.C + arch.C * arch.num_classes * (arch.N - arch.prefix + 1)
    return Cost(block.per_token, block.per_pair, fixed=embed_macs(arch) + head)


def _no_schedule(*args, **kwargs):
    raise GtpcliError("tpc: token counts depend on the image, there is no per-P schedule; "
                      "`gtpcli profile MODEL --method tpc --delta ...` measures them")


def implemented_overhead(arch: Arch, removals: Sequence[int], hparams: Mapping[str, Any] | None = None) -> int:
    _no_schedule()


METHOD = Method(
    name=NAME,
    title="TPC-ViT",
    summary="token propagation controller: per-token ACT halting from two gate channels (input-dependent counts)",
    hparams=HPARAMS,
    stages=STAGES,
    patch="gtpcli.methods.tpc.patch:TPC",
    implemented_overhead=implemented_overhead,
    complexity_row=_no_schedule,
    complexity_layers=_no_schedule,
    columns=(),
    needs_cls="the head reads the ACT-weighted [CLS] state",
    adaptive=True,
    sweep_key="delta",
    cost=cost,
    level="model",
    checkpoint_hparams="gtpcli.methods.tpc.patch:checkpoint_hparams",
    untrained=UNTRAINED,
)
