"""Checkpoints in every format load to the same outputs; bad ones are one clear line."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from gtpcli.models import backbones
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


# --- checkpoints as real projects write them ----------------------------------------------------------------

SAFE_NAMESPACE = hasattr(torch.serialization, "add_safe_globals")  # torch >= 2.4


def shifted(state, by):
    """Another set of weights of the same model (an EMA copy stands in for one)."""
    return {k: v + by if v.is_floating_point() else v for k, v in state.items()}


def outputs(model, size=224):
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, size, size))


def training_args():
    import argparse
    return argparse.Namespace(model=NAME, lr=5e-4, epochs=300, model_ema=True, data_dir="/data/imagenet", aa=None)


@pytest.mark.parametrize("layout", [
    # timm's train.py (CheckpointSaver): state_dict, state_dict_ema, args, optimizer, ...
    lambda s, ema: {"epoch": 299, "arch": NAME, "state_dict": s, "state_dict_ema": ema, "optimizer": {"state": {}},
                    "version": 2, "args": training_args(), "metric": 79.8},
    # DeiT's main.py: model, model_ema, optimizer, lr_scheduler, epoch, scaler, args
    lambda s, ema: {"model": s, "model_ema": ema, "optimizer": {}, "lr_scheduler": {}, "epoch": 299, "scaler": {},
                    "args": training_args()},
])
def test_training_checkpoints_load_their_ema_weights_and_say_so(source, tmp_path, layout, capfd):
    state = source.state_dict()
    ema = shifted(state, 0.01)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(layout(state, ema), path)
    if not SAFE_NAMESPACE:
        result = runner.invoke(app, ["profile", NAME, "--P", "0", "--no-speed", "--checkpoint", str(path)])
        assert result.exit_code == 2 and "argparse.Namespace" in result.output and "torch >= 2.4" in result.output
        return
    loaded = backbones.create(NAME, checkpoint=path)
    expected = backbones.create(NAME)
    expected.load_state_dict(ema)
    assert torch.equal(outputs(loaded), outputs(expected))
    entry = "state_dict_ema" if "state_dict_ema" in torch.load(path, weights_only=False) else "model_ema"
    assert f"its '{entry}' entry (EMA weights" in capfd.readouterr().err


def test_a_checkpoint_without_ema_loads_its_model_entry_and_args_stay_allowed(source, tmp_path, capfd):
    path = tmp_path / "last.pth"
    torch.save({"state_dict": source.state_dict(), "args": training_args(), "state_dict_ema": None}, path)
    if not SAFE_NAMESPACE:
        pytest.skip("torch < 2.4 cannot allow argparse.Namespace safely (refusal tested above)")
    assert torch.equal(outputs(backbones.create(NAME, checkpoint=path)), outputs(source))
    err = capfd.readouterr().err
    assert "its 'state_dict' entry (its EMA entry is empty)" in err


def test_compiled_and_ddp_prefixes_are_stripped(source, tmp_path):
    compiled = torch.compile(source)  # compiles lazily: building it is cheap, its state dict has _orig_mod.
    keys = list(compiled.state_dict())
    assert all(k.startswith("_orig_mod.") for k in keys)
    for name, state in (("compiled.pth", compiled.state_dict()),
                        ("ddp_compiled.pth", {f"module.{k}": v for k, v in compiled.state_dict().items()}),
                        ("compiled_ddp.pth", {f"_orig_mod.module.{k}": v for k, v in source.state_dict().items()})):
        torch.save({"state_dict": state}, tmp_path / name)
        assert torch.equal(outputs(backbones.create(NAME, checkpoint=tmp_path / name)), outputs(source)), name


def test_another_img_size_resamples_the_position_embedding_with_timm(source, tmp_path, capfd):
    from timm.layers import resample_abs_pos_embed

    path = tmp_path / "deit_224.pth"
    torch.save({"model": source.state_dict()}, path)  # the DeiT release layout
    loaded = backbones.create(NAME, checkpoint=path, img_size=160)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [10, 10], num_prefix_tokens=1)
    assert loaded.pos_embed.shape == (1, 101, 192) and torch.equal(loaded.pos_embed.detach(), expected)
    assert torch.equal(loaded.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)
    assert "pos_embed resampled from (1, 197, 192) to (1, 101, 192)" in capfd.readouterr().err
    result = runner.invoke(app, ["profile", NAME, "--P", "0,4", "--no-speed", "--checkpoint", str(path),
                                 "--img-size", "160", "--format", "json", "--output", str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    assert [r["tokens"][0] for r in json.loads(result.stdout)["rows"]] == [101, 101, 101]


def test_deit_distilled_release_layout_loads(tmp_path):
    name = "deit_tiny_distilled_patch16_224"
    torch.manual_seed(1)
    release = backbones.create(name)
    path = tmp_path / "deit_tiny_distilled_patch16_224-b40b3cf7.pth"
    torch.save({"model": release.state_dict()}, path)
    assert {"dist_token", "head_dist.weight"} <= set(release.state_dict())
    assert torch.equal(outputs(backbones.create(name, checkpoint=path)), outputs(release))


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "state_dict_ema": shifted(s, 0.0)}])
def test_lvvit_release_layouts_load_and_resample(tmp_path, wrap):
    """The authors' LV-ViT files (a bare state dict, or timm's train.py checkpoint), also at another size
    (LV-ViT is not timm's, so its position embedding is resampled by the same timm function directly)."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(2)
    release = backbones.create("lvvit_s", depth=2)
    path = tmp_path / "lvvit_s-26M-224-83.3.pth.tar"
    torch.save(wrap(release.state_dict()), path)
    assert torch.equal(outputs(backbones.create("lvvit_s", checkpoint=path, depth=2)), outputs(release))
    bigger = backbones.create("lvvit_s", checkpoint=path, depth=2, img_size=256)
    expected = resample_abs_pos_embed(release.pos_embed.detach(), [16, 16], num_prefix_tokens=1)
    assert torch.equal(bigger.pos_embed.detach(), expected)


def test_pretrained_offline_is_one_line_naming_the_file_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline for certain, even on a machine with network
    for args in ([NAME, "--pretrained"], ["deit_s", "--pretrained"], ["hf-hub:timm/deit_tiny_patch16_224.fb_in1k"]):
        result = runner.invoke(app, ["profile", *args, "--P", "0", "--no-speed", "--output", str(tmp_path / "o.json")])
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert "cannot be reached" in line and "--checkpoint FILE" in line
        assert "huggingface.co/timm/deit_" in line
    both = runner.invoke(app, ["profile", NAME, "--pretrained", "--checkpoint", str(tmp_path / "x.pth")])
    assert both.exit_code == 2 and "not both" in both.output
    traced = runner.invoke(app, ["trace", NAME, "--pretrained", "--out", str(tmp_path / "trace")])
    assert traced.exit_code == 2 and "cannot be reached" in traced.output and "Traceback" not in traced.output
