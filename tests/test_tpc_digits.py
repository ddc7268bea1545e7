"""TPC-ViT proven on a model trained here (docs/methods/tpc.md): the digits ViT finetuned into a TPC-ViT
in about a minute on 2 cores; inequalities only, never exact numbers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import digits
from gtpcli.cli import app
from gtpcli.methods.tpc import patch as T

pytestmark = pytest.mark.slow
N = 65


@pytest.fixture(scope="module")
def tpc_digits(digits_trained):
    base = digits.create()
    base.load_state_dict(torch.load(digits_trained / "vit.pth", weights_only=True)["state_dict"])
    model = digits.train_tpc(base, digits_trained / "train")
    T.save_checkpoint(model, digits_trained / "tpc.pth")
    return digits_trained, model


def validation(model, root):
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    data = ImageFolder(str(root / "val"), transform=create_transform(**resolve_data_config({}, model=model)))
    return torch.stack([image for image, _ in data]), torch.tensor(data.targets)


def test_finetuned_tpc_vit_is_accurate_and_halts_tokens_per_image(tpc_digits):
    root, model = tpc_digits
    images, labels = validation(model, root)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    counts = model.tpc.last.counts.float()
    assert accuracy >= 0.85
    assert counts[:, -1].mean() <= 0.8 * N and counts[:, -1].mean() < counts[:, 0].mean()
    assert counts[:, -1].std() > 0                     # the count depends on the image


def test_profile_of_the_trained_tpc_vit(tpc_digits):
    root, _ = tpc_digits
    out = root / "tpc-profile.json"
    result = CliRunner().invoke(app, ["profile", str(root / "digits.yaml"), "--checkpoint", str(root / "tpc.pth"),
                                      "--method", "tpc", "--data", str(root / "val"), "--batch-size", "32",
                                      "--runs", "1", "--warmup", "0", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "E[GMACs] ± std" in result.output and "tokens entering each block over 360 images" in result.output
    assert "gates not trained" not in result.output
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    stock, tpc = rows["stock"], rows["tpc"]
    assert tpc["untrained_controller"] is False and tpc["hparams"]["gate_center"] == digits.TPC["gate_center"]
    assert tpc["counts_source"].startswith("data: ") and tpc["images"] == 360 and tpc["acc"] >= 85
    assert tpc["gmacs"] < stock["gmacs"] and tpc["gmacs_std"] > 0 and tpc["jensen_gap_gmacs"] > 0
    assert tpc["fvcore_check"]["max_relative_gap"] == 0
