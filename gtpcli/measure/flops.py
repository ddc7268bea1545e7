"""Real MAC counts: fvcore's FlopCountAnalysis (which counts multiply-adds) with handles for what it
misses, cross-checked against torch's FlopCounterMode (which counts FLOPs = 2 x MACs), also given the
attention formulas that some torch releases lack."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn

# Unsupported ops that would carry multiply-adds if fvcore met them: any of these left uncounted is reported.
MAC_BEARING = ("attention", "conv", "mm", "matmul", "linear", "einsum", "baddbmm", "addmv", "dot", "mv")


def sdpa_macs(inputs, outputs) -> int:
    """aten::scaled_dot_product_attention: Q K^T and A V, B*H*Nq*Nk*(d_qk + d_v)."""
    q, k, v = (_shape(t) for t in inputs[:3])
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def baddbmm_macs(inputs, outputs) -> int:
    a, b = _shape(inputs[1]), _shape(inputs[2])
    return prod(a) * b[-1]


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_macs,
    "aten::baddbmm": baddbmm_macs,
}


# Attention kernels that `F.scaled_dot_product_attention` may reach under FlopCounterMode, depending on
# the torch release, the device and the grad mode. Some releases count none of the CPU ones (2.14.1 sees
# `_scaled_dot_product_flash_attention_for_cpu`, or `scaled_dot_product_attention` itself under
# inference mode, and counts 0 FLOPs for them). The math fallback decomposes into matmuls and is
# counted everywhere. FlopCounterMode counts an op only where it is not decomposed further, so giving a
# formula to the composite op and to the kernels it reaches cannot count one call twice.
ATTENTION_OPS = (
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)


def sdpa_flops(query, key, value, *args, **kwargs) -> int:
    """FlopCounterMode formula for attention: 2 x B*Hq*Nq*Nk*(d_qk + d_v) FLOPs, as torch's own
    `sdpa_flop` (grouped-query attention included: the query's heads count). Takes tensors or shapes
    and ignores the output keyword, whose name differs between torch releases."""
    q, k, v = (tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t) for t in (query, key, value))
    return 2 * prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


sdpa_flops._get_raw = True  # releases that wrap formulas in a shape converter leave it alone


def missing_flop_formulas() -> dict:
    """Formulas for the attention ops this torch has and its FlopCounterMode does not count; an op this
    release lacks is skipped, one it already counts is left to torch."""
    from torch.utils.flop_counter import flop_registry

    missing = {}
    for name in ATTENTION_OPS:
        try:
            op = getattr(torch.ops.aten, name)
        except (AttributeError, RuntimeError):
            continue
        if op not in flop_registry:
            missing[op] = sdpa_flops
    return missing


@dataclass
class MacCount:
    macs: int                      # fvcore total, our handles included
    by_operator: dict[str, int]
    uncounted: list[str] = field(default_factory=list)   # unsupported ops that may carry MACs
    flop_counter_macs: int | None = None                  # torch FlopCounterMode / 2 (no norms)

    @property
    def matmul_macs(self) -> int:
        """What both counters count: everything but normalisation layers."""
        return self.macs - sum(v for k, v in self.by_operator.items() if "norm" in k)

    @property
    def counters_disagree(self) -> float | None:
        """Relative gap between fvcore and FlopCounterMode on the ops both count."""
        if self.flop_counter_macs is None:
            return None
        if self.flop_counter_macs == 0:  # a counter that saw nothing disagrees entirely, it is not skipped
            return 1.0 if self.matmul_macs else 0.0
        return abs(self.matmul_macs - self.flop_counter_macs) / self.flop_counter_macs


def count_macs(model: nn.Module, image: torch.Tensor) -> MacCount:
    """MACs of one forward pass on `image` (batch 1 for per-image figures)."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import and the jit tracer warn about things we handle
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, (image,)).set_op_handle(**EXTRA_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = int(analysis.total())
        by_op = {k: int(v) for k, v in analysis.by_operator().items()}
        unsupported = analysis.unsupported_ops()
    uncounted = sorted(op for op in unsupported if any(word in op for word in MAC_BEARING))
    return MacCount(total, by_op, uncounted, flop_counter_macs(model, image))


def flop_counter_macs(model: nn.Module, image: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=missing_flop_formulas())
    # no_grad, not inference_mode: under inference_mode some releases (2.4) hand FlopCounterMode almost
    # no op (it counted 0 for a whole ViT), and the cross-check was silently skipped.
    with torch.no_grad(), frozen(model), counter:
        model(image)
    return counter.get_total_flops() // 2


@contextmanager
def frozen(model: nn.Module):
    """The model's parameters with requires_grad off while FlopCounterMode runs, then as they were.
    Under no_grad a same-shape view of a parameter (SigLIP's attention-pool `latent.expand(1, -1, -1)`)
    still requires grad but has no grad_fn, and FlopCounterMode's module tracker asserts on it."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _shape(value) -> list[int]:
    return list(value.type().sizes())
