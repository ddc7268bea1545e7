"""The `resolution` baseline of `gtpcli compare`: the stock model fed smaller images, the cheapest way to
lower its cost without touching its blocks. The input size comes from the cost model
(gtpcli/cost/solve.py's `resolution`); this module builds the model for it."""

from __future__ import annotations

import copy

from torch import nn

from ..errors import GtpcliError


def at_input_size(model: nn.Module, size: int) -> nn.Module:
    """A copy of the stock model that takes size x size images, by timm's own `set_input_size`: the patch
    grid follows, and the position embeddings are resampled by timm's `resample_abs_pos_embed` (bicubic,
    prefix tokens kept), as timm does for a checkpoint loaded at another size or with dynamic_img_size.
    At the model's own size it is the stock model, weights unchanged."""
    check_input_size(model, size)
    resized = copy.deepcopy(model)
    resized.set_input_size(img_size=(size, size))
    return resized.eval()


def check_input_size(model: nn.Module, size: int) -> None:
    """A one-line error unless `at_input_size(model, size)` can build the model (checked before measuring)."""
    patch = model.patch_embed.patch_size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < patch or size % patch:
        raise GtpcliError(f"resolution: an input size must be a positive multiple of the patch size {patch}, "
                          f"got {size}")
    if not hasattr(model, "set_input_size"):
        raise GtpcliError(f"resolution: {type(model).__name__} cannot change its input size (it has no timm "
                          "set_input_size)")
