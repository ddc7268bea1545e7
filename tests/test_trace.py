"""`gtpcli trace`: trace files exist and hold every stage label; shares add up; labels cost nothing after."""

import json

import pytest
from typer.testing import CliRunner

from gtpcli.cli import app
from gtpcli.measure.trace import labels_in
from gtpcli.methods.blocks import LABELS

runner = CliRunner()
COMMON = {"patch_embed", "attention", "mlp", "forward"}


@pytest.mark.parametrize("method, P, own", [
    ("gtp", 8, {"gtp.graph", "gtp.select", "gtp.propagate"}),
    ("tome", 8, {"tome.match", "tome.merge"}),
    ("gtp", 0, set()),
])
def test_trace_writes_tensorboard_and_chrome_traces_with_every_stage(tmp_path, method, P, own):
    result = runner.invoke(app, ["trace", "deit_tiny_patch16_224", "--P", str(P), "--method", method,
                                 "--batch-size", "2", "--steps", "1", "--out", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    chrome = tmp_path / "trace.json"
    tensorboard = list((tmp_path / "tensorboard").glob("*.pt.trace.json"))
    assert chrome.is_file() and len(tensorboard) == 1
    assert labels_in(chrome) == COMMON | own
    assert labels_in(tensorboard[0]) == COMMON | own
    stages = {s["stage"]: s for s in data["stages"]}
    assert set(stages) == (COMMON - {"forward"}) | own | {"other"}
    assert sum(s["ms"] for s in data["stages"]) == pytest.approx(data["forward_ms"], abs=0.01)
    assert stages["other"]["ms"] >= 0  # labelled stages never overlap
    assert sum(s["share"] for s in data["stages"]) == pytest.approx(1.0, abs=1e-3)
    if own:
        assert 0 < data["method_time_share"] < 1 and 0 < data["method_macs_share"] < 0.05
    assert data["top_ops"] and all(op["self_ms"] >= 0 for op in data["top_ops"])
    assert LABELS["on"] is False


def test_labels_and_hooks_are_gone_after_tracing(tmp_path):
    import timm

    from gtpcli.measure.trace import labelled
    model = timm.create_model("deit_tiny_patch16_224")
    with labelled(model):
        assert LABELS["on"] and model.patch_embed._forward_hooks
    assert not LABELS["on"] and not model.patch_embed._forward_hooks and not model.patch_embed._forward_pre_hooks


def test_trace_bad_input(tmp_path):
    result = runner.invoke(app, ["trace", "deit_tiny_patch16_224", "--method", "dyvit", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown method" in result.output
    result = runner.invoke(app, ["trace", "deit_tiny_patch16_224", "--P", "30", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "layer" in result.output
