"""Which method runs on which timm model family, found by running it (`gtpcli profiles --families`).

Each family is represented by its smallest timm model at a small input, with random weights: every method is
patched on it at its lightest reducing setting and one image goes through. The answer is what happened: it
ran (with the tokens each block saw), or the one-line refusal the method gave, so the table is the code's
own word, never a list kept by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    model: str          # the family's smallest timm model
    img_size: int       # small enough to be quick, large enough for 12 blocks at P = 1
    traits: str         # what sets the family apart, for the table


FAMILIES = (
    Family("DeiT", "deit_tiny_patch16_224", 64, "[CLS], absolute positions"),
    Family("DINOv2 + registers", "vit_small_patch14_reg4_dinov2", 56, "[CLS] + 4 registers, LayerScale"),
    Family("GAP ViT + registers", "vit_little_patch16_reg4_gap_256", 64, "no [CLS], average pooling"),
    Family("CLIP", "vit_base_patch16_clip_224", 64, "[CLS], pre-norm"),
    Family("SigLIP", "vit_base_patch16_siglip_224", 64, "no [CLS], attention-pool head"),
    Family("EVA-02", "eva02_tiny_patch14_224", 56, "rotary (axial), SwiGLU, average pooling"),
    Family("RoPE ViT", "vit_small_patch16_rope_224", 64, "rotary (axial), [CLS]"),
    Family("RoPE-Mixed ViT", "vit_small_patch16_rope_mixed_224", 64, "rotary (learned per block and head)"),
    Family("DINOv3", "vit_small_patch16_dinov3", 64, "rotary (DINOv3), [CLS] + 4 registers"),
    Family("Perception Encoder", "vit_pe_core_tiny_patch16_384", 64, "rotary (axial), attention-pool head"),
    Family("BEiT", "beit_base_patch16_224", 64, "relative position bias"),
    Family("NaFlexViT", "naflexvit_base_patch16_map", 64, "variable-size patch sequences, attention pool"),
)

# The lightest reducing setting of each kind of method: P = 1 for a scheduled one, the defaults otherwise.
LIGHT = {"scheduled": {"P": 1}, "adaptive": {}}


def support(family: Family, method: str) -> dict[str, Any]:
    """Patch `method` on the family's model and run one image: {"runs": True, "tokens": what each block's
    attention saw} or {"runs": False, "why": the method's one-line refusal}."""
    import torch

    from ..errors import GtpcliError
    from ..methods import REGISTRY
    from ..methods.patching import patch, unpatch

    card = REGISTRY[method]
    model = _model(family)
    if isinstance(model, GtpcliError):  # gtpcli does not take the model at all
        return {"runs": False, "why": str(model)}
    try:
        patch(model, method, **LIGHT["adaptive" if card.adaptive else "scheduled"])
    except (GtpcliError, ValueError, TypeError) as exc:
        return {"runs": False, "why": str(exc).removeprefix(f"{method}: ")}
    counts = []  # norm1's input: what attention sees (Evo-ViT selects inside the block)
    hooks = [block.norm1.register_forward_pre_hook(lambda module, args: counts.append(args[0].shape[-2]))
             for block in model.blocks]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, family.img_size, family.img_size, generator=torch.Generator().manual_seed(0)))
    finally:
        for hook in hooks:
            hook.remove()
        unpatch(model)
    return {"runs": True, "tokens": counts}


_BUILT: dict[str, Any] = {}


def _model(family: Family):
    """The family's model with random weights, built once per process, or why gtpcli refuses it."""
    from ..errors import GtpcliError
    from .backbones import create

    if family.model not in _BUILT:
        import torch

        torch.manual_seed(0)
        try:
            _BUILT[family.model] = create(family.model, img_size=family.img_size)
        except GtpcliError as exc:
            _BUILT[family.model] = exc
    return _BUILT[family.model]


def table(methods: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per family: its model, traits, and each method's `support`."""
    from ..methods import REGISTRY

    methods = methods or tuple(REGISTRY)
    return [{"family": f.name, "model": f.model, "img_size": f.img_size, "traits": f.traits,
             "methods": {m: support(f, m) for m in methods}} for f in FAMILIES]
