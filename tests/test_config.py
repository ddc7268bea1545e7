"""The run configuration: flags, YAML and result files give one RunConfig; a result file replays its run."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gtpcli.cli import app
from gtpcli.config.run import RunConfig, load
from gtpcli.errors import GtpcliError

runner = CliRunner()
TINY = "deit_tiny_patch16_224"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def points(path: Path) -> list[tuple]:
    return [(r["model"], r["method"], r["P"], json.dumps(r["hparams"], sort_keys=True), r.get("macs"), r["tokens"])
            for r in json.loads(path.read_text())["rows"]]


def test_a_result_file_replays_its_run(tmp_path):
    first = invoke("profile", TINY, "--P", "0,6", "--method", "gtp,tome", "--alpha", "0.3", "--hp", "tome.prop_attn=false",
                   "--no-speed", "--output", tmp_path / "a.json")
    assert first.exit_code == 0, first.output
    recorded = json.loads((tmp_path / "a.json").read_text())["config"]
    assert recorded["P"] == "0,6" and str(recorded["alpha"]) == "0.3" and recorded["speed"] is False
    again = invoke("profile", "--config", tmp_path / "a.json", "--output", tmp_path / "b.json")
    assert again.exit_code == 0, again.output
    assert points(tmp_path / "b.json") == points(tmp_path / "a.json")
    assert len(points(tmp_path / "a.json")) == 5
    assert json.loads((tmp_path / "b.json").read_text())["config"] == recorded


def test_yaml_config_and_flags_on_top(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {TINY}\nP: 8\nmethod: tome\nspeed: false\nflops: false\n")
    result = invoke("profile", "--config", run, "--format", "json", "--output", tmp_path / "o.json")
    assert result.exit_code == 0, result.output
    assert [(r["method"], r["P"]) for r in json.loads(result.stdout)["rows"]] == [("stock", 0), ("tome", 8)]
    result = invoke("profile", "--config", run, "--P", "2,4", "--format", "json", "--output", tmp_path / "o.json")
    assert [(r["method"], r["P"]) for r in json.loads(result.stdout)["rows"]] == [("stock", 0), ("tome", 2), ("tome", 4)]
    assert all(r["macs"] is None for r in json.loads(result.stdout)["rows"])  # flops: false from the file stands


def test_trace_takes_the_same_config(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {TINY}\nP: 4\nmethod: tome\nbatch_size: 1\nsteps: 1\n")
    result = invoke("trace", "--config", run, "--out", tmp_path / "t", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["method"], data["P"], data["batch_size"]) == ("tome", 4, 1)
    assert data["config"]["steps"] == 1
    run.write_text(f"model: {TINY}\nP: 0..8\n")
    result = invoke("trace", "--config", run, "--out", tmp_path / "t")
    assert result.exit_code == 2 and "trace takes one value" in result.output


@pytest.mark.parametrize("text, message", [
    ("bogus: 1\n", "unknown option 'bogus'"),
    ("speed: 3\n", "option 'speed' must be true or false, got 3"),
    ("batch_size: true\n", "option 'batch_size' must be text (or integers), got True"),
    ("batch_size: 2.5\n", "option 'batch_size' must be text (or integers), got 2.5"),
    ("seed: 1.5\n", "option 'seed' must be an integer, got 1.5"),
    ("hp: tcvit.K=4\n", "option 'hp' must be a list of strings"),
    ("- 1\n- 2\n", "expected a mapping of options"),
    ("rows: []\n", "without a recorded 'config'"),
])
def test_bad_config_is_one_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    result = invoke("profile", "--config", path, "--no-speed", "--output", tmp_path / "o.json")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.json").exists()


def test_config_types_and_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("P: 8\nalpha: 1\ncheckpoint: w.pth\nbatch_size: [1, 8, 32]\n")
    cfg = RunConfig().merged(load(path)).merged({"alpha": 0.5})
    assert (cfg.P, cfg.alpha, cfg.checkpoint, cfg.batch_size) == ("8", 0.5, Path("w.pth"), "1,8,32")
    assert cfg.gtp_hparams == {"alpha": 0.5}
    assert cfg.record()["checkpoint"] == "w.pth" and "output" not in cfg.record()
    with pytest.raises(GtpcliError, match="must be true or false"):
        RunConfig().merged({"strict": "yes"})
