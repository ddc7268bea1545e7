"""Token-reduction methods as patches of timm Vision Transformers: `patch(model, "gtp", P=8)`."""

from __future__ import annotations

from torch import nn

from .common import Reduction, patch_blocks, unpatch_blocks
from .gtp import GTP
from .tome import ToMe

METHODS: dict[str, type[Reduction]] = {"gtp": GTP, "tome": ToMe}


def patch(model: nn.Module, method: str = "gtp", **kwargs) -> nn.Module:
    """Patch a timm VisionTransformer in place with a reduction method; returns the model.

    `P` (or ToMe's `r`) is the number of tokens removed per layer, an int or one value per layer;
    change it later with `model.reduction.P = ...`. Other keywords are the method's hyperparameters."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if "r" in kwargs:
        kwargs["P"] = kwargs.pop("r")
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{type(model).__name__} is not a timm VisionTransformer-like model (no blocks/patch_embed)")
    return patch_blocks(model, METHODS[method](model, **kwargs))


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: the stock timm forward again."""
    return unpatch_blocks(model)
