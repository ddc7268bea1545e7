"""Where the forward time goes: the PyTorch profiler over the stage labels of the patched blocks."""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from ..reduce.common import LABELS

STAGES = ("attention", "mlp", "gtp.graph", "gtp.select", "gtp.propagate", "tome.match", "tome.merge")


def stage_times(model: nn.Module, x: torch.Tensor, steps: int = 3) -> dict[str, float]:
    """Milliseconds per forward pass spent in each labelled stage, and in the whole forward."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    LABELS["on"] = True
    try:
        with torch.inference_mode():
            model(x)  # warm-up outside the profile
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    with record_function("forward"):
                        model(x)
                    if x.is_cuda:
                        torch.cuda.synchronize()
    finally:
        LABELS["on"] = False
    events = {e.key: e for e in prof.key_averages()}
    wanted = ("forward",) + STAGES
    return {name: events[name].cpu_time_total / steps / 1e3 for name in wanted if name in events}
