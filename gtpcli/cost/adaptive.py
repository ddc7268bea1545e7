"""What a model whose token count depends on the image costs: per-image MACs, E[GMACs], distributions and
the MACs each batching mode executes. Plain arithmetic over active-token counts, no torch and no model.

Why a module of its own: with input-dependent counts (TPC-ViT, ATS) one token schedule per model no longer
exists. Attention is quadratic in the count, so the mean cost over images, E[MACs(n(x))], is larger than the
cost at the mean counts, MACs(E[n(x)]) (Jensen); both are reported, and the first is *the* figure.

A method describes one block's MACs with `Cost` (work per token, executed once per token; work per pair of
tokens, executed per image on its own token set); counts come as one list per image, one int per block
(tokens entering that block, prefix tokens included).

Contract of an adaptive profile row (`summarize` and `batching` return these):
- "adaptive": true; the method's own sweep key (TPC: "delta") and "P": null
- "tokens": per-block MEAN active tokens entering each block (floats)
- "tokens_dist": per block {"mean", "std", "min", "p50", "max", "hist": {"edges": [...], "counts": [...]}}
- "gmacs": E[GMACs] = mean over images of the per-image GMACs (never GMACs at the mean counts)
- "gmacs_std", "gmacs_p5", "gmacs_p50", "gmacs_p95" over the images
- "gmacs_at_mean_tokens", "jensen_gap_gmacs" (= gmacs - gmacs_at_mean_tokens)
- "useful_gmacs": mean over images of the MACs up to the block where the output stops changing (TPC: where
  [CLS] halts); equal to "gmacs" when the method has no such block
- "images": how many images the distribution comes from; "counts_source": "data: DIR" or
  "random images (means nothing for a trained controller)"
- "batching": {"single"|"padded"|"packed": {"img_s", "batch_size", "executed_gmacs", "ideal_gmacs", "ratio"}}
  (GMACs per image; ratio = executed / ideal >= 1; img_s is filled by the timing side)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .analytic import NORM_MACS_PER_ELEMENT, Arch

RANDOM_SOURCE = "random images (means nothing for a trained controller)"
MODES = ("single", "padded", "packed")
HIST_BINS = 16

Counts = Sequence[Sequence[int]]   # one list per image, one active-token count per block


@dataclass(frozen=True)
class Cost:
    """MACs of a model as a function of its per-block active counts.

    `per_token(layer, n)`: the work done once per active token (qkv, proj, MLP, norms, gates), linear in n;
    packing runs it on exactly the active tokens of a batch. `per_pair(layer, n)`: the work on token pairs
    (QK^T, AV), run per image; padding or packing executes it at the batch's largest count.
    `fixed`: per image, independent of the counts (patch embedding, head). Both functions must accept a float
    n (the cost at the mean counts)."""

    per_token: Callable[[int, float], float]
    per_pair: Callable[[int, float], float]
    fixed: int = 0

    def block(self, layer: int, n: float) -> float:
        return self.per_token(layer, n) + self.per_pair(layer, n)


def vit_cost(arch: Arch) -> Cost:
    """A pre-norm block on n tokens, as fvcore counts it (analytic.block_terms with P = 0), and
    patch embedding plus head as `fixed` (head on the [CLS] token only)."""
    from .analytic import embed_macs, token_macs

    attention, pair, mlp = token_macs(arch)
    head = NORM_MACS_PER_ELEMENT * arch.C + arch.C * arch.num_classes
    return Cost(per_token=lambda layer, n: (attention + mlp) * n, per_pair=lambda layer, n: pair * n * n,
                fixed=embed_macs(arch) + head)


def image_macs(cost: Cost, counts: Sequence[float], blocks: int | None = None) -> float:
    """MACs of one image: fixed + the sum over its blocks (only the first `blocks` when given)."""
    used = counts if blocks is None else counts[:blocks]
    return cost.fixed + sum(cost.block(layer, n) for layer, n in enumerate(used))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics (NumPy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    at = (len(ordered) - 1) * q / 100
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (the spread of these images, not an estimate)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def histogram(values: Sequence[int], bins: int = HIST_BINS) -> dict[str, list]:
    """Integer counts into at most `bins` bins of equal integer width; edges[i] <= v < edges[i + 1]."""
    low, high = min(values), max(values)
    width = max(1, math.ceil((high - low + 1) / bins))
    edges = list(range(low, high + width + 1, width))
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[(v - low) // width] += 1
    return {"edges": edges, "counts": counts}


def distribution(values: Sequence[int]) -> dict:
    """mean, std, min, p50, max and a histogram of one block's active counts over the images."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "min": min(values), "p50": percentile(values, 50), "max": max(values),
            "hist": histogram(values)}


def summarize(cost: Cost, counts: Counts, useful_blocks: Sequence[int] | None = None) -> dict:
    """The adaptive fields of a profile row (module docstring) from per-image counts.

    `useful_blocks[i]`: how many blocks still change image i's output (TPC: up to the block where [CLS]
    halts); None means all."""
    if not counts:
        raise ValueError("no images: an adaptive cost needs at least one image's counts")
    per_block = list(zip(*counts))
    gmacs = [image_macs(cost, c) / 1e9 for c in counts]
    mean, std = mean_std(gmacs)
    mean_tokens = [sum(column) / len(column) for column in per_block]
    at_mean = image_macs(cost, mean_tokens) / 1e9
    useful = gmacs if useful_blocks is None else [image_macs(cost, c, b) / 1e9 for c, b in zip(counts, useful_blocks)]
    return {
        "adaptive": True,
        "tokens": mean_tokens,
        "tokens_dist": [distribution(column) for column in per_block],
        "gmacs": mean,
        "gmacs_std": std,
        "gmacs_p5": percentile(gmacs, 5),
        "gmacs_p50": percentile(gmacs, 50),
        "gmacs_p95": percentile(gmacs, 95),
        "gmacs_at_mean_tokens": at_mean,
        "jensen_gap_gmacs": mean - at_mean,
        "useful_gmacs": sum(useful) / len(useful),
        "images": len(counts),
    }


def batch_macs(cost: Cost, batch: Counts, mode: str) -> tuple[float, float]:
    """(executed, ideal) MACs of one batch of images run together.

    ideal = the sum of the images' own MACs. single: each image alone, executed = ideal. padded: every block
    runs B images at the batch's largest count. packed: per-token work on exactly the batch's active tokens
    (concatenated), pair work per image padded to the largest count."""
    if mode not in MODES:
        raise ValueError(f"batching mode must be one of {', '.join(MODES)}, got {mode!r}")
    ideal = sum(image_macs(cost, c) for c in batch)
    if mode == "single":
        return ideal, ideal
    B = len(batch)
    executed = B * cost.fixed
    for layer, column in enumerate(zip(*batch)):
        widest = max(column)
        if mode == "padded":
            executed += B * cost.block(layer, widest)
        else:
            executed += sum(cost.per_token(layer, n) for n in column) + B * cost.per_pair(layer, widest)
    return executed, ideal


def batching(cost: Cost, counts: Counts, mode: str, batch_size: int) -> dict:
    """Executed and ideal GMACs per image of `mode` over the images taken in order, `batch_size` at a time
    (single: 1); "img_s" is left to the timing side."""
    size = 1 if mode == "single" else batch_size
    executed = ideal = 0.0
    for start in range(0, len(counts), size):
        e, i = batch_macs(cost, counts[start:start + size], mode)
        executed, ideal = executed + e, ideal + i
    return {"img_s": None, "batch_size": size, "executed_gmacs": executed / len(counts) / 1e9,
            "ideal_gmacs": ideal / len(counts) / 1e9, "ratio": executed / ideal}


def point_label(setting: dict[str, Any]) -> str:
    """"delta=0.01": an input-dependent method's point."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())
