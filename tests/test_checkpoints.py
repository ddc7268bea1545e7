"""Checkpoints in every format load to the same outputs; bad ones are one clear line."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from gtpcli import backbones
from gtpcli.cli import app

runner = CliRunner()
NAME = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(3)
    return backbones.create(NAME)


def save(state, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    else:
        torch.save(state, path)


@pytest.mark.parametrize("filename, wrap", [
    ("plain.pth", lambda s: s),
    ("wrapped.pt", lambda s: {"model": s, "epoch": 3}),
    ("ddp.bin", lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}}),
    ("checkpoint.pth.tar", lambda s: {"state_dict": s, "optimizer": {}}),
    ("weights.safetensors", lambda s: s),
    ("weights.npz", lambda s: s),
])
def test_every_format_round_trips(source, tmp_path, filename, wrap):
    path = tmp_path / filename
    save(wrap(source.state_dict()), path)
    loaded = backbones.create(NAME, checkpoint=path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    result = runner.invoke(app, ["profile", NAME, "--P", "0", "--no-speed", "--checkpoint", str(path),
                                 "--format", "json", "--output", str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["weights"] == str(path)


def test_strict_loading_reports_keys_and_no_strict_loads_what_fits(source, tmp_path):
    state = source.state_dict()
    del state["head.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["head.bias"] = torch.zeros(10)  # wrong shape: skipped, not a crash, when not strict
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    result = runner.invoke(app, ["profile", NAME, "--P", "0", "--no-speed", "--checkpoint", str(path)])
    assert result.exit_code == 2
    assert "missing: head.weight" in result.output and "unexpected: extra.weight" in result.output
    assert "head.bias (10,) vs (1000,)" in result.output
    loaded = backbones.create(NAME, checkpoint=path, strict=False)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    allowed = runner.invoke(app, ["profile", NAME, "--P", "0", "--no-speed", "--no-strict", "--checkpoint", str(path),
                                  "--output", str(tmp_path / "o.json")])
    assert allowed.exit_code == 0 and "loaded non-strictly" in allowed.output
    assert re.search(r"\d+ of \d+ tensors loaded, 2 LEFT RANDOM", allowed.output), allowed.output  # said loudly


@pytest.mark.parametrize("filename, content, message", [
    ("broken.safetensors", b"\x00\x01garbage", "not a readable safetensors"),
    ("broken.npz", b"garbage", "not a readable .npz"),
    ("empty.pth", b"", "not a readable torch checkpoint"),
])
def test_corrupt_files_are_one_clear_line(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_bytes(content)
    result = runner.invoke(app, ["profile", NAME, "--P", "0", "--no-speed", "--checkpoint", str(path)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
