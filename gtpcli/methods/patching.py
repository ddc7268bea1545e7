"""Token-reduction methods as patches of timm Vision Transformers: `patch(model, "gtp", P=8)`.

Which methods exist is the registry's business (`gtpcli.methods.REGISTRY`); this module only applies them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from torch import nn

from .. import methods as registry
from ..errors import GtpcliError
from .blocks import Reduction, check_blocks, patch_blocks, unpatch_blocks


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
    check_blocks(model)  # before the method reads the model: the block's kind is the first thing to refuse
    return patch_blocks(model, card.load()(model, **kwargs))


def controller(model: nn.Module):
    """What holds a patched model's state and its last forward's record (`.last`): the model-level method's
    submodule (TPC-ViT's `model.tpc`), or the blocks' Reduction; None for a stock model."""
    for card in registry.REGISTRY.values():
        if card.level == "model" and card.name in getattr(model, "_modules", {}):
            return model._modules[card.name]
    return getattr(model, "reduction", None)


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: the stock timm forward again."""
    for card in registry.REGISTRY.values():
        if card.level == "model" and card.name in getattr(model, "_modules", {}):
            card.load().remove(model)
    return unpatch_blocks(model)


def apply(model: nn.Module, method: str, P: int | None, hparams: Mapping[str, Any]) -> nn.Module:
    """Patch the model at one point of a sweep; an impossible P or a bad hyperparameter is the user's error,
    said in one line. An input-dependent method takes no P (its point is in `hparams`)."""
    adaptive = registry.get(method).adaptive
    try:
        return patch(model, method, **hparams) if adaptive else patch(model, method, P=P, **hparams)
    except GtpcliError:
        raise  # already the user's one line, named by the method (no "tpc: tpc: ...")
    except (ValueError, TypeError) as exc:
        raise GtpcliError(f"{method}: {exc}" if adaptive else f"{method} at P={P}: {exc}") from None


def attach(model: nn.Module, method: str | None, P: int | None = None,
           hparams: Mapping[str, Any] | None = None) -> Callable[[], Any]:
    """Patch `model` at this point now (None: the stock model), and return what puts it back into this point
    later, between the slices of interleaved timing: a block swap onto the same Reduction (cheap, and the
    objects a compiled model's guards saw), or a model-level method's patch again. Weights are never copied."""
    unpatch(model)
    if method is None:
        return lambda: unpatch(model)
    apply(model, method, P, hparams or {})
    if registry.get(method).level == "block":
        reduction = model.reduction
        return lambda: patch_blocks(unpatch(model), reduction)
    return lambda: apply(model, method, P, hparams or {})
