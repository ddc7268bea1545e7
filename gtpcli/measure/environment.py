"""Everything a measured figure depends on beyond the model: the software stack, the hardware, the numeric
switches (TF32, cudnn.benchmark), threads, seeds and which gtpcli (version, git commit, uncommitted edits).

The facts torch's own `collect_env` reports are read directly (it lists every pip package, seconds per
call); only the NVIDIA driver comes from its helper, and only when CUDA is in use.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def facts(device: str) -> dict:
    """The environment record of a run on `device` (plain data, JSON-ready)."""
    from .. import __version__

    record = {
        "os": platform.platform(), "interop_threads": torch.get_num_interop_threads(),
        "cuda_compiled": torch.version.cuda, "matmul_precision": torch.get_float32_matmul_precision(),
        "gtpcli": __version__, **git_state(Path(__file__).resolve().parents[2]),
    }
    if device.startswith("cuda"):
        from torch.utils import collect_env

        record |= {
            "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "driver": collect_env.get_nvidia_driver_version(collect_env.run),
        }
    return record


def git_state(root: Path) -> dict:
    """The git commit gtpcli runs from and whether its tracked files have uncommitted edits (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
