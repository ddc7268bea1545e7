"""Issue 16's measurement protocol on CPU: autocast, compile, peak memory, latency percentiles, batch and
image-size grids with stock at every combination, out-of-memory stepping, several models, environment
record, and device-time selection for traces (on recorded profiler events: there is no GPU here)."""

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from gtpcli.measure import sweep
from gtpcli.cli import app
from gtpcli.measure import memory
from gtpcli.measure import speed
from gtpcli.measure import trace

runner = CliRunner()
TINY = "deit_tiny_patch16_224"
FAST = ["--runs", "3", "--warmup", "1", "--no-flops"]


def profile(tmp_path, *args):
    result = runner.invoke(app, ["profile", *map(str, args), "--format", "json", "--output", str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_percentiles_interpolate_and_are_ordered():
    assert speed.percentiles([10.0], (50, 90, 99)) == (10.0, 10.0, 10.0)
    # 1..11: p50 = 6, p90 = 10, p99 = 10.9 (linear between order statistics, as numpy's default)
    assert speed.percentiles([float(v) for v in range(11, 0, -1)], (50, 90, 99)) == pytest.approx((6.0, 10.0, 10.9))


def test_grid_measures_stock_at_every_combination_with_latency_and_memory(tmp_path):
    data = profile(tmp_path, TINY, "--P", "1", "--method", "gtp,tome", "--batch-size", "1,3", "--img-size", "64,96", *FAST)
    rows = data["rows"]
    combos = {(b, s) for b in (1, 3) for s in (64, 96)}
    assert {(r["batch_size"], r["img_size"]) for r in rows if r["method"] == "stock"} == combos
    assert sorted((r["method"], r["batch_size"], r["img_size"]) for r in rows) == sorted(
        (m, b, s) for m in ("stock", "gtp", "tome") for b, s in combos)
    for r in rows:
        assert r["timed_batch_size"] == r["batch_size"] and r["runs"] >= 3
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["rss_peak_delta_mib"] > 0  # resident growth over the timed passes (measure/memory.py)
        stock = next(s for s in rows if s["method"] == "stock" and (s["batch_size"], s["img_size"]) == (r["batch_size"], r["img_size"]))
        # timed in the same rounds as its stock model: the median of the per-round ratios (docs/timing.md)
        assert r["speedup"] == pytest.approx(speed.ratio(stock["round_img_s"], r["round_img_s"]).median, abs=2e-3)
        assert r["memory_saving"] == pytest.approx(1 - r["rss_peak_delta_mib"] / stock["rss_peak_delta_mib"], abs=1e-3)
        assert r["tokens"][0] == (r["img_size"] // 16) ** 2 + 1  # each combination ran at its own image size
    assert (tmp_path / "o.json").is_file() and len(json.loads((tmp_path / "o.json").read_text())["rows"]) == 12


def test_resident_growth_follows_the_batch():
    model = torch.nn.Sequential(torch.nn.Linear(256, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 256)).eval()
    growth = []
    for batch in (1, 512):
        with memory.peak("cpu") as peak:
            with torch.inference_mode():
                model(torch.randn(batch, 256))
        growth.append(peak["rss_peak_delta_mib"])
    # batch 512: an 8 MiB hidden activation at least; batch 1: 16 KiB
    assert growth[1] >= 7.5 and growth[1] > growth[0] + 6


def test_autocast_bf16_runs_the_forward_in_bfloat16_and_is_recorded(tmp_path):
    seen = []
    linear = torch.nn.Linear(3, 8)
    linear.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    model = torch.nn.Sequential(torch.nn.Flatten(), linear)
    speed.measure(model, (1, 1), speed.Timing("cpu", "float32", batch_size=2, warmup=0, runs=1, amp="bfloat16"))
    assert seen and set(seen) == {torch.bfloat16}
    data = profile(tmp_path, TINY, "--P", "1", "--amp", "bf16", "--batch-size", "2", "--img-size", "64", *FAST)
    assert {(r["amp"], r["dtype"]) for r in data["rows"]} == {("bfloat16", "float32")}
    assert data["env"]["amp"] == "bfloat16" and data["config"]["amp"] == "bf16"


def test_a_result_file_of_one_precision_refuses_another(tmp_path):
    profile(tmp_path, TINY, "--P", "1", "--batch-size", "2", "--img-size", "64", *FAST)
    result = runner.invoke(app, ["profile", TINY, "--P", "1", "--amp", "bf16", "--batch-size", "2", "--img-size", "64",
                                 *FAST, "--output", str(tmp_path / "o.json")])
    assert result.exit_code == 2 and "amp None (this run: 'bfloat16')" in result.output


def test_out_of_memory_steps_the_batch_down_for_stock_and_reduced_alike(tmp_path, monkeypatch):
    real = speed.rounds

    def small_memory(setups, timing, **kwargs):
        if timing.batch_size > 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(setups, timing, **kwargs)

    monkeypatch.setattr(speed, "rounds", small_memory)
    data = profile(tmp_path, TINY, "--P", "1", "--method", "gtp,tome", "--batch-size", "8", "--img-size", "64", *FAST)
    assert [(r["method"], r["batch_size"], r["timed_batch_size"]) for r in data["rows"]] == [
        ("stock", 8, 2), ("gtp", 8, 2), ("tome", 8, 2)]


def test_several_models_each_their_own_block_and_file(tmp_path):
    result = runner.invoke(app, ["profile", "deit_tiny_patch16_224,vit_tiny_patch16_*", "--P", "1", "--no-speed",
                                 "--img-size", "64", "--output", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "deit_t + gtp" in result.stdout and "vit_tiny_patch16_224 + gtp" in result.stdout
    assert (tmp_path / "r-deit_t.json").is_file() and (tmp_path / "r-vit_tiny_patch16_224.json").is_file()
    assert (tmp_path / "r-vit_tiny_patch16_384.json").is_file()
    bad = runner.invoke(app, ["profile", "resnet5*", "--no-speed"])
    assert bad.exit_code == 2 and "no timm model gtpcli can patch matches" in bad.output


def test_environment_record(tmp_path):
    data = profile(tmp_path, TINY, "--P", "1", "--no-speed", "--img-size", "64", "--seed", "3")
    env = data["env"]
    assert env["seed"] == 3 and env["gtpcli"] and env["threads"] == torch.get_num_threads()
    assert env["compile"] is None and env["matmul_precision"] in ("highest", "high", "medium")
    assert len(env["git_commit"]) == 40 and isinstance(env["git_dirty"], bool)


@pytest.mark.parametrize("args, message", [
    (["--amp", "fp8"], "--amp must be bf16 or fp16"),
    (["--amp", "bf16", "--dtype", "bfloat16"], "leave --dtype at float32"),
    (["--compile-mode", "max-autotune"], "needs --compile"),
    (["--compile", "--compile-mode", "fast"], "--compile must be one of"),
    (["--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
    (["--batch-size", "1,0"], "--batch-size must be >= 1"),
    (["--batch-size", "4,4"], "names a value twice"),
    (["--img-size", "64,x"], "cannot read 'x'"),
])
def test_bad_measurement_options_are_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["profile", TINY, "--P", "1", *args, "--output", str(tmp_path / "o.json")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_trace_selects_device_time_on_cuda_from_recorded_events():
    """Profiler averages as torch records them for a CUDA run (CPU launch time small, kernel time large):
    the stage times must be the kernel time, per step; on CPU they stay CPU time."""
    recorded = [SimpleNamespace(key="forward", cpu_time_total=3000.0, device_time_total=90000.0),
                SimpleNamespace(key="attention", cpu_time_total=1200.0, device_time_total=60000.0),
                SimpleNamespace(key="gtp.select", cpu_time_total=900.0, device_time_total=1500.0),
                SimpleNamespace(key="aten::mm", cpu_time_total=50.0, device_time_total=20000.0)]
    assert trace.per_step(recorded, 3, on_device=True) == {"forward": 30.0, "attention": 20.0, "gtp.select": 0.5}
    assert trace.per_step(recorded, 3, on_device=False) == {"forward": 1.0, "attention": 0.4, "gtp.select": 0.3}
    older = SimpleNamespace(key="mlp", cpu_time_total=1.0, cuda_time_total=4000.0, self_cuda_time_total=1000.0)
    assert trace.per_step([older], 2, on_device=True) == {"mlp": 2.0}  # torch < 2.4 names it cuda_time_total
    assert trace.device_us(older, own=True) == 1000.0


def test_trace_under_autocast_and_a_cast(tmp_path):
    for args, dtype, amp in ((["--amp", "bf16"], "float32", "bfloat16"), (["--dtype", "bfloat16"], "bfloat16", None)):
        result = runner.invoke(app, ["trace", TINY, "--P", "1", "--batch-size", "1", "--img-size", "64", "--steps", "1",
                                     *args, "--out", str(tmp_path), "--format", "json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert (data["dtype"], data["amp"], data["time"]) == (dtype, amp, "CPU") and data["forward_ms"] > 0


@pytest.mark.slow
def test_compile_reports_compile_time_apart_and_dynamo_findings(tmp_path):
    data = profile(tmp_path, TINY, "--P", "1", "--method", "tome", "--compile", "--batch-size", "1", "--img-size", "32",
                   "--runs", "2", "--warmup", "1", "--no-flops")
    assert data["env"]["compile"] == "default"
    for row in data["rows"]:
        assert row["compile"] == "default" and row["compile_s"] > 0 and row["graphs"] >= 1
        assert (row["graph_breaks"] > 0) == any("graph break" in w for w in row["warnings"])
        assert row["recompiled"] is False and row["img_s"] > 0


def test_compile_findings_are_said_in_words():
    warm = {"graphs": 2, "graph_breaks": 1, "graph_break_reasons": ["data-dependent branch"]}
    from gtpcli.measure.compiled import findings
    lines = findings(warm, {**warm, "graphs": 5})
    assert lines[0].startswith("torch.compile: 1 graph break(s), 2 graphs (data-dependent branch)")
    assert "recompiled during the timed passes (3 new graphs)" in lines[1]
    assert findings({**warm, "graph_breaks": 0}, {**warm, "graph_breaks": 0}) == []
