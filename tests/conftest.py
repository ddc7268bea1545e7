"""Shared fixtures for the reduction tests: small timm ViTs with random weights (never downloaded),
fresh copies of them for in-place patching, and a recorder of what enters each block."""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

# One intra-op thread. On 2 cores shared with other jobs, torch's two OpenMP threads wait on each other:
# the same test took 84-119 s with 2 threads and 20-32 s with 1 (deit_b's GMACs table, load 3-5), and
# training the digits ViT 854 s against 104 s. Alone on the machine, one thread costs little.
torch.set_num_threads(int(os.environ.get("GTPCLI_TEST_THREADS", "1")))


def _ready(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with a visible effect: LayerScale gammas (timm's default 1e-6 would make
    every block almost the identity) get distinctive per-channel values."""
    generator = torch.Generator().manual_seed(seed + 1234)
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "LayerScale":
                module.gamma.copy_(0.5 + torch.rand(module.gamma.shape, generator=generator))
    return model.eval()


def _create(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _ready(timm.create_model(name, pretrained=False, **kwargs), seed)


def _custom(seed: int = 0, **kwargs) -> torch.nn.Module:
    """A small VisionTransformer whose attention maps are peaked rather than almost uniform (scaled
    query/key weights), so token rankings are well separated, not decided by rounding noise."""
    torch.manual_seed(seed)
    options = dict(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    options.update(kwargs)
    model = VisionTransformer(**options)
    with torch.no_grad():
        for block in model.blocks:
            dim = block.attn.qkv.weight.shape[0] // 3
            block.attn.qkv.weight[: 2 * dim] *= 12.0
    return _ready(model, seed)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


# --- the stock models, built once per session; tests patch deep copies (`fresh`) -----------------

@pytest.fixture(scope="session")
def deit_small():
    return _create("deit_small_patch16_224")


@pytest.fixture(scope="session")
def vit_medium_gap():
    """No [CLS], global average pooling, LayerScale, no qkv bias."""
    return _create("vit_medium_patch16_gap_256")


@pytest.fixture(scope="session")
def vit_tiny():
    return _create("vit_tiny_patch16_224")


@pytest.fixture(scope="session")
def reg_vit():
    """[CLS] + 4 register tokens (5 prefix tokens), LayerScale."""
    return _custom(seed=1, img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, reg_tokens=4,
                   init_values=1e-5)


@pytest.fixture(scope="session")
def reg_gap_vit():
    """4 register tokens, no [CLS], average pooling (like vit_base_patch16_reg4_gap_256, but small)."""
    return _custom(seed=2, img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, reg_tokens=4,
                   class_token=False, global_pool="avg", init_values=1e-5, qkv_bias=False, fc_norm=False)


@pytest.fixture(scope="session")
def qk_norm_vit():
    return _custom(seed=3, img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, qk_norm=True)


@pytest.fixture(scope="session")
def small_vit():
    """[CLS], 8x8 grid of image tokens (65 tokens), 4 blocks."""
    return _custom(seed=4)


@pytest.fixture(scope="session")
def small_gap_vit():
    """No [CLS], average pooling, 8x8 grid (64 tokens), 4 blocks, LayerScale."""
    return _custom(seed=5, class_token=False, global_pool="avg", init_values=1e-5, fc_norm=False)


@pytest.fixture
def fresh():
    """A deep copy of a session model, to be patched in place without touching the original."""
    def make(model: torch.nn.Module) -> torch.nn.Module:
        return copy.deepcopy(model).eval()
    return make


@pytest.fixture
def image():
    """A seeded random image batch for a model: image(model, batch=1, dtype=float32)."""
    def make(model: torch.nn.Module, batch: int = 1, dtype: torch.dtype = torch.float32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        height, width = model.patch_embed.img_size
        return torch.randn(batch, 3, height, width, generator=generator).to(dtype)
    return make


@pytest.fixture
def record_blocks():
    """Context manager recording, for each block, its input tokens, the reduction's token sizes at
    that moment (None for block 0, where `start` resets them) and its output."""
    @contextmanager
    def recorder(model: torch.nn.Module):
        record = {"inputs": [None] * len(model.blocks), "sizes": [None] * len(model.blocks),
                  "outputs": [None] * len(model.blocks)}
        handles = []
        for index, block in enumerate(model.blocks):
            def pre(module, args, index=index):
                record["inputs"][index] = args[0].detach().clone()
                reduction = getattr(model, "reduction", None)
                size = getattr(reduction, "size", None) if index > 0 else None
                record["sizes"][index] = None if size is None else size.detach().clone()

            def post(module, args, output, index=index):
                record["outputs"][index] = output.detach().clone()
            handles.append(block.register_forward_pre_hook(pre))
            handles.append(block.register_forward_hook(post))
        try:
            yield record
        finally:
            for handle in handles:
                handle.remove()
    return recorder


@pytest.fixture(scope="session")
def digits_trained(tmp_path_factory, request):
    """The digits ImageFolders (train/, val/) and the trained digits ViT (vit.pth, digits.yaml), shared by every
    test module that needs a trained model. Training takes about a minute on 2 idle cores and far longer on busy
    ones, so the weights are kept in pytest's cache, keyed by everything they depend on (the code that builds
    and trains them, torch and its thread count, scikit-learn's data); `pytest --cache-clear` trains again."""
    import hashlib
    import inspect
    import shutil

    import sklearn

    import digits

    root = tmp_path_factory.mktemp("digits")
    train_dir, _ = digits.write_folders(root)
    code = "".join(inspect.getsource(f) for f in (digits.create, digits.train, digits.write_folders))
    depends = code + repr((digits.ARCH, digits.OVERLAY)) + torch.__version__ + sklearn.__version__ + str(torch.get_num_threads())
    key = hashlib.sha256(depends.encode()).hexdigest()
    cache = getattr(request.config, "cache", None)
    cached = cache.mkdir("gtpcli-digits") / f"vit-{key[:16]}.pth" if cache is not None else None
    if cached is None or not cached.is_file():
        torch.save({"state_dict": digits.train(train_dir).state_dict()}, root / "vit.pth")
        if cached is not None:
            shutil.copy(root / "vit.pth", cached)
    else:
        shutil.copy(cached, root / "vit.pth")
    (root / "digits.yaml").write_text(digits.profile_yaml())
    return root
