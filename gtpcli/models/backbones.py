"""Model names to timm models: profiles, timm names, and the user's checkpoints."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import torch
from torch import nn

from ..cost.analytic import Arch
from ..errors import GtpcliError
from . import hub
from .profiles import Profile, builtin_names, find_profile


def resolve(name: str) -> tuple[Profile | None, str]:
    """(profile or None, timm model name) for a profile name, a profile YAML path or a timm name."""
    import timm

    from .lvvit import MODELS

    profile = find_profile(name)
    if profile is not None:
        return profile, profile.model["timm"]
    if timm.is_model(name) or name in MODELS or name.startswith(HUB_PREFIXES):
        return None, name
    close = (difflib.get_close_matches(name, builtin_names() + list(MODELS), n=3, cutoff=0.6)
             or difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6))
    hint = f" (did you mean {', '.join(close)}?)" if close else f" (profiles: {', '.join(builtin_names())}, or any timm model name)"
    raise GtpcliError(f"unknown model {name!r}{hint}")


PATCHABLE_MODULES = ("vision_transformer", "deit", "eva", "beit")  # timm modules whose models gtpcli patches
MAX_MODELS = 32


def expand(names: str) -> list[str]:
    """A model argument to model names: one name, a comma list, or timm wildcards (`vit_*_patch16_224`)
    restricted to the VisionTransformers gtpcli can patch. Every name is resolved (or refused) here."""
    import fnmatch

    import timm

    found: list[str] = []
    for name in (part.strip() for part in str(names).split(",")):
        if not name:
            raise GtpcliError(f"empty model name in {names!r}")
        if not any(c in name for c in "*?["):
            resolve(name)
            found.append(name)
            continue
        matches = sorted({m for module in PATCHABLE_MODULES for m in timm.list_models(name, module=module)})
        if not matches:
            others = fnmatch.filter(timm.list_models(), name)
            why = f" ({len(others)} timm models match, none a VisionTransformer gtpcli can patch)" if others else ""
            raise GtpcliError(f"no timm model gtpcli can patch matches {name!r}{why}")
        found += matches
    found = list(dict.fromkeys(found))
    if len(found) > MAX_MODELS:
        raise GtpcliError(f"{names!r} names {len(found)} models (at most {MAX_MODELS} in one run): narrow the pattern")
    return found


def create(timm_name: str, checkpoint: Path | None = None, strict: bool = True, pretrained: bool = False,
           **kwargs) -> nn.Module:
    """A timm (or built-in LV-ViT) model with random weights, timm's published weights (`pretrained`),
    or the weights of a local checkpoint; in eval mode. Extra keywords go to the constructor (a
    profile's `model.kwargs`)."""
    import timm

    from .lvvit import MODELS

    if pretrained and timm_name in MODELS:
        raise GtpcliError(f"{timm_name} has no published weights in timm; pass the authors' file with --checkpoint")
    try:
        if timm_name in MODELS:
            model = MODELS[timm_name](**kwargs)
        elif pretrained or timm_name.startswith(HUB_PREFIXES):
            model = hub.create_pretrained(timm_name, pretrained, **kwargs)
        else:
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
    except GtpcliError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GtpcliError(f"cannot build {timm_name} with {kwargs}: {detail}") from None
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise GtpcliError(f"{timm_name} is not a plain Vision Transformer (no blocks/patch_embed); "
                          "gtpcli patches timm VisionTransformer-style models")
    if checkpoint is not None:
        note(load_checkpoint(model, checkpoint, strict))
    return model.eval()


HUB_PREFIXES = ("hf-hub:", "local-dir:")  # timm names whose architecture comes with the weights


def note(text: str | None, kind: str = "note") -> None:
    """A remark on stderr (which checkpoint entry was loaded, what was resampled), never on stdout; of
    several processes (torchrun), rank 0's alone."""
    from ..distributed import is_main

    if text and is_main():
        sys.stderr.write(f"{kind}: {text}\n")


def arch_for(timm_name: str) -> Arch:
    """The analytic model's view of a timm (or built-in) ViT, built on the meta device: no weights are
    allocated, so even a ViT-L answers in about a second."""
    with torch.device("meta"):
        return arch_of(create(timm_name))


ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes", "in_chans")


def constructor_kwargs(profile: Profile | None, img_size: int | None = None) -> dict:
    """What the model constructor is told: a profile's architecture fields and `model.kwargs`, and the
    command line's --img-size over both."""
    found = {}
    if profile is not None:
        found = {**{k: profile.model[k] for k in ARCH_KEYS if k in profile.model}, **profile.model.get("kwargs", {})}
    return found | ({"img_size": img_size} if img_size else {})


def arch_of(model: nn.Module) -> Arch:
    """The analytic model's view of a timm ViT (VisionTransformer, Eva: EVA-02, DINOv3, PE, RoPE ViTs)."""
    from .lvvit import ConvStem

    block, embed = model.blocks[0], model.patch_embed
    C, attn, mlp = model.embed_dim, block.attn, block.mlp
    pooled_norm = isinstance(getattr(model, "norm", None), nn.Identity) and not isinstance(
        getattr(model, "fc_norm", nn.Identity()), nn.Identity)
    hidden = mlp.fc2.in_features
    return Arch(N=embed.num_patches + model.num_prefix_tokens, C=C, L=len(model.blocks),
                H=attn.num_heads, prefix=model.num_prefix_tokens,
                mlp_ratio=hidden / C, patch_size=embed.patch_size[0],
                in_chans=getattr(embed, "in_chans", None) or embed.proj.in_channels,
                num_classes=getattr(model, "num_classes", 1000) or 0,
                stem="conv4" if isinstance(embed, ConvStem) else "patch", pooled_norm=pooled_norm,
                aux_head=hasattr(model, "aux_head"),
                mlp_hidden=None if int(C * (hidden / C)) == hidden else hidden,  # the ratio says it, as profiles do
                mlp_gated=hasattr(mlp, "fc1_g") or getattr(mlp, "fc1", mlp.fc2).out_features == 2 * hidden,
                mlp_norm=norm_macs(getattr(mlp, "norm", None)),
                attn_norm=sum(norm_macs(getattr(attn, name, None)) for name in ("q_norm", "k_norm", "norm")),
                attn_gate=getattr(attn, "gate", None) is not None,
                norm_pre=norm_macs(getattr(model, "norm_pre", None)), tracks_positions=tracks_positions(model),
                **attention_pool_macs(getattr(model, "attn_pool", None)))


def tracks_positions(model: nn.Module) -> bool:
    """Whether attention reads where tokens are (rotary embeddings, BEiT's relative position bias), so
    that reductions move positions with the tokens."""
    return getattr(model, "rope", None) is not None or getattr(model, "rel_pos_bias", None) is not None or any(
        getattr(block.attn, "relative_position_bias_table", None) is not None for block in model.blocks)


def norm_macs(module: nn.Module | None) -> int:
    """fvcore's MACs per element of a normalisation layer: 5 for an affine LayerNorm, 4 without affine,
    0 for anything fvcore does not count (Identity, RMSNorm)."""
    if isinstance(module, nn.LayerNorm):
        return 5 if module.elementwise_affine else 4
    return 0


def attention_pool_macs(pool: nn.Module | None) -> dict[str, int]:
    """An attention-pool head (timm's AttentionPoolLatent: SigLIP, PE) as Arch's pool_fixed (its latent
    queries: q, proj, norm, MLP) and pool_per_token (each token read: k and v, q k^T and A V)."""
    if pool is None:
        return {}
    latent, width = pool.latent_len, pool.q.out_features
    fixed = latent * (pool.q.in_features * width + pool.proj.in_features * pool.proj.out_features
                      + norm_macs(pool.q_norm) * width + norm_macs(pool.norm) * pool.proj.out_features)
    if getattr(pool, "mlp", None) is not None:
        fixed += latent * (pool.mlp.fc1.in_features * pool.mlp.fc1.out_features
                           + pool.mlp.fc2.in_features * pool.mlp.fc2.out_features)
    per_token = pool.kv.in_features * pool.kv.out_features + 2 * latent * width + norm_macs(pool.k_norm) * width
    return {"pool_fixed": fixed, "pool_per_token": per_token}


def image_size(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.img_size)


def load_checkpoint(model: nn.Module, path: Path, strict: bool = True) -> str:
    """Load .pth/.pt/.bin/.tar (tensors only, never code), .safetensors or .npz weights into `model`.
    Returns what was loaded, in words: which entry of a training checkpoint (EMA weights first, as timm's
    `use_ema`), and what was resampled to fit the model (the position embedding, for another --img-size)."""
    path = Path(path)
    if not path.is_file():
        raise GtpcliError(f"checkpoint not found: {path}")
    state, entry = _read_state_dict(path)
    if path.suffix == ".npz" and not set(state) & set(model.state_dict()):
        try:
            model.load_pretrained(str(path))  # big_vision layout (embedding/kernel, Transformer/encoderblock_0/...)
        except Exception as exc:  # numpy/timm raise many kinds for a wrong or corrupt file
            raise GtpcliError(f"{path}: cannot load as a big_vision/timm .npz checkpoint: {exc}") from None
        return f"{path}: loaded as a big_vision .npz checkpoint"
    state, resampled = _adapted(model, state)
    problems, fitting = _fit(model, state)
    if problems and strict:
        raise GtpcliError(f"{path} does not fit this architecture; {problems} (use --no-strict to load what fits)")
    expected = len(model.state_dict())
    if problems and len(fitting) < MIN_LOADED * expected:
        raise GtpcliError(f"{path}: only {len(fitting)} of the model's {expected} tensors fit, under "
                          f"{MIN_LOADED:.0%} even with --no-strict: it is not a checkpoint of this model; {problems}")
    model.load_state_dict(fitting, strict=False)
    if problems:
        note(f"{path} loaded non-strictly: {len(fitting)} of {expected} tensors loaded, "
             f"{expected - len(fitting)} LEFT RANDOM; {problems}", "warning")
    said = [entry] if entry else []
    return f"{path}: loaded {', '.join(said + resampled)}" if said or resampled else None


MIN_LOADED = 0.5  # --no-strict refuses a checkpoint that fills less than this share of the model's tensors
ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model", "module")  # timm's order with use_ema=True
EMA_ENTRIES = ("state_dict_ema", "model_ema")


def _npz_arrays(path: Path) -> dict:
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise GtpcliError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors, and which entry of a training checkpoint they came from where it had EMA weights
    (None otherwise); `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes stripped."""
    if path.suffix == ".npz":
        return {k: torch.from_numpy(v) for k, v in _npz_arrays(path).items()}, None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise GtpcliError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        state = _torch_load(path)
    entry = next((key for key in ENTRIES if isinstance(state, dict) and isinstance(state.get(key), dict) and state[key]),
                 None)
    said = None
    if entry in EMA_ENTRIES:
        said = f"its {entry!r} entry (EMA weights, preferred as timm does)"
    elif entry is not None and any(key in state for key in EMA_ENTRIES):
        said = f"its {entry!r} entry (its EMA entry is empty)"
    if entry is not None:
        state = state[entry]
    if not isinstance(state, dict):
        raise GtpcliError(f"{path}: expected a state dict, found {type(state).__name__}")
    return _clean(state), said


def _clean(state: dict) -> dict:
    """timm's `clean_state_dict` (DDP and torch.compile prefixes, in either order), and again for timm
    releases that know only `module.`."""
    from timm.models import clean_state_dict

    state = clean_state_dict(state)
    prefixes = ("module.", "_orig_mod.")
    while any(key.startswith(prefixes) for key in state):
        state = {key.removeprefix("_orig_mod.").removeprefix("module."): value for key, value in state.items()}
    return state


def _torch_load(path: Path):
    """torch.load with weights_only=True, which also allows the argparse.Namespace of training scripts'
    `args` (timm's train.py, DeiT's main.py): a plain attribute bag, safe to rebuild. Anything else
    beyond tensors and containers is refused: unpickling it could run code."""
    import argparse

    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; 2.4 has add_safe_globals only
    if allow is None and hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        if allow is not None:
            with allow([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not _is_pickle(path):
            raise GtpcliError(f"{path}: not a readable torch checkpoint ({type(exc).__name__})") from None
        if "argparse" in str(exc) and "Namespace" in str(exc):
            raise GtpcliError(f"{path}: its 'args' entry is an argparse.Namespace, which torch {torch.__version__} "
                              "cannot load safely (torch >= 2.4 can); re-save the checkpoint without 'args'") from None
        raise GtpcliError(f"{path}: refused: it holds Python objects beyond tensors, and unpickling "
                          "them could run code (torch.load weights_only=True said no)") from None


def _adapted(model: nn.Module, state: dict) -> tuple[dict, list[str]]:
    """The state dict adapted to the model by timm's own filter for its family (position embedding
    resampled to another grid, patch embedding resized, known release layouts converted); for a model
    without one (LV-ViT), the position embedding alone, with timm's `resample_abs_pos_embed`."""
    before = state.get("pos_embed")
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and type(model).__module__.startswith("timm."):
        try:
            state = filter_fn(state, model)
        except Exception:  # a checkpoint of another architecture: the mismatch report below says how
            pass
    elif before is not None and getattr(model, "pos_embed", None) is not None and before.shape != model.pos_embed.shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        state = {**state, "pos_embed": resample_abs_pos_embed(before, list(model.patch_embed.grid_size),
                                                              num_prefix_tokens=prefix)}
    after = state.get("pos_embed")
    if before is None or after is None or before.shape == after.shape:
        return state, []
    return state, [f"pos_embed resampled from {tuple(before.shape)} to {tuple(after.shape)} "
                   "(timm's resample_abs_pos_embed, bicubic)"]


def _is_pickle(path: Path) -> bool:
    """Whether the file is a well-formed pickle (plain, or inside torch's zip format)."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        for _ in pickletools.genops(data):
            pass
        return True
    except Exception:
        return False


def _fit(model: nn.Module, state: dict) -> tuple[str, dict]:
    """A readable report of missing, unexpected and mis-shaped keys, and the tensors that do fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]
    problems = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                         for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys)
    fitting = {k: v for k, v in state.items() if k in expected and k not in mismatched}
    return problems, fitting
