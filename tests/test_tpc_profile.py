"""`gtpcli profile` / `check` / `trace` with TPC-ViT: adaptive rows (gtpcli/cost/adaptive.py's contract),
beside fixed-P methods in one run, a --delta sweep, the untrained-controller and random-images caveats."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gtpcli.cli import app
from gtpcli.cost.adaptive import RANDOM_SOURCE

runner = CliRunner()
PROFILE = """name: tiny_tpc
model: {timm: vit_tiny_patch16_224, prefix_tokens: 1, img_size: 32, patch_size: 4, embed_dim: 64, depth: 4,
        num_heads: 2, mlp_ratio: 4.0, num_classes: 10}
method: gtp
P: "0,4"
"""
GATES = ["--hp", "tpc.gate_center=-2", "--hp", "tpc.kappa=32"]  # random weights: halting in blocks 2-4


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tpc_profile")
    profile = folder / "tiny.yaml"
    profile.write_text(PROFILE)
    out = folder / "out.json"
    result = cli("profile", profile, "--method", "gtp,tpc", "--P", "0,4", "--delta", "0.01,0.5", *GATES,
                 "--batch-size", "8", "--runs", "1", "--warmup", "0", "-o", out)
    assert result.exit_code == 0, result.output
    return profile, out, result.output


def test_adaptive_rows_keep_the_contract(swept):
    _, out, _ = swept
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["P"], r.get("delta")) for r in rows] == [
        ("stock", 0, None), ("gtp", 0, None), ("gtp", 4, None), ("tpc", None, 0.01), ("tpc", None, 0.5)]
    tight, loose = rows[3], rows[4]
    for r in (tight, loose):
        assert r["adaptive"] is True and r["images"] == 64 and r["counts_source"] == RANDOM_SOURCE
        assert r["untrained_controller"] is True and r["hparams"]["kappa"] == 32
        assert len(r["tokens"]) == 4 and r["tokens"][0] == 65
        assert all(sum(d["hist"]["counts"]) == 64 and d["min"] <= d["p50"] <= d["max"] for d in r["tokens_dist"])
        assert r["jensen_gap_gmacs"] == pytest.approx(r["gmacs"] - r["gmacs_at_mean_tokens"])
        assert r["gmacs_p5"] <= r["gmacs_p50"] <= r["gmacs_p95"] and r["gmacs_std"] > 0
        assert r["useful_gmacs"] <= r["gmacs"] < rows[0]["gmacs"]
        assert r["fvcore_check"] == {"images": 3, "max_relative_gap": 0.0}
        single, padded, packed = (r["batching"][m] for m in ("single", "padded", "packed"))
        assert single["ratio"] == 1 and single["batch_size"] == 1 and padded["batch_size"] == 8
        assert padded["executed_gmacs"] >= packed["executed_gmacs"] >= packed["ideal_gmacs"] == single["ideal_gmacs"]
        assert all(m["img_s"] > 0 for m in (single, padded, packed)) and r["img_s"] == padded["img_s"]
    assert loose["gmacs"] < tight["gmacs"] and loose["tokens"][-1] < tight["tokens"][-1]   # delta: halt earlier


def test_adaptive_table_shows_expected_gmacs_and_the_caveats(swept):
    _, _, output = swept
    for text in ("tiny_tpc + tpc (token counts depend on the image)", "E[GMACs] ± std", "GMACs at mean tokens",
                 "Jensen gap", "img/s packed (batch 8)", "packed: executed / ideal GMACs", "delta=0.01",
                 "tokens entering each block over 64 images", "tiny_tpc + gtp", "random images (means nothing"):
        assert text in output, text
    assert output.count("gates not trained: token counts reflect an untrained controller") == 1


def test_resume_keeps_the_adaptive_points(swept, tmp_path):
    profile, out, _ = swept
    copy = tmp_path / "again.json"
    copy.write_text(out.read_text())
    result = cli("profile", profile, "--method", "gtp,tpc", "--P", "0,4", "--delta", "0.01,0.5", *GATES,
                 "--batch-size", "8", "--runs", "1", "--warmup", "0", "-o", copy, "--resume")
    assert result.exit_code == 0, result.output
    assert "5 points (5 resumed)" in result.output.replace("\n", " ")
    assert json.loads(copy.read_text())["rows"] == json.loads(out.read_text())["rows"]


def test_counts_and_accuracy_come_from_data(swept, tmp_path):
    """--data: the distribution of these images, their accuracy, and where they came from."""
    import numpy as np
    from PIL import Image

    profile, _, _ = swept
    rng = np.random.default_rng(0)
    for label in map(str, range(10)):   # one class folder per output of the head
        (tmp_path / "val" / label).mkdir(parents=True)
        for at in range(1):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "val" / label / f"{at}.png")
    out = tmp_path / "data.json"
    result = cli("profile", profile, "--method", "tpc", *GATES, "--data", tmp_path / "val", "--no-speed",
                 "--batch-size", "4", "-o", out)
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(out.read_text())["rows"] if r["method"] == "tpc")
    assert row["images"] == 10 and row["counts_source"] == f"data: {tmp_path / 'val'}"
    assert row["acc_n"] == 10 and 0 <= row["acc"] <= 100
    assert sum(row["tokens_dist"][-1]["hist"]["counts"]) == 10


def test_check_gates_expected_macs_and_mean_counts(swept, tmp_path):
    profile, _, _ = swept
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"check:\n  models: [{profile}]\n  methods: [tpc]\n  delta: '0.05'\n  metrics: [macs, tokens]\n")
    baseline = tmp_path / "baseline.json"
    assert cli("check", spec, "--update-baseline", baseline).exit_code == 0
    passed = cli("check", spec, "--baseline", baseline)   # measured again: counts are deterministic
    assert passed.exit_code == 0, passed.output
    data = json.loads(baseline.read_text())
    row = next(r for r in data["rows"] if r["method"] == "tpc")
    assert row["setting"] == "delta=0.05" and row["P"] is None
    row["tokens"][-1] += 0.5
    baseline.write_text(json.dumps(data))
    failed = cli("check", spec, "--baseline", baseline)
    assert failed.exit_code == 1 and "tpc delta=0.05 tokens" in failed.output


def test_trace_labels_tpc_stages(swept, tmp_path):
    profile, _, _ = swept
    result = cli("trace", profile, "--method", "tpc", *GATES, "--batch-size", "4", "--steps", "1",
                 "--out", tmp_path / "trace", "--format", "json")
    assert result.exit_code == 0, result.output
    stages = {s["stage"] for s in json.loads(result.output[result.output.index("{"):])["stages"]}
    assert {"tpc.gates", "tpc.stabilizer", "tpc.gather", "attention", "mlp"} <= stages


@pytest.mark.parametrize("args, message", [
    (["--method", "gtp", "--delta", "0.1"], "--delta is the halting threshold of tpc"),
    (["--method", "tpc", "--delta", "0"], "--delta must be > 0"),
    (["--method", "tpc", "--delta", "0.001..0"], "0 < start <= stop"),
    (["--method", "tpc", "--delta", "0.2..0.1:0.01"], "runs backwards"),
    (["--method", "tpc", "--hp", "tpc.kappa=0"], "kappa must be >= 1"),
])
def test_bad_adaptive_options_exit_2(swept, args, message):
    profile, _, _ = swept
    result = cli("profile", profile, *args, "--no-speed", "--no-flops")
    assert result.exit_code == 2 and message in result.output, result.output


def test_complexity_refuses_an_adaptive_method():
    result = cli("complexity", "--N", "197", "--C", "384", "--method", "tpc")
    assert result.exit_code == 2 and "depend on the image" in result.output
