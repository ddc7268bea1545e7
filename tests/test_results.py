"""Nothing measured is ever lost: result files merge instead of being replaced, concurrent writers keep
every row, SIGTERM ends like Ctrl-C, and a bad output is refused before anything is measured.

Real files and real processes, on a small ViT (32x32 images, 16 tokens, 2 blocks) so each run takes seconds."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gtpcli import results
from gtpcli.measure import sweep
from gtpcli.cli import app

ROOT = Path(__file__).resolve().parent.parent
TINY = ("name: tiny\nmodel: {timm: vit_tiny_patch16_224, img_size: 32, patch_size: 8, prefix_tokens: 1, "
        "embed_dim: 32, depth: 2, num_heads: 2, num_classes: 10}\nmethod: gtp\nP: \"0,2\"\n")
runner = CliRunner()


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def profile(tiny, out, *args):
    result = runner.invoke(app, ["profile", str(tiny), "--output", str(out), *args])
    assert result.exit_code == 0, result.output
    return result


def points(path) -> list[tuple]:
    return [(r["method"], r["P"]) for r in json.loads(Path(path).read_text())["rows"]]


def gtpcli(*args, cwd) -> subprocess.Popen:
    """The real command line in a new process (the working tree's gtpcli, not an installed copy)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}  # see conftest.py
    return subprocess.Popen([sys.executable, "-m", "gtpcli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_rerun_without_resume_adds_and_updates_and_keeps_the_rest(tiny, tmp_path):
    out = tmp_path / "out.json"
    profile(tiny, out, "--P", "0,2,4,6", "--method", "gtp,tome", "--no-speed")
    assert len(points(out)) == 9
    again = profile(tiny, out, "--P", "2", "--no-speed", "--format", "json")
    assert [(r["method"], r["P"]) for r in json.loads(again.stdout)["rows"]] == [("stock", 0), ("gtp", 2)]
    assert points(out) == [("stock", 0)] + [(m, P) for m in ("gtp", "tome") for P in (0, 2, 4, 6)]  # was 2 rows
    assert "2 points (2 measured again); kept 7 other points already there (9 in all)" in again.stderr
    new = profile(tiny, out, "--P", "7", "--no-speed")
    assert "1 new, 1 measured again" in new.stderr and len(points(out)) == 10


def test_resume_of_a_few_points_keeps_every_other_point(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    profile(tiny, out, "--P", "0..6", "--no-speed")
    measured = []
    real = sweep.measure_point
    monkeypatch.setattr(sweep, "measure_point", lambda *a, **k: measured.append(a[2:4]) or real(*a, **k))
    resumed = profile(tiny, out, "--P", "0..2", "--no-speed", "--resume")
    assert measured == []
    assert len(points(out)) == 8  # was 4: the resumed run rewrote the file with its own points only
    assert "4 resumed" in resumed.stderr and "kept 4 other points" in resumed.stderr


def test_a_run_that_skips_a_measurement_does_not_erase_it(tiny, tmp_path):
    out = tmp_path / "out.json"
    profile(tiny, out, "--P", "2", "--runs", "1", "--warmup", "0", "--batch-size", "1", "--no-flops")
    before = {(r["method"], r["P"]): r for r in json.loads(out.read_text())["rows"]}
    assert before[("gtp", 2)]["img_s"] > 0 and before[("gtp", 2)]["macs"] is None
    assert before[("gtp", 2)]["runs"] == 1  # --runs 1 times one batch, not "and at least 6 s"
    profile(tiny, out, "--P", "2", "--no-speed", "--batch-size", "1")
    after = {(r["method"], r["P"]): r for r in json.loads(out.read_text())["rows"]}
    assert after[("gtp", 2)]["img_s"] == before[("gtp", 2)]["img_s"]  # kept
    assert after[("gtp", 2)]["macs"] > 0                                # added


def test_different_hyperparameters_are_different_points(tiny, tmp_path):
    out = tmp_path / "out.json"
    profile(tiny, out, "--P", "2", "--no-speed")
    profile(tiny, out, "--P", "2", "--no-speed", "--alpha", "0.5")
    alphas = sorted(r["hparams"].get("alpha", 0.1) for r in json.loads(out.read_text())["rows"] if r["method"] == "gtp")
    assert alphas == [0.1, 0.5]


def test_a_profile_P_list_is_a_list_of_points(tmp_path):
    listed = tmp_path / "listed.yaml"
    listed.write_text(TINY.replace('P: "0,2"', "P: [0, 4]"))
    out = tmp_path / "out.json"
    profile(listed, out, "--no-speed")
    assert points(out) == [("stock", 0), ("gtp", 0), ("gtp", 4)]


def _writer(path: str, name: str, saves: int) -> None:
    store = results.ResultFile(Path(path), {"model": "m", "env": {}})
    store.open()
    rows = []
    for P in range(saves):
        rows.append({"model": "m", "method": name, "P": P, "hparams": {}})
        store.save(rows)


def test_concurrent_writers_never_lose_a_row(tmp_path):
    out = tmp_path / "out.json"
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    writers = [context.Process(target=_writer, args=(str(out), f"w{i}", 25)) for i in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0  # a shared FILE.tmp made one writer crash
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["method"], r["P"]) for r in rows) == sorted((f"w{i}", P) for i in range(4) for P in range(25))
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def test_two_real_sweeps_into_one_file_keep_both(tiny, tmp_path):
    out = tmp_path / "out.json"
    runs = [gtpcli("profile", tiny, "--method", method, "--P", "0,2,4,6", "--no-speed", "--output", out, cwd=tmp_path)
            for method in ("gtp", "tome")]
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        assert "saved 5 points" in stderr
    assert sorted(points(out)) == sorted([("stock", 0)] + [(m, P) for m in ("gtp", "tome") for P in (0, 2, 4, 6)])


def test_sigterm_ends_like_ctrl_c(tiny, tmp_path):
    """A real `gtpcli profile`, terminated after its first saved point: the finished points are in the file
    and stderr says so in one line (exit 128 + SIGTERM)."""
    out = tmp_path / "out.json"
    run = gtpcli("profile", tiny, "--P", "0..6", "--warmup", "0", "--batch-size", "1", "--output", out,
                 cwd=tmp_path)  # without --runs each point times at least 6 s on CPU: plenty of time to stop it
    deadline = time.monotonic() + 240
    while not (out.exists() and json.loads(out.read_text())["rows"]):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM:") and "--resume" in lines[0], stderr
    saved = points(out)
    assert 1 <= len(saved) < 8 and saved[0] == ("stock", 0)
    assert f"{len(saved)} finished points saved" in lines[0]


def test_ctrl_c_says_what_was_kept(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    profile(tiny, out, "--P", "4,6", "--no-speed")
    real = sweep.measure_point
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[2:4])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "measure_point", interrupted)
    result = runner.invoke(app, ["profile", str(tiny), "--P", "0,2", "--no-speed", "--output", str(out)])
    assert result.exit_code == 130
    assert "1 finished points saved" in result.output and "(2 other points kept)" in result.output
    assert sorted(points(out)) == [("gtp", 4), ("gtp", 6), ("stock", 0)]


@pytest.mark.parametrize("output, message", [
    ("x.txt", "'.txt'"),
    ("/sys/gtpcli-results/x.json", "cannot write in /sys"),
])
def test_a_bad_output_is_refused_before_anything_is_measured(tiny, tmp_path, monkeypatch, output, message):
    monkeypatch.setattr(sweep, "build", lambda cfg: pytest.fail("measured before refusing the output"))
    result = runner.invoke(app, ["profile", str(tiny), "--output", str(output)])
    assert result.exit_code == 2 and message in result.output


def test_merge_rules():
    old = [{"model": "m", "method": "stock", "P": 0, "img_s": 5.0},
           {"model": "m", "method": "gtp", "P": 4, "hparams": {"alpha": 0.1}, "img_s": 7.0, "acc": 80.0}]
    mine = [{"model": "m", "method": "gtp", "P": 4, "hparams": {"alpha": 0.1}, "img_s": None, "macs": 3},
            {"model": "m", "method": "gtp", "P": 2, "hparams": {"alpha": 0.1}, "img_s": 6.0}]
    merged = results.merge_rows(old, mine)
    assert [(r["method"], r["P"]) for r in merged] == [("stock", 0), ("gtp", 2), ("gtp", 4)]
    assert merged[2] == {"model": "m", "method": "gtp", "P": 4, "hparams": {"alpha": 0.1}, "img_s": 7.0,
                         "acc": 80.0, "macs": 3}
    assert results.setting_gap({"env": {"amp": None}}, {"env": {"amp": "bfloat16"}}) == "amp None (this run: 'bfloat16')"
    assert results.setting_gap({"env": {"batch_size": 16}}, {"env": {"batch_size": 32}}) is None  # a row axis now
    at = {"model": "m", "method": "stock", "P": 0}
    assert len(results.merge_rows([{**at, "batch_size": 16, "img_s": 5.0}], [{**at, "batch_size": 32, "img_s": 9.0}])) == 2
    assert results.setting_gap({"data": None, "env": {}}, {"data": "/x", "env": {}}) is None


# --- default result files: named by the setting, so two default runs never collide ------------------------

def tiny_weights(path: Path, seed: int) -> Path:
    """A checkpoint of the tiny profile's architecture (random weights of its own)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def default_run(tiny, *args) -> tuple[Path, str]:
    """`gtpcli profile` without --output: the result file it names on stderr, and stderr."""
    result = runner.invoke(app, ["profile", str(tiny), "--P", "0,2", "--no-speed", *map(str, args)])
    assert result.exit_code == 0, result.output
    [line] = [text for text in result.stderr.splitlines() if text.startswith("saved ")]
    return Path(line.rsplit(" in ", 1)[1].split(" (random weights")[0]), result.stderr


def test_default_runs_of_different_settings_each_keep_their_points(tiny, tmp_path, monkeypatch):
    """The issue's case: a run with random weights, then the same with --checkpoint, both without --output
    (the second was refused). Weights, dtype and autocast each get their own file; an image size is a row
    axis, so it adds points to the file of its setting."""
    monkeypatch.chdir(tmp_path)
    tiny_weights(tmp_path / "w.pth", seed=1)
    settings = {"random": [], "weights": ["--checkpoint", "w.pth"], "bf16": ["--dtype", "bfloat16"],
                "amp": ["--amp", "bf16"]}
    found = {name: default_run(tiny, *args)[0] for name, args in settings.items()}
    assert found == {"random": Path("gtpcli-results/tiny.json"), "weights": Path("gtpcli-results/tiny-w.json"),
                     "bf16": Path("gtpcli-results/tiny-bfloat16.json"),
                     "amp": Path("gtpcli-results/tiny-amp-bfloat16.json")}
    for name, path in found.items():
        data = json.loads(path.read_text())
        assert points(path) == [("stock", 0), ("gtp", 0), ("gtp", 2)], name
        assert results.setting_gap(data, data) is None
    assert json.loads(found["weights"].read_text())["weights"] == "w.pth"
    assert json.loads(found["bf16"].read_text())["env"]["dtype"] == "bfloat16"
    assert json.loads(found["amp"].read_text())["env"]["amp"] == "bfloat16"
    path, _ = default_run(tiny, "--img-size", "48")  # another image size: more points of the random setting
    assert path == found["random"]
    sizes = sorted({row["img_size"] for row in json.loads(path.read_text())["rows"]})
    assert sizes == [32, 48] and len(points(path)) == 6
    assert sorted(p.name for p in (tmp_path / "gtpcli-results").iterdir()) == sorted(p.name for p in found.values())


def test_resume_finds_the_default_file_of_its_setting_again(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_weights(tmp_path / "w.pth", seed=1)
    for args in ([], ["--checkpoint", "w.pth"], ["--dtype", "bfloat16"]):
        first, _ = default_run(tiny, *args)
        again, stderr = default_run(tiny, *args, "--resume")
        assert again == first and "3 points (3 resumed)" in stderr, (args, stderr)
        assert len(points(first)) == 3


def test_an_explicit_output_of_another_setting_is_still_refused_in_one_line(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_weights(tmp_path / "w.pth", seed=1)
    path, _ = default_run(tiny)
    before = path.read_text()
    result = runner.invoke(app, ["profile", str(tiny), "--P", "0,2", "--no-speed", "--checkpoint", "w.pth",
                                 "--output", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [text for text in result.stderr.splitlines() if text.strip()]
    assert line.startswith(f"error: --output {path} holds 3 points measured with weights 'random weights'"), line
    assert "give another --output" in line
    assert path.read_text() == before


def test_a_checkpoint_of_the_same_name_elsewhere_gets_a_file_of_its_own(tiny, tmp_path, monkeypatch):
    """Names tell settings apart in words; where the words are the same (two w.pth), a short hash of the
    whole setting is added, and each setting finds its own file again."""
    monkeypatch.chdir(tmp_path)
    one, two = tiny_weights(tmp_path / "a" / "w.pth", seed=1), tiny_weights(tmp_path / "b" / "w.pth", seed=2)
    first, _ = default_run(tiny, "--checkpoint", one)
    second, _ = default_run(tiny, "--checkpoint", two)
    assert first.name == "tiny-w.json" and second.name.startswith("tiny-w-") and second != first
    assert json.loads(second.read_text())["weights"] == str(two)
    assert default_run(tiny, "--checkpoint", two, "--resume")[0] == second
    assert default_run(tiny, "--checkpoint", one, "--resume")[0] == first


def test_a_default_file_written_before_the_names_still_resumes(tiny, tmp_path, monkeypatch):
    """Before, every setting's default file was gtpcli-results/MODEL.json: one that holds this run's setting
    is found again; a run of another setting no longer collides with it."""
    monkeypatch.chdir(tmp_path)
    tiny_weights(tmp_path / "w.pth", seed=1)
    legacy = Path("gtpcli-results/tiny.json")
    profile(tiny, legacy, "--P", "0,2", "--no-speed", "--checkpoint", "w.pth")  # as the old default wrote it
    path, stderr = default_run(tiny, "--checkpoint", "w.pth", "--resume")
    assert path == legacy and "3 points (3 resumed)" in stderr
    other, _ = default_run(tiny)  # random weights: its plain name is taken by the old file
    assert other.name.startswith("tiny-") and other != legacy
    assert json.loads(legacy.read_text())["weights"] == "w.pth" and len(points(legacy)) == 3
    assert json.loads(other.read_text())["weights"] == "random weights"
