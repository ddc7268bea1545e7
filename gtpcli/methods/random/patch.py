"""Random token dropping's torch patch: the Reduction `RandomDrop` and the counter-based draw it runs (the
card is `card.py` beside it; docs/methods/random.md says why the draw is seeded per image and how).

The draw is integer arithmetic on tensors, not a torch random generator: one generator per image would
mean a Python loop over the batch in every block, and the global one would give an image different tokens
in a different batch. Every score is a hash of (seed, the image's key, token position); the key is a
hash of the exact values of the image's embedded tokens. Integer sums do not depend on their order, so the
same values give the same key, and so the same draw, in any batch, at any position, on any device.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..blocks import Reduction, stage, take_rows
from .card import METHOD, NAME

MASK = 0xFFFFFFFF  # words are 32-bit values held in int64, so that no product overflows


def times(h, factor):
    """h * factor mod 2^32 for words h and factor (ints or tensors), in 16-bit halves of the factor: each
    product stays below 2^48."""
    low, high = factor & 0xFFFF, factor >> 16
    return (h * low + (((h * high) & 0xFFFF) << 16)) & MASK


def mix(h):
    """murmur3's 32-bit finaliser: a bijection of words that spreads every input bit over the output. Works
    on Python ints and on int64 tensors alike."""
    h = h ^ (h >> 16)
    h = times(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = times(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def combine(h, value):
    """A word for the pair (h, value); distinct values give distinct words for the same h (mix is a bijection)."""
    return mix(h ^ mix(value))


def seed_word(seed: int) -> int:
    """Any seed >= 0 as one word: its 32-bit pieces combined, lowest first."""
    word = mix(seed & MASK)
    while seed := seed >> 32:
        word = combine(word, seed & MASK)
    return word


def image_keys(image_tokens: torch.Tensor) -> torch.Tensor:
    """(B,) one word per image from the exact values of its embedded image tokens (B, n, C). Channel 0 of
    every patch is enough to tell images apart (each is a projection of the whole patch), and fewer values
    are fewer chances for a kernel's last-bit rounding to change the key. Each value is two exact integers
    (torch.frexp: a 24-bit mantissa and an exponent; the JIT tracer fvcore counts with refuses a bit view of
    the floats), made one word; the key is the sum of position-weighted words mod 2^32, exact integer
    arithmetic, so the same values give the same key in any summation order, hence in any batch."""
    mantissa, exponent = torch.frexp(image_tokens[..., 0].float())
    words = combine((mantissa * 2 ** 24).to(torch.int64) & MASK, exponent.to(torch.int64) & MASK)
    weights = mix(torch.arange(1, words.shape[1] + 1, device=words.device)) | 1
    return mix(times(words, weights).sum(dim=1) & MASK)


def drop_order(keys: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """(B, n) a score per image token, a hash of (seed, the image's key, position): the image's tokens are
    dropped lowest score first. Scores of one image are distinct (combine is a bijection in the position),
    so no tie is left to a device's top-k."""
    return combine(combine(keys, seed_word(seed)).unsqueeze(1), torch.arange(n, device=keys.device))


def kept_tokens(scores: torch.Tensor, P: int) -> torch.Tensor:
    """(B, n - P) indices of the tokens with the n - P highest scores, in ascending order (token order kept)."""
    return scores.topk(scores.shape[1] - P, dim=1, sorted=False).indices.sort(dim=1).values


class RandomDrop(Reduction):
    """P random image tokens dropped per block, the same ones for an image in any batch.

    One random order per image, drawn once: each block drops the P_l lowest-scored tokens it has left. Taking
    P_0, then P_1, ... at random without replacement is the same as cutting one random order in chunks, and
    the hashing then runs once per forward instead of once per block."""

    method = NAME
    moves_positions = True  # kept tokens keep their own positions (docs/positions.md)

    def __init__(self, model, P: int | Sequence[int] = 8, seed: int = 0):
        self.seed = METHOD.validate(dict(seed=seed))["seed"]
        self.scores: torch.Tensor | None = None  # (B, n) scores of the image tokens still there
        self.kept: dict[int, Any] = {}           # layer -> kept image-token indices (B, n - P) of the last forward
        super().__init__(model, P, prop_attn=False)

    def start(self, x):
        super().start(x)
        self.kept = {}
        if any(self.removals):
            with stage("random.select"):
                self.scores = drop_order(image_keys(x[:, self.prefix:]), self.seed, x.shape[1] - self.prefix)

    def reduce(self, layer, x, attention, keys):
        p = self.prefix
        with stage("random.select"):
            kept = self.kept[layer] = kept_tokens(self.scores, self.removals[layer])
            self.scores = self.scores.gather(1, kept)
            rows = torch.cat([torch.arange(p, device=x.device).expand(x.shape[0], p), kept + p], dim=1)
            positions = self.token_positions(x)
            if positions is not None:
                self.positions = take_rows(positions, rows)
            return take_rows(x, rows)

