"""The analytic cost model: token schedule, reduction overheads (paper appendix C.4), backbone MACs.

Pure integer/fraction arithmetic, no torch: `gtpcli complexity` must answer instantly.
Notation follows the paper: N tokens (prefix tokens included), L layers, H heads, C channels,
P tokens removed per layer, N_l = N - (l-1)P tokens entering layer l (1-based).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from ..errors import GtpcliError

Number = int | Fraction


@dataclass(frozen=True)
class Arch:
    """The facts about a ViT that its MAC count depends on: a plain ViT by default; the other fields describe
    today's backbones (EVA-02, DINOv3, PE, SigLIP, BEiT: SwiGLU MLPs, extra norms, attention-pool heads,
    rotary embeddings or relative position bias). Norm fields are fvcore's MACs per normalised element (5 for an affine LayerNorm,
    4 without affine, 0 for a norm fvcore does not count)."""

    N: int
    C: int
    L: int = 12
    H: int | None = None
    prefix: int = 1
    mlp_ratio: float = 4.0
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    stem: str = "patch"         # "patch": one strided conv; "conv4": LV-ViT's 4-layer convolutional stem
    pooled_norm: bool = False   # the final LayerNorm runs on the pooled vector only (timm's GAP models)
    aux_head: bool = False      # LV-ViT's token-labeling head on every remaining image token
    mlp_hidden: int | None = None  # the MLP's hidden width, fc2's input (None: int(C * mlp_ratio))
    mlp_gated: bool = False     # SwiGLU/GLU: fc1 gives twice the hidden width (values and gates)
    mlp_norm: int = 0           # a norm inside the MLP, per hidden element (EVA's scale_mlp)
    attn_norm: int = 0          # norms of an attention token beyond norm1, per channel (q/k norms, EVA's inner norm)
    attn_gate: bool = False     # a C x C gate projection per attention token
    norm_pre: int = 0           # a norm on every embedded token before the blocks (PE), per element
    pool_fixed: int = 0         # an attention-pool head (SigLIP/PE `map`): its latent queries' MACs
    pool_per_token: int = 0     # ... and its MACs per token it reads (keys, values, attention)
    tracks_positions: bool = False  # attention reads token positions (rotary embeddings, BEiT's relative
                                    # bias): methods move them with the tokens

    @property
    def hidden(self) -> int:
        """The MLP's hidden width."""
        return self.mlp_hidden if self.mlp_hidden is not None else int(self.C * self.mlp_ratio)

    @property
    def heads(self) -> int:
        return self.H if self.H is not None else self.C // 64

    def validate(self) -> "Arch":
        for key in ("N", "C", "L"):
            if getattr(self, key) <= 0:
                raise GtpcliError(f"{key} must be positive, got {getattr(self, key)}")
        if self.heads <= 0:
            raise GtpcliError(f"H must be positive, got {self.heads} (C={self.C})")
        if self.C % self.heads:
            raise GtpcliError(f"H={self.heads} does not divide C={self.C}")
        if not 0 <= self.prefix < self.N:
            raise GtpcliError(f"prefix tokens ({self.prefix}) must be fewer than N={self.N}")
        return self


def per_layer(P: int | Sequence[int], L: int) -> list[int]:
    """Tokens removed in each of the L layers: one value for all, or one per layer."""
    if isinstance(P, int):
        removed = [P] * L
    else:
        removed = [int(p) for p in P]
        if len(removed) != L:
            raise GtpcliError(f"a per-layer P needs {L} values (one per layer), got {len(removed)}")
    if any(p < 0 for p in removed):
        raise GtpcliError(f"P must be >= 0, got {P}")
    return removed


def token_schedule(N: int, L: int, P: int | Sequence[int], prefix: int = 1) -> list[int]:
    """Tokens entering each layer, N_l. Each layer must keep at least one image token."""
    removed = per_layer(P, L)
    tokens, schedule = N, []
    for layer, p in enumerate(removed, start=1):
        if tokens - prefix - p < 1:
            raise GtpcliError(
                f"P={p} is too large: layer {layer} has {tokens - prefix} image tokens left "
                f"and would keep {max(tokens - prefix - p, 0)} (N={N}, L={L}, prefix tokens={prefix})"
            )
        schedule.append(tokens)
        tokens -= p
    return schedule


# --- overhead of the reduction method itself (appendix C.4) -------------------------------------

def tome_layer_terms(N_l: int, P: int, C: int) -> dict[str, Number]:
    """ToMe in one layer: bipartite matching (N_l/2)^2 C, merging P C."""
    return {"match": Fraction(N_l * N_l * C, 4), "merge": P * C}


def gtp_layer_terms(N_l: int, P: int, C: int, H: int) -> dict[str, Number]:
    """GTP in one layer: selection H N_l, propagation (N_l - P) P C."""
    return {"select": H * N_l, "propagate": (N_l - P) * P * C}


def gtp_graph_macs(N: int, C: int) -> int:
    """The semantic graph, built once per image: all-pairs cosine similarity, N^2 C."""
    return N * N * C


def tome_macs(N: int, C: int, L: int, P: int) -> Number:
    """Eq. 14 as the exact sum over layers."""
    return sum(sum(tome_layer_terms(n, P, C).values()) for n in _paper_schedule(N, L, P))


def gtp_macs(N: int, C: int, L: int, H: int, P: int) -> Number:
    """Eq. 15 as the exact sum over layers."""
    layers = sum(sum(gtp_layer_terms(n, P, C, H).values()) for n in _paper_schedule(N, L, P))
    return gtp_graph_macs(N, C) + layers


def tome_macs_closed_form(N: int, C: int, L: int, P: int) -> Fraction:
    """Eq. 14's last line exactly as printed (its P^2 C coefficient does not match its own sum)."""
    F = Fraction
    return (F(1, 4) * L * N * N * C + F(1, 4) * (L - L * L) * N * P * C
            + (F(1, 12) * L**3 + F(1, 12) * L**2 + F(1, 8) * L) * P * P * C + L * P * C)


def gtp_macs_closed_form(N: int, C: int, L: int, H: int, P: int) -> Fraction:
    """Eq. 15's last line exactly as printed."""
    F = Fraction
    return (F(N * N * C) + L * H * N + L * P * N * C - F(1, 2) * (L * L - L) * H * P
            - F(1, 2) * (L + L * L) * P * P * C)


def _paper_schedule(N: int, L: int, P: int) -> list[int]:
    """N_l = N - (l-1)P as the paper writes it (it does not stop at an empty layer)."""
    return [N - layer * P for layer in range(L)]


# --- the whole backbone ------------------------------------------------------------------------

def block_terms(N_l: int, P: int, arch: Arch) -> dict[str, int]:
    """MACs of one pre-norm block whose attention sees N_l tokens and MLP N_l - P."""
    C, hidden, kept = arch.C, arch.hidden, N_l - P
    terms = {
        "qkv": 3 * N_l * C * C,
        "qk": N_l * N_l * C,
        "av": N_l * N_l * C,
        "proj": N_l * C * C,
        "mlp": (3 if arch.mlp_gated else 2) * kept * C * hidden,
        "norm": NORM_MACS_PER_ELEMENT * (N_l + kept) * C,
    }
    extra = {"gate": N_l * C * C if arch.attn_gate else 0, "attn_norm": arch.attn_norm * N_l * C,
             "mlp_norm": arch.mlp_norm * kept * hidden}
    return terms | {k: v for k, v in extra.items() if v}


def token_macs(arch: Arch) -> tuple[int, int, int]:
    """(per token through attention, per (query, key) pair, per token through the MLP): `block_terms` of a
    block on n tokens is n a + n^2 q + n m, for the per-image cost of input-dependent methods."""
    attention = sum(block_terms(1, 1, arch).values()) - 2 * arch.C  # one token's attention side, no pair
    return attention, 2 * arch.C, sum(block_terms(1, 0, arch).values()) - attention - 2 * arch.C


def stage_macs(arch: Arch, P: int | Sequence[int]) -> dict[str, int]:
    """The blocks' MACs split as `gtpcli trace` labels their time: attention (norm1 to the projection, on the
    N_l tokens a block's attention sees) and MLP (norm2 to the last linear, on the N_l - P it keeps), so a
    stage's measured time can be set against its own MACs. The two add up to `backbone_macs`' blocks."""
    schedule = token_schedule(arch.N, arch.L, P, arch.prefix)
    parts = {"attention": 0, "mlp": 0}
    for n, p in zip(schedule, per_layer(P, arch.L)):
        terms = block_terms(n, p, arch)
        mlp = terms["mlp"] + terms.get("mlp_norm", 0) + NORM_MACS_PER_ELEMENT * (n - p) * arch.C
        parts["attention"] += sum(terms.values()) - mlp
        parts["mlp"] += mlp
    return parts


# fvcore's convention for LayerNorm: 5 multiply-adds per element (mean, var, normalise, affine).
NORM_MACS_PER_ELEMENT = 5


def backbone_macs(arch: Arch, P: int | Sequence[int]) -> dict[str, int]:
    """Analytic MACs of the whole backbone at batch 1, split into patch embedding, blocks and head."""
    schedule = token_schedule(arch.N, arch.L, P, arch.prefix)
    removed = per_layer(P, arch.L)
    blocks = sum(sum(block_terms(n, p, arch).values()) for n, p in zip(schedule, removed))
    final_tokens = schedule[-1] - removed[-1]
    return {"embed": embed_macs(arch), "blocks": blocks, "head": head_macs(arch, final_tokens)}


def head_macs(arch: Arch, final_tokens: int) -> int:
    """The final norm (on every token left, or on the pooled vector), an attention pool, the classifier,
    and LV-ViT's token-labeling head."""
    head = NORM_MACS_PER_ELEMENT * (1 if arch.pooled_norm else final_tokens) * arch.C + arch.C * arch.num_classes
    head += arch.pool_fixed + arch.pool_per_token * final_tokens
    if arch.aux_head:
        head += (final_tokens - arch.prefix) * arch.C * arch.num_classes
    return head


def embed_macs(arch: Arch) -> int:
    """Patch embedding: one patch-sized strided convolution, or LV-ViT's conv stem (convolutions at
    half resolution, eval BatchNorm at 2 MACs per element as fvcore counts it, then a (patch/2) projection)."""
    patches = arch.N - arch.prefix
    if arch.stem == "patch":
        return patches * arch.C * arch.in_chans * arch.patch_size**2 + arch.norm_pre * arch.N * arch.C
    width, half = 64, (int(patches**0.5) * arch.patch_size) // 2
    convs = half * half * width * (arch.in_chans * 49 + 2 * width * 9)
    return convs + 3 * 2 * half * half * width + patches * arch.C * width * (arch.patch_size // 2) ** 2


def as_number(value: Number) -> int | float:
    """Exact integers stay integers; a true fraction becomes a float (JSON has no fractions)."""
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    return value
