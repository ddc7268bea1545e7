"""Over-smoothing as GTP's Fig. 6 measures it: the average cosine similarity between the image tokens that
leave each block (prefix tokens such as [CLS] excluded, every unordered pair of distinct tokens counted once,
tokens as they are, not weighted by size), averaged over images."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def mean_cosine(tokens: torch.Tensor) -> torch.Tensor:
    """(B, n, C) -> (B,): the mean cosine similarity over the n(n-1) ordered pairs of distinct tokens, from
    |sum of unit vectors|^2 = n + sum over distinct pairs (no n x n matrix)."""
    n = tokens.shape[1]
    if n < 2:
        return torch.full(tokens.shape[:1], float("nan"))
    unit = F.normalize(tokens.float(), dim=-1)
    return (unit.sum(1).pow(2).sum(-1) - n) / (n * (n - 1))


def per_block(model: nn.Module, batches: Iterable[torch.Tensor], prefix: int) -> list[float]:
    """Mean over the images of `mean_cosine` of each block's output image tokens, for the model as it is
    (stock or patched: a reduced block's output has its reduced token count)."""
    sums = [0.0] * len(model.blocks)
    images = 0

    def hook(index: int):
        def record(module, args, output):
            sums[index] += float(mean_cosine(output[:, prefix:]).sum())
        return record

    handles = [block.register_forward_hook(hook(at)) for at, block in enumerate(model.blocks)]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(batch)
                images += batch.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    return [round(total / images, 6) for total in sums]
