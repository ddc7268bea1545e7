"""`gtpcli check`: an unchanged run passes; one MAC, one token or a lost speed-up fails; bad specs exit 2."""

import copy
import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from gtpcli.commands import check as regress
from gtpcli.measure import speed
from gtpcli.cli import app

runner = CliRunner()
SPEC = """
check:
  models: [deit_tiny_patch16_224]
  methods: [gtp, tome]
  P: "0,8"
  metrics: [macs, tokens, params, overhead_macs]
"""


def check(*args):
    return runner.invoke(app, ["check", *map(str, args)])


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    spec = folder / "spec.yaml"
    spec.write_text(SPEC)
    baseline = folder / "baseline.json"
    result = check(spec, "--update-baseline", baseline)
    assert result.exit_code == 0, result.output
    return spec, baseline


@pytest.fixture
def remeasured(measured, monkeypatch):
    """`measured`, with measuring again answered by what was measured: the rows are deterministic, and
    test_unchanged_run_passes_with_junit measures them again for real. Saves a minute on busy cores."""
    data = json.loads(measured[1].read_text())
    monkeypatch.setattr(regress, "measure", lambda *args: (copy.deepcopy(data["rows"]), dict(data["env"])))
    return measured


def edited(baseline, tmp_path, edit):
    data = json.loads(baseline.read_text())
    row = next(r for r in data["rows"] if r["method"] == "gtp" and r["P"] == 8)
    edit(row)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_unchanged_run_passes_with_junit(measured, tmp_path):
    spec, baseline = measured
    junit = tmp_path / "junit.xml"
    result = check(spec, "--baseline", baseline, "--junit", junit, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert len(rows) == (1 + 2 * 2) * 4 and all(r["verdict"] == "pass" for r in rows)  # stock + 2 methods x 2 P
    assert {r["method"] for r in rows} == {"stock", "gtp", "tome"}
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "20" and suite.get("failures") == "0"


@pytest.mark.parametrize("metric, edit", [
    ("macs", lambda row: row.update(macs=row["macs"] + 1)),
    ("macs", lambda row: row.update(macs=row["macs"] - 1)),
    ("tokens", lambda row: row["tokens"].__setitem__(5, row["tokens"][5] + 1)),
    ("params", lambda row: row.update(params=row["params"] - 1)),
])
def test_one_mac_or_one_token_off_fails_naming_the_metric(remeasured, tmp_path, metric, edit):
    spec, baseline = remeasured
    junit = tmp_path / "junit.xml"
    result = check(spec, "--baseline", edited(baseline, tmp_path, edit), "--junit", junit)
    assert result.exit_code == 1, result.output
    assert f"regression: deit_t gtp P=8 {metric}" in result.stderr  # the timm name resolves to its profile
    assert ET.parse(junit).getroot().get("failures") == "1"


def test_the_stock_backbone_is_compared_too(remeasured, tmp_path):
    """A timm upgrade that changes the backbone's MACs is a regression named `stock`."""
    spec, baseline = remeasured
    data = json.loads(baseline.read_text())
    stock = next(r for r in data["rows"] if r["method"] == "stock")
    stock["macs"] += 1000
    path = tmp_path / "stock.json"
    path.write_text(json.dumps(data))
    result = check(spec, "--baseline", path)
    assert result.exit_code == 1, result.output
    assert "regression: deit_t stock P=0 macs" in result.stderr
    del stock["macs"]
    data["rows"] = [r for r in data["rows"] if r["method"] != "stock"]
    path.write_text(json.dumps(data))
    result = check(spec, "--baseline", path)
    assert result.exit_code == 2 and "no row for deit_t stock P=0" in result.output


def test_only_environment_differences_that_change_the_checked_metrics_are_flagged(remeasured, tmp_path):
    spec, baseline = remeasured
    data = json.loads(baseline.read_text())
    data["env"] |= {"device_name": "Some Other CPU", "threads": 64, "cpus": 128, "python": "3.99.0"}
    other = tmp_path / "other_machine.json"
    other.write_text(json.dumps(data))
    result = check(spec, "--baseline", other, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["environment_differs"] == []  # MACs do not depend on the CPU
    assert "another" not in result.stderr
    env = {"torch": "2.14.1", "timm": "1.0.31", "device_name": "A", "threads": 2, "dtype": "float32"}
    moved = env | {"device_name": "B", "threads": 8}
    assert regress.environment_gaps(moved, env, ["macs", "tokens", "params", "overhead_macs"]) == []
    speed = regress.environment_gaps(moved, env, ["speedup"])
    assert [gap.split(":")[0] for gap in speed] == ["device_name", "threads"]
    upgraded = regress.environment_gaps(env | {"timm": "1.1.0"}, env, ["macs", "params"])
    assert upgraded == ["timm: baseline '1.0.31', now '1.1.0' (can change macs, params)"]


def test_a_yaml_baseline_is_read_back(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace('"0,8"', "8").replace("[gtp, tome]", "[gtp]").replace("deit_tiny_patch16_224", "deit_t")
                    .replace("[macs, tokens, params, overhead_macs]", "[tokens, params]"))
    written = check(spec, "--update-baseline", tmp_path / "b.yaml")
    assert written.exit_code == 0, written.output
    assert check(spec, "--baseline", tmp_path / "b.yaml").exit_code == 0


def test_ctrl_c_is_not_a_regression(tmp_path, monkeypatch):
    """Click's own Ctrl-C handling exits 1, which CI would read as a regression."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(regress, "measure", interrupted)
    result = check(spec, "--update-baseline", tmp_path / "b.json")
    assert result.exit_code == 130 and "interrupted" in result.output


def test_a_30_percent_lower_speedup_fails_and_a_higher_one_passes():
    key = ("m", "gtp", 8)
    assert regress.judge(key, "speedup", 1.30, 1.30 * 0.7, 0.15)["verdict"] == "fail"
    assert regress.judge(key, "speedup", 1.30, 1.30 * 0.9, 0.15)["verdict"] == "pass"
    assert regress.judge(key, "speedup", 1.30, 1.30 * 1.3, 0.15)["verdict"] == "pass"
    assert regress.judge(key, "macs", 100, 101, 0.0)["verdict"] == "fail"


def test_speedup_is_measured_against_stock_in_the_same_run(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("[macs, tokens, params, overhead_macs]", "[speedup]").replace('"0,8"', "8")
                    .replace("[gtp, tome]", "[gtp]") + "  speed: {batch_size: 2, runs: 2, warmup: 0}\n")
    baseline = tmp_path / "b.json"
    assert check(spec, "--update-baseline", baseline).exit_code == 0
    rows = json.loads(baseline.read_text())["rows"]
    stock, gtp = rows[0], rows[1]
    # timed in the same interleaved rounds: the median of the per-round ratios (docs/timing.md)
    assert gtp["speedup"] == pytest.approx(speed.ratio(stock["round_img_s"], gtp["round_img_s"]).median, abs=2e-3)
    data = json.loads(baseline.read_text())
    data["rows"][1]["speedup"] = gtp["speedup"] * 10  # we now look 90% slower than the baseline
    baseline.write_text(json.dumps(data))
    result = check(spec, "--baseline", baseline)
    assert result.exit_code == 1 and "speedup" in result.stderr and "from the rounds' spread" in result.stderr


def test_a_baseline_from_elsewhere_is_flagged(remeasured, tmp_path):
    spec, baseline = remeasured
    data = json.loads(baseline.read_text())
    data["env"]["torch"] = "1.0.0"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    result = check(spec, "--baseline", other, "--format", "json")
    assert result.exit_code == 0
    assert any("torch" in gap for gap in json.loads(result.stdout)["environment_differs"])


@pytest.mark.parametrize("text, key", [
    ("check:\n  modles: [deit_s]\n", "check.modles"),
    ("check:\n  models: deit_s\n", "check.models"),
    ("check:\n  models: [deit_s]\n  metrics: [gflops]\n", "gflops"),
    ("check:\n  models: [deit_s]\n  tolerances: {macs: -1}\n", "check.tolerances"),
    ("check:\n  models: [deit_s]\n  speed: {batch: 2}\n", "check.speed.batch"),
    ("check:\n  models: [deit_s]\n  P: 0..x\n", "check.P"),
    ("models: [deit_s]\n", "check"),
    ("check: [unclosed\n", "not valid YAML"),
])
def test_malformed_spec_exits_2_naming_the_key(tmp_path, text, key):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = check(spec, "--update-baseline", tmp_path / "b.json")
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output


def test_usage_errors_exit_2(measured, tmp_path):
    spec, baseline = measured
    assert check(spec).exit_code == 2
    assert check(spec, "--baseline", tmp_path / "missing.json").exit_code == 2
    (tmp_path / "bad.json").write_text("{")
    assert check(spec, "--baseline", tmp_path / "bad.json").exit_code == 2
