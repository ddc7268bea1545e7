"""Token-reduction methods as patches of timm Vision Transformers: `patch(model, "gtp", P=8)`.

Which methods exist is the registry's business (`gtpcli.methods.REGISTRY`); this module only applies them.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from torch import nn

from .. import methods as registry
from .blocks import Reduction, patch_blocks, unpatch_blocks


class _Classes(Mapping):
    """name -> Reduction subclass, for every registered method (each loaded when first asked for)."""

    def __getitem__(self, name: str) -> type[Reduction]:
        if name not in registry.REGISTRY:
            raise KeyError(name)
        return registry.REGISTRY[name].load()

    def __iter__(self) -> Iterator[str]:
        return iter(registry.REGISTRY)

    def __len__(self) -> int:
        return len(registry.REGISTRY)


METHODS: Mapping[str, type[Reduction]] = _Classes()


def patch(model: nn.Module, method: str = "gtp", **kwargs) -> nn.Module:
    """Patch a timm VisionTransformer in place with a reduction method; returns the model.

    `P` (or ToMe's `r`) is the number of tokens removed per layer, an int or one value per layer;
    change it later with `model.reduction.P = ...`. Other keywords are the method's hyperparameters
    (`gtpcli.methods.get(method).hparams`)."""
    if method not in registry.REGISTRY:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(registry.REGISTRY)})")
    card = registry.REGISTRY[method]
    for alias, name in card.aliases.items():
        if alias in kwargs:
            kwargs[name] = kwargs.pop(alias)
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{type(model).__name__} is not a timm VisionTransformer-like model (no blocks/patch_embed)")
    unpatch(model)
    if card.level == "model":  # a method that replaces the model's forward (TPC-ViT), not its blocks
        return card.load().patch(model, **kwargs)
    return patch_blocks(model, card.load()(model, **kwargs))


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: the stock timm forward again."""
    for card in registry.REGISTRY.values():
        if card.level == "model" and card.name in getattr(model, "_modules", {}):
            card.load().remove(model)
    return unpatch_blocks(model)
