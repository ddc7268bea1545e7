"""TC-ViT's torch patch: the Reduction `TCViT` and the tensor functions it runs (the method's
card, hyperparameters and analytic cost, is `card.py` beside it; docs/methods/tcvit.md has the readings)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...errors import GtpcliError
from ..blocks import Reduction, stage
from .card import _NAMES, METHOD, NAME, check_settings, uses_dominance


def image_graph(weights, prefix: int, head_fusion: str = "mean", w_block: str = "patch", dtype=None):
    """W (B, n, n): the image x image block of the attention maps (B, H, N, N), heads fused."""
    block = weights[:, :, prefix:, prefix:]
    block = block.to(dtype) if dtype is not None else block
    W = block.mean(dim=1) if head_fusion == "mean" else block.amax(dim=1)
    if w_block == "patch_renorm":
        W = W / W.sum(dim=-1, keepdim=True)
    return W


def dominance(weights, prefix: int, how: str = "renorm", head_fusion: str = "mean", dtype=None):
    """D (B, n): [CLS] (token 0) attention to each image token, normalised over the image tokens."""
    rows = weights[:, :, 0, prefix:]
    rows = rows.to(dtype) if dtype is not None else rows
    rows = rows / rows.sum(dim=-1, keepdim=True) if how == "renorm" else rows.softmax(dim=-1)
    return rows.mean(dim=1) if head_fusion == "mean" else rows.amax(dim=1)


def series(W, K: int, alpha: float):
    """C = W + alpha W^2 + ... + alpha^(K-1) W^K (Eq. 8) by Horner: T <- W + alpha W T, K - 1 products."""
    C = W
    for _ in range(K - 1):
        C = W + alpha * (W @ C)
    return C


def matrix_power(W, K: int):
    """W^K by binary powering (powers_for(K) products)."""
    result, base = None, W
    while K:
        if K & 1:
            result = base if result is None else result @ base
        K >>= 1
        if K:
            base = base @ base
    return result


def newton(W, K: int, alpha: float, steps: int):
    """Eq. 9: C = W (I - alpha^K W^K) (I - alpha W)^-1, the inverse by Newton (Eq. 10) from
    X_0 = diag(1 / A_ii), A = I - alpha W, with `steps` iterations. Only an approximation of Eq. 8."""
    import torch

    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    A = eye - alpha * W
    x0 = 1.0 / A.diagonal(dim1=-2, dim2=-1)
    B = W - alpha**K * (W @ matrix_power(W, K))
    X = torch.diag_embed(2 * x0) - x0.unsqueeze(-1) * A * x0.unsqueeze(-2)  # X_1 = 2X_0 - X_0 A X_0
    for _ in range(steps - 1):
        X = X @ (2 * eye - A @ X)
    return B @ X


def newton_residual(W, alpha: float):
    """||I - A X_0||_1 (max column sum) per image: Newton converges from X_0 iff some norm of it is < 1."""
    import torch

    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    A = eye - alpha * W
    x0 = 1.0 / A.diagonal(dim1=-2, dim2=-1)
    return (eye - A * x0.unsqueeze(-2)).abs().sum(dim=-2).amax(dim=-1)


def cbar_of(C, how: str):
    """C_bar (B, n) from a dense C: column mean, row mean, or row mean without the diagonal."""
    if how == "col":
        return C.mean(dim=-2)
    if how == "row":
        return C.mean(dim=-1)
    n = C.shape[-1]
    return (C.sum(dim=-1) - C.diagonal(dim1=-2, dim2=-1)) / max(n - 1, 1)


def lazy_cbar(W, alpha: float, how: str):
    """C_bar of C = W + alpha W^2 without forming W^2: 1^T C = u + alpha uW with u = 1^T W (col), or
    C1 = r + alpha W r with r = W1 (row); row_offdiag also needs diag(W^2)."""
    n = W.shape[-1]
    if how == "col":
        u = W.sum(dim=-2)
        return (u + alpha * (u.unsqueeze(-2) @ W).squeeze(-2)) / n
    r = W.sum(dim=-1)
    rows = r + alpha * (W @ r.unsqueeze(-1)).squeeze(-1)
    if how == "row":
        return rows / n
    diagonal = W.diagonal(dim1=-2, dim2=-1) + alpha * (W * W.transpose(-1, -2)).sum(dim=-1)
    return (rows - diagonal) / max(n - 1, 1)


def score_of(cbar, D, hp: Mapping[str, Any]):
    """S (Eq. 11); the largest are kept."""
    if hp["score"] == "connectivity" or (hp["score"] == "full" and hp["beta"] == 0):
        return -cbar
    if hp["score"] == "dominance":
        return D
    return -cbar + hp["beta"] * D


def split(score, P: int):
    """Indices of the kept tokens (in their original order) and of the P discarded ones."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    keep = order[:, : score.shape[1] - P].sort(dim=-1).values
    return keep, order[:, score.shape[1] - P:]


def take(tokens, index):
    """tokens (B, n, d) at index (B, m) -> (B, m, d)."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def fuse_tokens(x, keep, drop, rows, self_weight, count: bool = True):
    """Eq. 12. x (B, n, c) image tokens; rows = C[drop, :] (B, P, n); self_weight (B, n - P) = C[t, t] of
    the kept tokens (only the receivers' entries are read). Each discarded q goes to the kept token t with
    the largest C[q, t], weight C[q, t]. Kept tokens that receive nothing are returned unchanged, bit for
    bit. Where the denominator is not positive (Newton's C can be negative) the receiver becomes the plain
    mean of itself and its matches. Returns (kept tokens (B, n - P, c), receiver index into keep (B, P),
    number of fallbacks, counted only with `count`: counting waits for the device).

    Written as t + sum_q w_q (q - t) / den_t, which is Eq. 12, so that only the P discarded tokens and their
    receivers are touched: no pass over all n - P kept tokens beyond gathering them."""
    import torch

    kept = take(x, keep)
    Cqk = rows.gather(2, keep.unsqueeze(1).expand(-1, rows.shape[1], -1))  # (B, P, n - P)
    weight, target = Cqk.max(dim=-1)
    denominator = self_weight.scatter_add(1, target, weight)
    matches = torch.zeros_like(denominator).scatter_add(1, target, torch.ones_like(weight))
    den_q, matches_q = denominator.gather(1, target), matches.gather(1, target)
    bad = ~(den_q > 0)
    scale = torch.where(bad, 1 / (1 + matches_q), weight / den_q.where(~bad, torch.ones_like(den_q)))
    at = target.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    shift = scale.unsqueeze(-1) * (take(x, drop) - kept.gather(1, at))
    fallbacks = int(((matches > 0) & ~(denominator > 0)).sum()) if count and bad.any() else 0
    return kept.scatter_add_(1, at, shift), target, fallbacks


def condense(x, weights, prefix: int, P: int, hp: Mapping[str, Any], stage=None, size=None, positions=None):
    """One TC-ViT step on tokens x (B, N, c) with attention maps (B, H, N, N): (tokens (B, N - P, c),
    sizes (B, N - P, 1) or None, diagnostics). Rotary `positions` (B, N, 2), when given, are condensed with
    the tokens' own Eq. 12 weights (a receiver sits at the weighted mean of its and its matches' positions)
    into diagnostics["positions"]. Pure function of its inputs (the tests call it directly)."""
    import contextlib

    import torch

    stage = stage or (lambda name: contextlib.nullcontext())
    dtype = getattr(torch, hp["connectivity_dtype"])
    alpha, how = hp["alpha"], hp["cbar"]
    info: dict[str, Any] = {}
    with stage("tcvit.connectivity"):
        W = image_graph(weights, prefix, hp["head_fusion"], hp["w_block"], dtype)
        D = dominance(weights, prefix, hp["dominance"], hp["head_fusion"], dtype) if uses_dominance(hp) else None
        C = None
        if hp["connectivity"] == "lazy":
            cbar = lazy_cbar(W, alpha, how)
        else:
            if hp["connectivity"] == "newton":
                C = newton(W, hp["K"], alpha, hp["newton_steps"])
                info["newton_residual"] = float(newton_residual(W, alpha).max())
            else:
                C = series(W, hp["K"], alpha)
            cbar = cbar_of(C, how)
    with stage("tcvit.select"):
        keep, drop = split(score_of(cbar, D, hp), P)
    info["keep"], info["drop"] = keep, drop
    image, image_size = x[:, prefix:], (size[:, prefix:] if size is not None else None)
    if not hp["fuse"]:
        with stage("tcvit.fuse"):
            out = torch.cat([x[:, :prefix], take(image, keep)], dim=1)
            new_size = torch.cat([size[:, :prefix], take(image_size, keep)], dim=1) if size is not None else None
            if positions is not None:
                info["positions"] = torch.cat([positions[:, :prefix], take(positions[:, prefix:], keep)], dim=1)
        return out, new_size, info
    with stage("tcvit.connectivity"):
        if C is not None:
            rows = take(C, drop)
            self_weight = C.diagonal(dim1=-2, dim2=-1).gather(1, keep)
        else:  # lazy: C[Q, :] = W_Q + alpha W_Q W, and C[t, t] = W_tt + alpha W[t, :] . W[:, t] for receivers
            W_Q = take(W, drop)
            rows = W_Q + alpha * (W_Q @ W)
            slot = rows.gather(2, keep.unsqueeze(1).expand(-1, P, -1)).argmax(dim=-1)  # receiver among the kept
            receivers = keep.gather(1, slot)  # (B, P) token indices
            row_t, col_t = take(W, receivers), take(W.transpose(-1, -2), receivers)
            diagonal = (W.diagonal(dim1=-2, dim2=-1).gather(1, receivers)
                        + alpha * (row_t.unsqueeze(-2) @ col_t.unsqueeze(-1)).flatten(-3))
            self_weight = torch.zeros(keep.shape, dtype=W.dtype, device=W.device).scatter(1, slot, diagonal)
    with stage("tcvit.fuse"):
        channels = image.to(dtype) if positions is None else torch.cat([image.to(dtype), positions[:, prefix:].to(dtype)], -1)
        fused, target, fallbacks = fuse_tokens(channels, keep, drop, rows, self_weight,
                                               count=hp["connectivity"] == "newton")
        if positions is not None:  # the same weights move the positions (elementwise: no MAC)
            fused, moved = fused[..., :-2], fused[..., -2:]
            info["positions"] = torch.cat([positions[:, :prefix], moved.float()], dim=1)
        info["fallbacks"] = fallbacks
        out = torch.cat([x[:, :prefix], fused.to(x.dtype)], dim=1)
        new_size = None
        if size is not None:
            kept_size = take(image_size, keep).scatter_add(1, target.unsqueeze(-1), take(image_size, drop))
            new_size = torch.cat([size[:, :prefix], kept_size], dim=1)
    return out, new_size, info


def diagnose(model, images, P: int | Sequence[int] = 14, **hparams) -> dict[str, Any]:
    """The open questions of docs/methods/tcvit.md, on real attention maps: patch `model` with TC-ViT, run `images` and, in
    every reducing block, measure in float64 (per image): whether Newton can start (||I - A X_0||_1 < 1), how
    far Eq. 9 with 1 and 2 Newton steps is from the exact series, how many of the P dropped tokens change
    when the score drops the dominance (beta = 0: does beta matter?) and when C_bar is the row mean instead
    of the column mean. Returns medians and shares over all (image, block) pairs; the model is unpatched."""
    import torch

    from ..patching import patch, unpatch

    patch(model, NAME, P=P, **hparams)
    red = model.reduction
    hp = dict(red.hp)
    found: dict[str, list[float]] = {"converges": [], "newton1": [], "newton2": [], "beta_changes": [],
                                     "row_changes": []}
    original = red.reduce

    def changed(a, b):
        return [len(set(x.tolist()) ^ set(y.tolist())) / 2 for x, y in zip(a, b)]

    def watch(layer, x, weights, keys):
        removed, p = red.removals[layer], red.prefix
        W = image_graph(weights, p, hp["head_fusion"], hp["w_block"], torch.float64)
        found["converges"] += (newton_residual(W, hp["alpha"]) < 1).double().tolist()
        exact = series(W, hp["K"], hp["alpha"])
        for steps in (1, 2):
            approx = newton(W, hp["K"], hp["alpha"], steps)
            found[f"newton{steps}"] += ((approx - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)).tolist()
        D = dominance(weights, p, hp["dominance"], hp["head_fusion"], torch.float64) if red.has_cls else None
        col, row = cbar_of(exact, "col"), cbar_of(exact, "row")
        _, drop = split(score_of(col, D, hp) if D is not None else -col, removed)
        _, drop_beta0 = split(-col, removed)
        _, drop_row = split(score_of(row, D, hp) if D is not None else -row, removed)
        if D is not None:
            found["beta_changes"] += changed(drop, drop_beta0)
        found["row_changes"] += changed(drop, drop_row)
        return original(layer, x, weights, keys)

    red.reduce = watch
    try:
        with torch.no_grad():
            model(images)
    finally:
        unpatch(model)

    def median(values):
        return float(torch.tensor(values, dtype=torch.float64).median()) if values else None

    return {"settings": hp, "blocks_x_images": len(found["converges"]),
            "newton_can_start_share": sum(found["converges"]) / max(len(found["converges"]), 1),
            "newton1_rel_error_median": median(found["newton1"]), "newton2_rel_error_median": median(found["newton2"]),
            "newton2_rel_error_max": max(found["newton2"], default=None),
            "dropped_changed_without_dominance_mean": (sum(found["beta_changes"]) / len(found["beta_changes"])
                                                       if found["beta_changes"] else None),
            "dropped_changed_row_vs_col_mean": sum(found["row_changes"]) / max(len(found["row_changes"]), 1)}


class TCViT(Reduction):
    """TC-ViT's configuration and per-forward diagnostics, shared by all patched blocks."""

    method = NAME
    moves_positions = True  # a receiver sits at the Eq. 12-weighted mean of its and its matches' positions

    def __init__(self, model, P: int | Sequence[int] = 14, K: int = 2, alpha: float = 500.0,
                 beta: float = 3.5, head_fusion: str = "mean", w_block: str = "patch", cbar: str = "col",
                 dominance: str = "renorm", score: str = "full", connectivity: str = "series",
                 newton_steps: int = 2, fuse: bool = True, track_sizes: bool = False,
                 connectivity_dtype: str = "float32", prop_attn: bool | None = None):
        given = dict(K=K, alpha=alpha, beta=beta, head_fusion=head_fusion, w_block=w_block, cbar=cbar,
                     dominance=dominance, score=score, connectivity=connectivity, newton_steps=newton_steps,
                     fuse=fuse, track_sizes=track_sizes, connectivity_dtype=connectivity_dtype,
                     prop_attn=prop_attn)
        self.hp = METHOD.validate(given)
        if prop_attn and not track_sizes:
            raise GtpcliError("tcvit: prop_attn needs track_sizes (the paper tracks no token sizes)")
        self.has_cls = getattr(model, "cls_token", None) is not None
        self.image_tokens = model.patch_embed.num_patches
        check_settings(self.hp, self.has_cls, self.image_tokens)
        self.fallbacks = 0            # fusions whose Eq. 12 denominator was not positive (Newton)
        self.newton_residuals: list[tuple[int, float]] = []  # (layer, max ||I - A X_0||_1 over the batch)
        self.kept: dict[int, Any] = {}  # layer -> kept image-token indices of the last forward
        super().__init__(model, P, prop_attn=track_sizes if prop_attn is None else prop_attn)

    def __getattr__(self, name):  # hyperparameters read as attributes: model.reduction.alpha
        hp = self.__dict__.get("hp")
        if hp is not None and name in hp:
            return hp[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):  # and changed like P: model.reduction.K = 4 (checked first)
        if name in _NAMES and name != "prop_attn" and "hp" in self.__dict__:
            hp = {**self.hp, **METHOD.validate({name: value})}
            check_settings(hp, self.has_cls, self.image_tokens)
            self.__dict__["hp"] = hp
            if name == "track_sizes":
                self.prop_attn = value
            return
        super().__setattr__(name, value)

    def start(self, x):
        super().start(x)
        self.newton_residuals, self.kept = [], {}

    def attention_need(self, layer: int) -> str:
        """The whole map where tokens are removed: W is its image block (and D its [CLS] row)."""
        return "map" if self.removals[layer] > 0 else "fused"

    def diagnostics(self) -> dict[str, Any]:
        """For result rows, since the last patch: Newton's fallbacks and its starting residual."""
        if self.hp["connectivity"] != "newton":
            return {}
        worst = max((r for _, r in self.newton_residuals), default=None)
        found: dict[str, Any] = {"newton_fallbacks": self.fallbacks, "newton_residual_max": worst, "warnings": []}
        if self.fallbacks:
            found["warnings"].append(f"Eq. 12 denominator <= 0 in {self.fallbacks} fusions (Newton's C has "
                                     "negative entries): plain means used there")
        if worst is not None and worst >= 1:
            found["warnings"].append(f"Newton starts from ||I - A X_0||_1 = {worst:.3g} >= 1: convergence "
                                     "is not guaranteed")
        return found

    def reduce(self, layer, x, weights, keys):
        size = self.sizes_or_ones(x) if self.hp["track_sizes"] else None
        out, size, info = condense(x, weights, self.prefix, self.removals[layer], self.hp, stage, size,
                                   self.token_positions(x))
        self.size = size
        if "positions" in info:
            self.positions = info["positions"]
        self.kept[layer] = info["keep"]
        self.fallbacks += info.get("fallbacks", 0)
        if "newton_residual" in info:
            self.newton_residuals.append((layer, info["newton_residual"]))
        return out
