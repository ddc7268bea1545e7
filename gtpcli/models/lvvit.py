"""LV-ViT-S and LV-ViT-M (Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision
Transformers", NeurIPS 2021), which timm does not have, built from timm's own blocks so that GTP and ToMe
patch them like any timm ViT.

What makes LV-ViT different: a 4-layer convolutional patch embedding (7x7/2 conv, two 3x3 convs, each
with BatchNorm and ReLU, then a (patch/2)-strided projection), residual branches divided by
`skip_lam` = 2, MLP ratio 3, no qkv bias, and a token-labeling head: at inference the logits are
head([CLS]) + 0.5 * max over tokens of aux_head(token). Parameter names follow the authors' released
checkpoints (patch_embed.conv1/bn1/..., blocks.N.attn.qkv, aux_head, ...).
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn


class ResidualScale(nn.Module):
    """Divide a residual branch by skip_lam; sits where timm's Block has its LayerScale (no parameters)."""

    def __init__(self, skip_lam: float):
        super().__init__()
        self.skip_lam = skip_lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.skip_lam


class ConvStem(nn.Module):
    """The 4-layer convolutional patch embedding; exposes what timm's PatchEmbed does (grid, patches)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384,
                 width: int = 64):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, self.width = in_chans, width
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(width, embed_dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.proj(x).flatten(2).transpose(1, 2)


class LVViT(nn.Module):
    num_prefix_tokens = 1

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 384, depth: int = 16, num_heads: int = 6, mlp_ratio: float = 3.0,
                 skip_lam: float = 2.0, crop_pct: float = 0.9):
        super().__init__()
        self.num_classes, self.embed_dim, self.num_features = num_classes, embed_dim, embed_dim
        self.patch_embed = ConvStem(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        # the authors' blocks use nn.LayerNorm (eps 1e-5), not timm's default (eps 1e-6)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=False, norm_layer=nn.LayerNorm)
                                      for _ in range(depth)))
        for block in self.blocks:
            block.ls1, block.ls2 = ResidualScale(skip_lam), ResidualScale(skip_lam)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.aux_head = nn.Linear(embed_dim, num_classes)
        self.pretrained_cfg = {"input_size": (in_chans, img_size, img_size), "crop_pct": crop_pct,
                               "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                               "std": (0.229, 0.224, 0.225), "num_classes": num_classes}
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.head(x[:, 0]) + 0.5 * self.aux_head(x[:, 1:]).amax(dim=1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def lvvit_s(**kwargs) -> LVViT:
    return LVViT(**{"embed_dim": 384, "depth": 16, "num_heads": 6, "crop_pct": 0.9, **kwargs})


def lvvit_m(**kwargs) -> LVViT:
    return LVViT(**{"embed_dim": 512, "depth": 20, "num_heads": 8, "crop_pct": 1.0, **kwargs})


MODELS = {"lvvit_s": lvvit_s, "lvvit_m": lvvit_m}
