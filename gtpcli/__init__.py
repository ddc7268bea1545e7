"""gtpcli: what token reduction (GTP, ToMe) really costs and buys on a Vision Transformer.

`gtpcli.patch(model, method="gtp", P=8)` turns a timm VisionTransformer into a reduced one in place.
torch is imported only when a patch is asked for, so the CLI's light commands stay instant.
"""

__version__ = "0.1.0"


def patch(model, method: str = "gtp", **kwargs):
    from .methods.patching import patch as _patch
    return _patch(model, method, **kwargs)


def unpatch(model):
    from .methods.patching import unpatch as _unpatch
    return _unpatch(model)
