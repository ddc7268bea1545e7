"""TPC-ViT's model-level patch (docs/methods/tpc.md): `gtpcli.patch(model, "tpc", ...)`.

Every timm module and weight stays; the model's `forward_features` is replaced (an instance attribute, so
`unpatch` just deletes it) by: patch embedding -> blocks, each followed by the gates, TDR and the ACT
bookkeeping -> the final norm on the ACT-weighted state -> the model's own head. The controller is the
submodule `model.tpc` (parameters only with `learn_gates`).

Three ways to run the same maths, with the same outputs (tests/test_tpc.py):
- masked: dense (B, N) tensors; halted tokens are zeroed before and after both LayerNorms and their keys
  are masked (A-ViT's code), so training sees exactly what removal at inference computes;
- gathered, padded: each block runs on the active tokens only, every image padded to the batch's largest
  active count (batch 1: no padding, no mask);
- gathered, packed: qkv, proj and the MLP run on the concatenated active tokens of the batch; only attention
  is padded per image.
Every forward records, per image and block, how many tokens entered it (`model.tpc.last.counts`): the input
of gtpcli/cost/adaptive.py.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import GtpcliError
from ..blocks import stage
from .card import METHOD

SAVED = ("gate_scale", "gate_center", "delta", "xi", "kappa", "gate_dims", "stabilizer", "target_depth")


@dataclass
class Trace:
    """What the last forward did, per image: the input of the cost accounting and of the losses."""

    counts: torch.Tensor        # (B, L) tokens entering each block
    halt_block: torch.Tensor    # (B, N) blocks each token ran (M_k)
    ponder: torch.Tensor        # (B,) sum over tokens of M_k + r_k (differentiable)
    layer_b: torch.Tensor       # (L,) mean break probability of the running tokens per block (the D of Eq. 13)
    active: torch.Tensor | None = None   # (B, L, N) which tokens took part in each block (masked runs)

    @property
    def cls_halt(self) -> torch.Tensor:
        """(B,) blocks [CLS] ran: after it, nothing reaches the logits."""
        return self.halt_block[:, 0]


class TPC(nn.Module):
    """The controller of a TPC-ViT: hyperparameters, gates, and what the last forward recorded."""

    method = "tpc"

    def __init__(self, model: nn.Module, gate_scale: float = 5.0, gate_center: float = 40.0, delta: float = 0.01,
                 xi: float = 0.5, kappa: int = 100, gate_dims: tuple = (0, 1), stabilizer: bool = True,
                 target_depth: float | None = None, learn_gates: bool = False, mode: str = "as_written",
                 stop_at_cls_halt: bool = False, execution: str = "gathered", batching: str = "padded"):
        super().__init__()
        hp = METHOD.validate(dict(gate_scale=gate_scale, gate_center=gate_center, delta=delta, xi=xi, kappa=kappa,
                                  gate_dims=gate_dims, stabilizer=stabilizer, target_depth=target_depth,
                                  learn_gates=learn_gates, mode=mode, stop_at_cls_halt=stop_at_cls_halt,
                                  execution=execution, batching=batching))
        if hp["mode"] == "nonmonotone" and hp["execution"] != "masked":
            raise GtpcliError("tpc: mode 'nonmonotone' computes every token; it runs with execution 'masked'")
        if max(hp["gate_dims"]) >= model.embed_dim:
            raise GtpcliError(f"tpc: gate_dims {hp['gate_dims']} beyond the model's {model.embed_dim} channels")
        self.num_layers = len(model.blocks)
        self.tokens = model.patch_embed.num_patches + int(getattr(model, "num_prefix_tokens", 1))
        self.all_tokens = hasattr(model, "aux_head")  # LV-ViT's token-labeling head reads every token
        self.learn_gates = hp.pop("learn_gates")
        for key in ("gate_scale", "gate_center"):
            value = float(hp.pop(key))
            setattr(self, key, nn.Parameter(torch.tensor(value)) if self.learn_gates else value)
        for key, value in hp.items():
            setattr(self, key, value)
        self.last: Trace | None = None

    def hparams(self) -> dict[str, Any]:
        """The `tpc` mapping a checkpoint carries (docs/methods/tpc.md), learned gate constants as plain floats."""
        values = {key: getattr(self, key) for key in SAVED}
        for key in ("gate_scale", "gate_center"):
            values[key] = float(torch.as_tensor(values[key]).detach())
        values["gate_dims"] = list(self.gate_dims)
        return values

    # --- patching ------------------------------------------------------------------------------------

    @classmethod
    def patch(cls, model: nn.Module, **hparams) -> nn.Module:
        cls.remove(model)
        from ..blocks import unpatch_blocks
        unpatch_blocks(model)
        if getattr(model, "cls_token", None) is None or getattr(model, "global_pool", "token") != "token":
            raise GtpcliError(f"tpc: {type(model).__name__} has no [CLS] token read by its head "
                              "(TPC's output is the ACT-weighted [CLS] state)")
        for index, block in enumerate(model.blocks):
            for needed in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
                if not hasattr(block, needed):
                    raise GtpcliError(f"tpc: block {index} ({type(block).__name__}) is not a timm VisionTransformer "
                                      f"block (it has no '{needed}'): TPC-ViT's gathered and packed executions "
                                      "run those only")
        model.tpc = cls(model, **hparams)
        model.forward_features = types.MethodType(_forward_features, model)
        return model

    @staticmethod
    def remove(model: nn.Module) -> nn.Module:
        if isinstance(model._modules.get("tpc"), TPC):
            del model.tpc
            model.__dict__.pop("forward_features", None)
        return model

    # --- the forward pass ----------------------------------------------------------------------------

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Break probability b = P1 P2 (Eq. 4-5, beta as a centre) from the two gate channels of x (..., C)."""
        t = x[..., list(self.gate_dims)].float()
        p = torch.sigmoid(t * self.gate_scale - self.gate_center)
        return p[..., 0] * p[..., 1]

    def run(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        x = _embed(model, images)
        B, N, C = x.shape
        L, threshold = self.num_layers, 1 - self.delta
        packed = self.execution == "gathered" and self.batching == "packed" and B > 1
        img = torch.arange(B, device=x.device).unsqueeze(1).expand(B, N)
        ids = torch.arange(N, device=x.device).unsqueeze(0).expand(B, N)
        running = torch.ones(B, N, dtype=torch.bool, device=x.device)
        cum, R = x.new_zeros(B, N, dtype=torch.float32), x.new_ones(B, N, dtype=torch.float32)
        if packed:
            x, img, ids, running, cum, R = (t.reshape(B * N, *t.shape[2:]) for t in (x, img, ids, running, cum, R))
        alive = running
        out = x.new_zeros(B, N if self.all_tokens else 1, C)
        ponder = x.new_zeros(B, dtype=torch.float32)
        counts = torch.zeros(B, L, dtype=torch.long, device=x.device)
        halt_block = torch.full((B, N), L, dtype=torch.long, device=x.device)
        layer_b, active = [], []
        for layer, blk in enumerate(model.blocks):
            counts[:, layer] = torch.bincount(img[alive], minlength=B)
            if self.execution == "masked":
                active.append(torch.zeros(B, N, dtype=torch.bool, device=x.device).index_put((img[alive], ids[alive]),
                                                                                           running.new_ones(())))
            if packed:
                x = _packed_block(blk, x, img, B, self)
            else:
                before, x = x, _padded_block(blk, x, None if bool(alive.all()) else alive, self)
            with stage("tpc.gates"):
                b = self.gates(x)
                if self.mode == "nonmonotone":  # paused tokens were computed (their gates can fall), not updated
                    x = torch.where(alive.unsqueeze(-1), x, before)
                b = self._regularised(b, alive, img, B, packed)
                layer_b.append(b[running].mean() if bool(running.any()) else b.sum() * 0)
                if layer == L - 1:
                    b = torch.ones_like(b)
                cum = cum + b
                reached = running & (cum >= threshold)
                going = running & ~reached
                weight = torch.where(reached, R, torch.where(going, b, torch.zeros_like(b)))
                ponder = ponder.index_add(0, img[running], (1 + R * reached)[running])
                contributing = reached | going if self.all_tokens else (reached | going) & (ids == 0)
                where = (img[contributing], ids[contributing] if self.all_tokens else ids[contributing] * 0)
                out = out.index_put(where, weight[contributing].unsqueeze(-1).to(x.dtype) * x[contributing],
                                    accumulate=True)
                R = R - b * going
                halt_block = halt_block.index_put((img[reached], ids[reached]), halt_block.new_tensor(layer + 1))
                running = going
                alive = running if self.mode == "as_written" else (b < threshold)
                if self.stop_at_cls_halt:
                    cls_on = torch.zeros(B, dtype=torch.bool, device=x.device).index_put(
                        (img[running & (ids == 0)],), running.new_ones(()))
                    running, alive = running & cls_on[img], alive & cls_on[img]
            if self.execution == "masked":
                continue
            with stage("tpc.gather"):
                if packed:
                    keep = alive
                    x, img, ids, running, cum, R = (t[keep] for t in (x, img, ids, running, cum, R))
                else:
                    x, img, ids, running, cum, R, alive = _compact(alive, x, img, ids, running, cum, R, alive)
                alive = running
            if not bool(alive.any()):
                break
        self.last = Trace(counts, halt_block, ponder, torch.stack(layer_b + [layer_b[-1] * 0] * (L - len(layer_b))),
                          torch.stack(active, dim=1) if active else None)
        return model.norm(out)

    def _regularised(self, b, alive, img, B, packed):
        """TDR (Eq. 9): each token's b mixed with the mean b of its image's active tokens ([CLS] included)."""
        if self.xi == 1:
            return b
        if packed:
            sums = b.new_zeros(B).index_add(0, img, b)
            mean = (sums / torch.bincount(img, minlength=B).clamp_min(1))[img]
        else:
            mask = alive.to(b.dtype)
            mean = ((b * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)).expand_as(b)
        return self.xi * b + (1 - self.xi) * mean

    # --- training ------------------------------------------------------------------------------------

    def losses(self, logits: torch.Tensor, target: torch.Tensor, phi_p: float = 5e-4, phi_d: float = 0.1,
               target_depth: float | None = None) -> dict[str, torch.Tensor]:
        """Eq. 14 for the last forward: task (cross-entropy on the ACT-weighted [CLS]), ponder (Eq. 10, the mean
        over tokens of M_k + r_k) and the distribution prior KL(D || N(target_depth, 1)) (Eq. 13)."""
        if self.last is None:
            raise RuntimeError("tpc.losses needs a forward pass first")
        task = F.cross_entropy(logits, target)
        ponder = self.last.ponder.mean() / self.tokens
        depth = target_depth if target_depth is not None else self.target_depth
        if phi_d > 0 and depth is None:
            raise GtpcliError("tpc: the distribution prior needs target_depth (M_target; the paper does not give it)")
        distribution = kl_to_prior(self.last.layer_b, depth) if phi_d > 0 else task.new_zeros(())
        return {"task": task, "ponder": ponder, "distribution": distribution,
                "total": task + phi_p * ponder + phi_d * distribution}


def distribution_prior(layers: int, target_depth: float) -> torch.Tensor:
    """D_target(l) = N(target_depth, 1) at l = 1..L, normalised (Eq. 13)."""
    at = torch.arange(1, layers + 1, dtype=torch.float32)
    weights = torch.exp(-0.5 * (at - target_depth) ** 2)
    return weights / weights.sum()


def kl_to_prior(layer_b: torch.Tensor, target_depth: float) -> torch.Tensor:
    """KL(D || D_target), D = the per-block mean break probability normalised over blocks (Eq. 12-13)."""
    D = layer_b.clamp_min(1e-8)
    D = D / D.sum()
    return (D * (D.log() - distribution_prior(len(D), target_depth).to(D).clamp_min(1e-12).log())).sum()


def _forward_features(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return self.tpc.run(self, x)


def _embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens entering block 1: timm's patch embedding, position embedding and pre-norm, or LV-ViT's."""
    x = model.patch_embed(images)
    if hasattr(model, "_pos_embed"):
        return model.norm_pre(model.patch_drop(model._pos_embed(x)))
    return torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed


def _heads(attn: nn.Module, qkv: torch.Tensor):
    """(B, n, 3C) -> q, k, v as (B, H, n, C/H), with the attention's q/k norms."""
    B, n, _ = qkv.shape
    q, k, v = qkv.reshape(B, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def _mix(attn: nn.Module, q, k, v, alive: torch.Tensor | None, ctl: TPC) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over each query's allowed keys: the active ones (`alive`, (B, n)), and with the
    stabiliser the kappa Euclidean-nearest of them (per query and head, Eq. 17-18)."""
    n = k.shape[-2]
    nearest = ctl.stabilizer and ctl.kappa < n
    if alive is None and not nearest:
        drop = attn.attn_drop.p if attn.training else 0.0
        with stage("attention"):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=attn.scale)
    with stage("attention"):
        logits = (q * attn.scale) @ k.transpose(-2, -1)
    allowed = None if alive is None else alive[:, None, None, :]
    if nearest:
        with stage("tpc.stabilizer"), torch.no_grad():
            # |q - k|^2 = |q|^2 + |k|^2 - 2 q.k and |q|^2 is the same along a row, so the nearest keys are those
            # with the largest q.k - |k|^2 / 2, i.e. of logits - (scale / 2) |k|^2 (one pass over the map)
            nearness = torch.sub(logits, k.pow(2).sum(-1).unsqueeze(-2), alpha=attn.scale / 2)
            if allowed is not None:
                nearness.masked_fill_(~allowed, -math.inf)
            kth = nearness.topk(ctl.kappa, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
            knn = nearness >= kth
            allowed = knn if allowed is None else knn & allowed
    with stage("attention"):
        logits = logits.masked_fill_(~allowed, torch.finfo(logits.dtype).min)
        return attn.attn_drop(logits.softmax(dim=-1)) @ v


def _attention_out(attn: nn.Module, mixed: torch.Tensor) -> torch.Tensor:
    """(B, H, n, d) -> the attention's output projection on (B, n, C)."""
    B, H, n, d = mixed.shape
    out = mixed.transpose(1, 2).reshape(B, n, H * d)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    return attn.proj_drop(attn.proj(out))


def _padded_block(blk: nn.Module, x: torch.Tensor, alive: torch.Tensor | None, ctl: TPC) -> torch.Tensor:
    """One block on (B, n, C); `alive` (B, n) marks the tokens taking part (None: all). Inactive tokens are never
    attended; as_written zeroes them around both norms, nonmonotone still computes them as queries."""
    zero = alive is not None and ctl.mode == "as_written"
    m = alive.unsqueeze(-1).to(x.dtype) if zero else None
    with stage("attention"):   # _mix labels its own parts: the stabiliser runs between them
        h = blk.norm1(x * m) * m if zero else blk.norm1(x)
        q, k, v = _heads(blk.attn, blk.attn.qkv(h))
    mixed = _mix(blk.attn, q, k, v, alive, ctl)
    with stage("attention"):
        y = x + blk.drop_path1(blk.ls1(_attention_out(blk.attn, mixed)))
    with stage("mlp"):
        h = blk.norm2(y * m) * m if zero else blk.norm2(y)
        y = y + blk.drop_path2(blk.ls2(blk.mlp(h)))
        return y * m if zero else y


def _packed_block(blk: nn.Module, x: torch.Tensor, img: torch.Tensor, B: int, ctl: TPC) -> torch.Tensor:
    """One block on the active tokens of B images concatenated, (T, C), `img` (T,) their image: qkv, proj and
    MLP on the T tokens; attention on each image's tokens, padded to the largest count."""
    lengths = torch.bincount(img, minlength=B)
    widest = int(lengths.max())
    with stage("tpc.gather"):
        starts = torch.cumsum(lengths, 0) - lengths
        position = torch.arange(len(img), device=x.device) - starts[img]
        alive = torch.arange(widest, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    attn = blk.attn
    with stage("attention"):
        qkv = attn.qkv(blk.norm1(x))
        padded = qkv.new_zeros(B, widest, qkv.shape[-1]).index_put((img, position), qkv)
        q, k, v = _heads(attn, padded)
    mixed = _mix(attn, q, k, v, None if bool(alive.all()) else alive, ctl)
    with stage("attention"):
        mixed = mixed.transpose(1, 2).reshape(B, widest, -1)[img, position]
        mixed = attn.norm(mixed) if hasattr(attn, "norm") else mixed
        y = x + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(mixed))))
    with stage("mlp"):
        return y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))


def _compact(alive: torch.Tensor, *state: torch.Tensor):
    """Move each image's active tokens to the front, in order, and cut every row to the largest count."""
    order = torch.sort((~alive).to(torch.int32), dim=1, stable=True).indices
    widest = int(alive.sum(1).max())
    moved = []
    for t in state:
        index = order if t.dim() == 2 else order.unsqueeze(-1).expand(-1, -1, t.shape[-1])
        moved.append(torch.gather(t, 1, index)[:, :widest])
    return moved


# --- checkpoints ---------------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module, path: str | Path, **extra) -> None:
    """A plain state dict (the backbone's own keys, loadable by any timm model) and the `tpc` mapping."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("tpc.")}
    torch.save({"state_dict": state, "tpc": model.tpc.hparams(), **extra}, Path(path))


def checkpoint_hparams(path: str | Path) -> dict[str, Any] | None:
    """The `tpc` mapping saved with a checkpoint, checked; None when the file has none (an untrained
    controller: the caller warns with the card's `untrained` line)."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth", ".bin", ".tar", ""):
        return None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file (safetensors, npz): no mapping
        return None
    found = loaded.get("tpc") if isinstance(loaded, Mapping) else None
    if found is None:
        return None
    if not isinstance(found, Mapping):
        raise GtpcliError(f"{path}: key 'tpc' must be a mapping of TPC hyperparameters, got {type(found).__name__}")
    return METHOD.validate(dict(found), f"{path}: key 'tpc':")
