"""`gtpcli profile`: counted MACs against the analytic model and the paper, formats, resume, errors."""

import csv
import io
import json
import pickle

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gtpcli import methods
from gtpcli.cost import analytic as A
from gtpcli.models import backbones
from gtpcli.measure import speed, sweep
from gtpcli.cli import app
from gtpcli.measure.flops import count_macs
from gtpcli.models.profiles import load_profile
from gtpcli.methods.patching import patch, unpatch

runner = CliRunner()
TINY = ["deit_tiny_patch16_224", "--P", "0,4,8"]


def profile(*args, tmp_path=None):
    extra = ["--output", str(tmp_path / "out.json")] if tmp_path is not None else []
    return runner.invoke(app, ["profile", *args, *extra])


@pytest.fixture(scope="module")
def deit_s():
    return backbones.create("deit_small_patch16_224")


def test_deit_s_macs_match_the_analytic_model_exactly_at_p0(deit_s):
    count = count_macs(deit_s, torch.randn(1, 3, 224, 224))
    arch = backbones.arch_of(deit_s)
    assert count.macs == sum(A.backbone_macs(arch, 0).values())
    assert round(count.macs / 1e9, 2) == 4.61  # not 4.25: fused attention is counted
    assert count.uncounted == []


@pytest.mark.parametrize("method", ["gtp", "tome"])
def test_reduced_macs_match_backbone_plus_method_overhead(deit_s, method):
    arch = backbones.arch_of(deit_s)
    for P in (4, 8, 14):
        patch(deit_s, method, P=P)
        count = count_macs(deit_s, torch.randn(1, 3, 224, 224))
        removals = deit_s.reduction.removals
        analytic = sum(A.backbone_macs(arch, removals).values()) + methods.implemented_overhead(arch, method, removals)
        assert abs(count.macs - analytic) / analytic < 1e-5, (method, P)
        assert count.counters_disagree < 1e-5  # fvcore vs FlopCounterMode on the ops both count
        unpatch(deit_s)


def test_gtp_macs_land_on_the_papers_table_1_row(deit_s):
    reference = load_profile("deit_s").reference[0]
    for P, paper in zip(reference["P"], reference["gmacs"]):
        patch(deit_s, "gtp", P=P)
        macs = count_macs(deit_s, torch.randn(1, 3, 224, 224)).macs
        assert abs(macs / 1e9 - paper) <= 0.1, (P, macs, paper)
        unpatch(deit_s)


def test_profile_json_rows_and_formats(tmp_path):
    result = profile(*TINY, "--method", "gtp,tome", "--no-speed", "--format", "json", tmp_path=tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["rows"]
    assert [(r["method"], r["P"]) for r in rows] == [("stock", 0)] + [(m, P) for m in ("gtp", "tome") for P in (0, 4, 8)]
    for row in rows:
        assert {"model", "method", "P", "macs", "gmacs", "img_s", "img_s_spread", "speedup"} <= row.keys()
        assert isinstance(row["macs"], int) and row["img_s"] is None and row["speedup"] is None
        assert row["tokens"][0] == 197 and all(a - b == row["P"] for a, b in zip(row["tokens"], row["tokens"][1:]))
    assert {"torch", "timm", "device", "dtype", "batch_size", "threads", "fused_attn"} <= data["env"].keys()
    gtp = [r["macs"] for r in rows if r["method"] == "gtp"]
    assert gtp == sorted(gtp, reverse=True)
    assert json.loads((tmp_path / "out.json").read_text())["rows"] == rows
    as_csv = profile(*TINY, "--no-speed", "--format", "csv", tmp_path=tmp_path)
    assert [int(r["P"]) for r in csv.DictReader(io.StringIO(as_csv.stdout))] == [0, 0, 4, 8]
    as_yaml = profile(*TINY, "--no-speed", "--format", "yaml", tmp_path=tmp_path)
    assert len(yaml.safe_load(as_yaml.stdout)["rows"]) == 4


def test_profile_table_shows_the_paper_row(tmp_path):
    result = profile("deit_s", "--P", "0,8", "--no-speed", tmp_path=tmp_path)
    assert result.exit_code == 0, result.output
    assert "paper GMACs" in result.stdout and "3.44" in result.stdout and "1581.9" in result.stdout


def test_speed_is_measured_and_ratios_follow_from_it(tmp_path):
    result = profile(*TINY, "--no-flops", "--batch-size", "2", "--runs", "2", "--warmup", "0", "--format", "json",
                     tmp_path=tmp_path)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    stock = rows[0]["round_img_s"]
    for row in rows:
        assert row["img_s"] > 0 and row["img_s_q1"] <= row["img_s"] <= row["img_s_q3"]
        # the stock model timed in the same rounds: the median of the per-round ratios (docs/timing.md)
        assert row["speedup"] == pytest.approx(speed.ratio(stock, row["round_img_s"]).median, abs=2e-3)
        assert row["batch_size"] == 2 and row["runs"] >= 2


def test_interrupted_sweep_keeps_rows_and_resumes(tmp_path, monkeypatch):
    real = sweep.measure_point
    calls = []

    def interrupted_after_two(*args, **kwargs):
        calls.append(args[2:4])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "measure_point", interrupted_after_two)
    first = profile(*TINY, "--no-speed", tmp_path=tmp_path)
    assert first.exit_code == 130 and "--resume" in first.output
    saved = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [(r["method"], r["P"]) for r in saved] == [("stock", 0), ("gtp", 0)]

    monkeypatch.setattr(sweep, "measure_point", real)
    counted = []
    monkeypatch.setattr(sweep, "measure_point", lambda *a, **k: counted.append(a[2:4]) or real(*a, **k))
    second = profile(*TINY, "--no-speed", "--resume", "--format", "json", tmp_path=tmp_path)
    assert second.exit_code == 0, second.output
    assert counted == [("gtp", 4), ("gtp", 8)]
    assert [r["P"] for r in json.loads(second.stdout)["rows"]] == [0, 0, 4, 8]


class Exploit:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


@pytest.mark.parametrize("args, message", [
    (["deit_smal"], "did you mean"),
    (["not_a_model_at_all_xyz"], "unknown model"),
    (["deit_tiny_patch16_224", "--P", "20"], "layer 10"),
    (["deit_tiny_patch16_224", "--P", "4", "--selection", "best"], "selection must be one of"),
    (["deit_tiny_patch16_224", "--method", "dyvit"], "unknown method"),
    (["deit_tiny_patch16_224", "--checkpoint", "missing.pth"], "checkpoint not found"),
    (["deit_tiny_patch16_224", "--dtype", "float64"], "--dtype"),
    (["deit_tiny_patch16_224", "--batch-size", "0"], "--batch-size"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = profile(*args, "--no-speed", tmp_path=tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_checkpoints_load_and_bad_ones_are_refused(tmp_path):
    model = backbones.create("deit_tiny_patch16_224")
    good = tmp_path / "good.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, good)
    loaded = backbones.create("deit_tiny_patch16_224", checkpoint=good)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    evil = tmp_path / "evil.pth"
    torch.save({"model": Exploit()}, evil)
    raw_evil = tmp_path / "raw_evil.pt"
    raw_evil.write_bytes(pickle.dumps({"model": Exploit()}))
    wrong = tmp_path / "wrong.pth"
    torch.save(backbones.create("deit_small_patch16_224").state_dict(), wrong)
    for path, message in ((garbage, "not a readable"), (evil, "refused"), (raw_evil, "refused"), (wrong, "does not fit")):
        result = profile("deit_tiny_patch16_224", "--P", "0", "--no-speed", "--checkpoint", str(path), tmp_path=tmp_path)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "this ran while unpickling" not in result.output


def test_variant_flag_reaches_the_patch_and_the_result(tmp_path):
    result = profile("deit_tiny_patch16_224", "--P", "8", "--variant", "authors", "--no-speed", "--no-flops",
                     "--format", "json", tmp_path=tmp_path)
    assert result.exit_code == 0, result.output
    gtp = [r for r in json.loads(result.stdout)["rows"] if r["method"] == "gtp"]
    assert [r["hparams"]["variant"] for r in gtp] == ["authors"]
    bad = profile("deit_tiny_patch16_224", "--P", "8", "--variant", "official", "--no-speed", tmp_path=tmp_path)
    assert bad.exit_code == 2 and "variant must be one of paper, authors" in bad.output


def test_a_clamped_tome_schedule_is_said_in_its_row(tmp_path):
    """DeiT-T has 196 image tokens: r = 60 leaves 136, then 76, and layer 2 can merge only 38 of the 60 asked.
    The row says so (a warning the method's Reduction gives, read without naming the method)."""
    result = profile("deit_tiny_patch16_224", "--P", "60", "--method", "tome", "--no-speed", "--no-flops",
                     "--format", "json", tmp_path=tmp_path)
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.stdout)["rows"] if r["method"] == "tome")
    clamped = [w for w in row["warnings"] if w.startswith("r clamped in layers")]
    assert clamped == [f"r clamped in layers {list(range(2, 12))}"]
