"""`gtpcli compare` (gtpcli/commands/compare.py): the plan (per target, every registered method at its solved
setting and the resolution baseline, as a table and as JSON), and the plan measured on a tiny timm ViT with
random weights: stock and every planned row per target, counted MACs, interleaved rounds, the result file,
--resume. Bad targets are one line each, bad input one line and exit 2."""

from __future__ import annotations

import io
import json

import pytest
import timm
import torch
from rich.console import Console
from typer.testing import CliRunner

from gtpcli import methods
from gtpcli.cli import app
from gtpcli.commands.compare import RESOLUTION, plan, plan_speedups, retarget
from gtpcli.cost.analytic import Arch
from gtpcli.cost.solve import Miss, resolution
from gtpcli.methods.solve import candidates, solve_all

DEIT_S = Arch(N=197, C=384, L=12, H=6)
MODEL = "deit_small_patch16_224"  # a timm name: its Arch is read on the meta device, no weights


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_plan_holds_every_solvable_method_and_the_resolution_baseline_per_target():
    result = plan("deit_s", DEIT_S, [3.5, 3.0, 2.6])
    solvable = [name for name, card in methods.REGISTRY.items() if card.matched_cost_knob() is not None]
    for target in (3.5, 3.0, 2.6):
        rows = [r for r in result["rows"] if r["target_gmacs"] == target]
        assert [r["method"] for r in rows] == solvable + [RESOLUTION]
        for row in rows[:-1]:
            assert row["gmacs"] * 1e9 == solve_all(DEIT_S, round(target * 1e9))[row["method"]].macs
        assert rows[-1]["setting"]["img_size"] % 16 == 0
        assert all(abs(r["gap"] - (r["gmacs"] / target - 1)) < 1e-12 for r in rows)
    assert {s["method"] for s in result["skipped"]} == set(methods.REGISTRY) - set(solvable)
    assert result["measured"] is False and result["stock_gmacs"] == pytest.approx(4.608338304)


def test_dry_run_prints_the_cost_line_and_one_table_per_target():
    result = cli("compare", MODEL, "--gmacs", "3.5,3.0,2.6", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "3.5 GMACs" in result.stdout and "at 3 GMACs" in result.stdout and "2.6 GMACs" in result.stdout
    assert "P=11" in result.stdout and "keep_rate=0.8" in result.stdout and "img_size=192" in result.stdout
    assert "runs to measure (3 targets" in result.stderr
    unsolvable = [c.title for c in methods.REGISTRY.values() if c.matched_cost_knob() is None]
    for title in unsolvable:  # said once, not once per target
        assert result.stdout.count(f"skipped: {title}:") == 1


def test_the_plan_as_json_and_in_a_file(tmp_path):
    out = tmp_path / "plan.json"
    result = cli("compare", MODEL, "--gmacs", "3.0", "--method", "gtp,evit", "--dry-run", "--format", "json",
                 "--output", out)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found == json.loads(out.read_text())
    assert [(r["method"], r["setting"]) for r in found["rows"]] == [
        ("gtp", {"P": 11}), ("evit", {"keep_rate": 0.69}), (RESOLUTION, {"img_size": 176})]


def test_targets_out_of_reach_are_one_line_each_and_the_rest_is_planned():
    """5.0 is above the stock 4.608: every method and the resolution baseline say so; 1.0 is below GTP's
    cheapest setting, but ToMe and the resolution baseline reach it."""
    result = cli("compare", MODEL, "--gmacs", "5.0,1.0", "--method", "gtp,tome", "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [(r["target_gmacs"], r["method"]) for r in found["rows"]] == [(1.0, "tome"), (1.0, RESOLUTION)]
    reasons = [(s["target_gmacs"], s["method"], s["reason"]) for s in found["skipped"]]
    assert [(t, m) for t, m, _ in reasons] == [(5.0, "gtp"), (5.0, "tome"), (5.0, RESOLUTION), (1.0, "gtp")]
    assert all("\n" not in r for _, _, r in reasons) and "above the stock model's 4.608" in reasons[0][2]


@pytest.mark.parametrize("args,message", [
    (["--gmacs", "3.5", "--output", "out.csv"], "must be .json or .yaml"),
    (["--gmacs", "3.5", "--rounds", "4", "--runs", "2"], "give at least 4 timed batches"),
    (["--gmacs", "9,12"], "nothing to compare: no method reaches 9 GMACs"),
    (["--gmacs", "0", "--dry-run"], "every target must be positive"),
    (["--gmacs", "3,3", "--dry-run"], "names a target twice"),
    (["--gmacs", "three", "--dry-run"], "cannot read 'three'"),
    (["--gmacs", "3", "--method", "nope", "--dry-run"], "unknown method 'nope'"),
    (["--gmacs", "3", "--hp", "evit.keep_rate=2", "--dry-run"], "keep_rate must be <= 1"),
    (["--gmacs", "3", "--hp", "evit.keep_rate=0.5", "--dry-run"], "compare solves keep_rate for each target"),
    (["--gmacs", "3.5", "--limit", "5"], "--limit N needs --data DIR"),
    (["--gmacs", "3.5", "--fidelity"], "--fidelity needs --data DIR"),
    (["--gmacs", "3.5", "--data", "no-such-folder"], "--data: not a directory"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = cli("compare", MODEL, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- the plan measured, on a tiny ViT (random weights, a few seconds) ------------------------------------------

TINY = {"timm": "vit_tiny_patch16_224", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 12,
        "num_heads": 2, "num_classes": 10}
TARGETS = "1,0.01,0.007"  # 1 GMACs is above the tiny model's 0.0135: one line, and the two others run
FAST = ("--method", "gtp,random", "--rounds", 2, "--runs", 2, "--batch-size", 2, "--device", "cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A profile of a 12-block ViT on 64 px (8 px patches, width 32), its plan, and one measured comparison."""
    folder = tmp_path_factory.mktemp("compare")
    profile = folder / "tiny.yaml"
    profile.write_text("name: tiny\nmodel: {" + ", ".join(f"{k}: {v}" for k, v in TINY.items())
                       + ", prefix_tokens: 1}\nmethod: gtp\nP: \"0,2\"\n")
    planned = cli("compare", profile, "--gmacs", TARGETS, "--method", "gtp,random", "--dry-run", "--format", "json")
    assert planned.exit_code == 0, planned.output
    out = folder / "tiny-compare.json"
    measured = cli("compare", profile, "--gmacs", TARGETS, *FAST, "--output", out, "--format", "json")
    assert measured.exit_code == 0, measured.output
    return {"profile": profile, "plan": json.loads(planned.stdout), "out": out, "stdout": measured.stdout,
            "stderr": measured.stderr, "file": json.loads(out.read_text())}


def test_each_target_measures_the_stock_model_and_every_planned_row(tiny):
    plan_rows, rows = tiny["plan"]["rows"], tiny["file"]["rows"]
    for target in (0.01, 0.007):
        planned = [(r["method"], r["setting"]) for r in plan_rows if r["target_gmacs"] == target]
        assert [m for m, _ in planned] == ["gtp", "random", RESOLUTION]
        found = [(r["method"], r["setting"]) for r in rows if r["target_gmacs"] == target]
        assert found == [("stock", {})] + planned
    assert {r["target_gmacs"] for r in rows} == {0.01, 0.007}  # nothing at the unreachable 1 GMACs
    assert json.loads(tiny["stdout"])["rows"] == rows


def test_counted_gmacs_match_the_cost_model_and_the_plan(tiny):
    planned = {(r["target_gmacs"], r["method"]): r for r in tiny["plan"]["rows"]}
    for row in tiny["file"]["rows"]:
        assert abs(row["macs"] - row["analytic_macs"]) <= 0.01 * row["analytic_macs"], row["method"]
        assert row["gmacs"] == row["macs"] / 1e9 and row["analytic_gmacs"] == row["analytic_macs"] / 1e9
        if row["method"] != "stock":
            assert row["analytic_gmacs"] == pytest.approx(planned[(row["target_gmacs"], row["method"])]["gmacs"])


def test_the_resolution_row_runs_the_stock_model_at_the_planned_size(tiny):
    """Its counted MACs are those of the stock model built at that size by timm itself, counted on its own."""
    from gtpcli.measure.flops import count_macs

    for row in (r for r in tiny["file"]["rows"] if r["method"] == RESOLUTION):
        size = row["setting"]["img_size"]
        assert row["img_size"] == size < TINY["img_size"] and size % TINY["patch_size"] == 0
        arch = {key: value for key, value in TINY.items() if key != "timm"}
        direct = timm.create_model(TINY["timm"], pretrained=False, **(arch | {"img_size": size}))
        assert row["macs"] == count_macs(direct.eval(), torch.randn(1, 3, size, size)).macs


def test_every_row_is_timed_with_the_stock_model_in_the_same_rounds(tiny):
    for target in (0.01, 0.007):
        rows = [r for r in tiny["file"]["rows"] if r["target_gmacs"] == target]
        stock = rows[0]
        for row in rows:
            assert row["rounds"] == 2 and len(row["round_img_s"]) == 2 and row["img_s"] > 0
            assert row["speedup_q1"] <= row["speedup"] <= row["speedup_q3"]
            assert isinstance(row["rounds_disagree"], bool) and row["latency_ms_p50"] > 0
            assert row["ideal_speedup"] == round(stock["macs"] / row["macs"], 3)
            assert row["share_of_ideal"] == round(row["speedup"] / (stock["macs"] / row["macs"]), 3)
        assert stock["speedup"] == 1.0 and stock["img_size"] == TINY["img_size"]


def test_every_row_says_where_its_ideal_went_from_its_own_macs(tiny):
    """Each row's breakdown: parts adding up to its gap exactly, the ideal from the row's counted MACs (the
    ideal_speedup column's), and the stage MAC ratios of its own token schedule or input size, worked out here
    from the cost model on an Arch written by hand."""
    from dataclasses import replace

    from gtpcli.cost.analytic import stage_macs

    arch = Arch(N=65, C=32, L=12, H=2, prefix=1, patch_size=8, num_classes=10)  # 64 px in 8 px patches
    stock_stages = stage_macs(arch, 0)
    assert tiny["file"]["breakdown"] == {"rounds": 3, "steps": 1, "stock": "shared by the target's rows"}
    for target in (0.01, 0.007):
        stock, *rows = [r for r in tiny["file"]["rows"] if r["target_gmacs"] == target]
        assert "ideal_gap" not in stock
        assert len({row["ideal_gap"]["stock_ms"] for row in rows}) == 1  # one set of stock passes serves them all
        for row in rows:
            split = row["ideal_gap"]
            parts = {name: part["ms"] for name, part in split["parts"].items()}
            assert list(parts) == ["own_stages", "attention", "mlp", "rest"]
            assert sum(parts.values()) == pytest.approx(split["gap_ms"], abs=1e-9)
            assert split["ideal_ms"] + split["gap_ms"] == pytest.approx(split["measured_ms"], abs=2e-3)
            assert split["ideal_speedup"] == pytest.approx(stock["macs"] / row["macs"], abs=1e-4)
            assert split["ideal_speedup"] == pytest.approx(row["ideal_speedup"], abs=5e-4)
            if row["method"] == RESOLUTION:  # the stock model at its own size: fewer tokens, no stage of its own
                side = row["setting"]["img_size"] // TINY["patch_size"]
                own = stage_macs(replace(arch, N=side * side + 1), 0)
                assert parts["own_stages"] == 0
            else:
                own = stage_macs(arch, row["P"])
            assert split["mac_ratios_from"] == "stages"
            assert split["mac_ratios"] == {stage: round(own[stage] / stock_stages[stage], 4) for stage in own}
        assert next(r for r in rows if r["method"] == "gtp")["ideal_gap"]["parts"]["own_stages"]["ms"] > 0


def test_no_breakdown_then_resume_measures_only_the_breakdowns(tiny, tmp_path):
    out = tmp_path / "plain.json"
    args = ("compare", tiny["profile"], "--gmacs", "0.007", "--method", "gtp", "--rounds", 2, "--runs", 2,
            "--batch-size", 2, "--device", "cpu", "--output", out, "--format", "json")
    plain = cli(*args, "--no-breakdown")
    assert plain.exit_code == 0, plain.output
    first = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in first] == ["stock", "gtp", RESOLUTION] and not any("ideal_gap" in r for r in first)
    assert json.loads(plain.stdout)["breakdown"]["rounds"] == 3 and "breakdowns measured" not in plain.stderr
    resumed = cli(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    rows = json.loads(out.read_text())["rows"]
    assert [{k: v for k, v in r.items() if k != "ideal_gap"} for r in rows] == first  # nothing else measured again
    assert ["ideal_gap" in r for r in rows] == [False, True, True]
    assert "(3 resumed)" in resumed.stderr and "2 breakdowns measured" in resumed.stderr


def test_resume_measures_nothing_and_keeps_every_row(tiny, tmp_path):
    again = tmp_path / "again.json"
    again.write_text(tiny["out"].read_text())
    result = cli("compare", tiny["profile"], "--gmacs", TARGETS, *FAST, "--output", again, "--resume",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(again.read_text())["rows"] == tiny["file"]["rows"]
    assert "(8 resumed)" in result.stderr


def test_the_tables_fit_80_columns_with_the_unreached_target_in_one_line(tiny):
    from gtpcli.report.compare import render_measured

    shown = io.StringIO()
    render_measured(tiny["file"], Console(file=shown, width=80, color_system=None))
    lines = shown.getvalue().splitlines()
    prose = [line for line in lines if line.startswith(("skipped:", "warning:"))]  # one line each, soft-wrapped
    assert all(len(line) <= 80 for line in lines if line not in prose)
    assert sum(line.startswith("tiny at") and "where the ideal went" not in line for line in lines) == 2
    assert "random weights" in shown.getvalue() and "interleaved rounds" in shown.getvalue()
    for header in ("img/s", "speed-up", "ideal", "of ideal"):
        assert header in shown.getvalue()
    gaps = [at for at, line in enumerate(lines) if "where the ideal went (ms per batch)" in line]
    assert len(gaps) == 2  # one per target, after its measured table
    for name in ("own stages", "attention", "MLP", "rest", "measured", "gap"):
        assert name in "\n".join(lines[gaps[0]:gaps[1]])
    about_1 = [line for line in lines if " 1 GMACs" in line]
    assert len(about_1) == 1 and about_1[0].startswith("skipped: no method reaches 1 GMACs")
    assert "above the stock model" in about_1[0]


# --- accuracy and fidelity (--data) on the digits ViT: every row on the same images, each at its own size -----

DIGITS_TARGETS = "0.011,0.008"  # of the stock 0.0153: the resolution baseline at 28 and 24 px (of 32)
DIGITS_FAST = ("--method", "gtp,random", "--rounds", 2, "--runs", 2, "--batch-size", 8, "--device", "cpu")


@pytest.fixture(scope="module")
def few(digits_trained, tmp_path_factory):
    """30 of the digits ViT's validation images, the first 3 of each class (an ImageFolder of its own)."""
    import shutil

    folder = tmp_path_factory.mktemp("few") / "few"
    for label in sorted((digits_trained / "val").iterdir()):
        (folder / label.name).mkdir(parents=True)
        for png in sorted(label.iterdir())[:3]:
            shutil.copy(png, folder / label.name / png.name)
    return folder


@pytest.fixture(scope="module")
def digits_compared(digits_trained, few, tmp_path_factory):
    """One comparison of the trained digits ViT with accuracy and fidelity on the 30 images, and its file."""
    out = tmp_path_factory.mktemp("digits-compare") / "digits-compare.json"
    result = cli("compare", digits_trained / "digits.yaml", "--gmacs", DIGITS_TARGETS, *DIGITS_FAST,
                 "--checkpoint", digits_trained / "vit.pth", "--data", few, "--fidelity", "--output", out)
    assert result.exit_code == 0, result.output
    return {"out": out, "stdout": result.stdout, "rows": json.loads(out.read_text())["rows"]}


def digits_model(root, size=None):
    """The trained digits ViT as timm builds it, at `size` through timm's own set_input_size."""
    import digits

    model = digits.create()
    model.load_state_dict(torch.load(root / "vit.pth")["state_dict"])
    if size is not None:
        model.set_input_size(img_size=(size, size))
    return model.eval()


def by_hand(files, size):
    """The eval transform of the digits ViT at `size`, written out: bilinear resize of the 32 px image to
    size x size (crop_pct 1: the centre crop takes it whole), [0, 1], then mean 0.5 and std 0.5."""
    import numpy as np
    from PIL import Image

    def one(path):
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB").resize((size, size), Image.BILINEAR))
        return (torch.from_numpy(pixels).permute(2, 0, 1).float().div(255) - 0.5) / 0.5

    return torch.stack([one(path) for path in files])


def images_of(folder):
    """Every image of an ImageFolder of digits in timm's order (natural sort: class folders 0..9, files named
    by their number in scikit-learn's digits), with its label."""
    files = sorted(folder.glob("*/*.png"), key=lambda path: (int(path.parent.name), int(path.stem)))
    return files, torch.tensor([int(path.parent.name) for path in files])


@pytest.mark.slow
def test_every_row_has_accuracy_and_stock_is_profiles_stock(digits_compared, digits_trained, few, tmp_path):
    rows = digits_compared["rows"]
    assert [r["method"] for r in rows] == ["stock", "gtp", "random", RESOLUTION] * 2
    assert all(r["acc"] is not None and r["acc_n"] == 30 and r["fidelity_top1"] is not None for r in rows)
    assert [r["img_size"] for r in rows if r["method"] == RESOLUTION] == [28, 24]
    profiled = cli("profile", digits_trained / "digits.yaml", "--checkpoint", digits_trained / "vit.pth", "--data", few,
                   "--P", 0, "--no-speed", "--batch-size", 8, "--device", "cpu", "--output", tmp_path / "p.json",
                   "--format", "json")
    assert profiled.exit_code == 0, profiled.output
    stock = json.loads(profiled.stdout)["rows"][0]
    assert stock["method"] == "stock" and stock["acc"] >= 80
    assert [r["acc"] for r in rows if r["method"] == "stock"] == [stock["acc"]] * 2
    assert "top-1 (%)" in digits_compared["stdout"] and "Data: few (30 images)" in digits_compared["stdout"]


@pytest.mark.slow
def test_the_resolution_rows_accuracy_is_timms_model_at_that_size_on_images_resized_by_hand(digits_compared,
                                                                                            digits_trained, few):
    files, labels = images_of(few)
    for row in (r for r in digits_compared["rows"] if r["method"] == RESOLUTION):
        size = row["img_size"]
        with torch.no_grad():
            predicted = digits_model(digits_trained, size)(by_hand(files, size)).argmax(1)
        assert row["acc"] == round(100 * int((predicted == labels).sum()) / len(files), 2), size


@pytest.mark.slow
def test_the_resolution_rows_fidelity_is_against_the_full_size_stock_model(digits_compared, digits_trained, few):
    """Agreement and KL(full || resized) computed here on the 30 images: the resized copy is no stock model
    (its agreement is not 100 % by default), and it is compared with the stock model at 32 px."""
    files, _ = images_of(few)
    with torch.no_grad():
        full = digits_model(digits_trained)(by_hand(files, 32)).log_softmax(1)
    for row in (r for r in digits_compared["rows"] if r["method"] == RESOLUTION):
        with torch.no_grad():
            small = digits_model(digits_trained, row["img_size"])(by_hand(files, row["img_size"])).log_softmax(1)
        agree = int((small.argmax(1) == full.argmax(1)).sum())
        kl = float((full.exp() * (full - small)).sum()) / len(files)
        assert row["fidelity_top1"] == round(100 * agree / len(files), 2)
        assert row["fidelity_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6) and row["fidelity_kl"] > 0
    stock = [r for r in digits_compared["rows"] if r["method"] == "stock"]
    assert all(r["fidelity_top1"] == 100.0 and r["fidelity_kl"] == 0.0 for r in stock)


@pytest.mark.slow
def test_the_loaders_of_each_size_present_the_same_images_in_the_same_order(digits_trained, few):
    """With --limit 12 of 30 in batches of 5, and as each of two torchrun processes sees them: the same
    files in the same batches at 32, 28 and 24 px, the pixels those of the transform written out by hand."""
    from gtpcli.distributed import World
    from gtpcli.measure import accuracy, speed, sweep

    cfg = sweep.SweepConfig(model="digits", timm_name="digits", profile=None, methods=[], Ps=[],
                            timing=speed.Timing(batch_size=5), data=few, limit=12)
    model = digits_model(digits_trained)
    loaders = sweep.DataLoaders(model, cfg)
    order = accuracy.image_order(loaders((32, 32)))
    assert [len(files) for _, files in order] == [5, 5, 2] and [k for k, _ in order] == [0, 1, 2]
    chosen = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:12].sort().values.tolist()
    assert [f for _, files in order for f in files] == [str(images_of(few)[0][i]) for i in chosen]
    for size in (28, 24):
        loader = loaders((size, size))
        assert accuracy.image_order(loader) == order
        for (images, _, _), (_, files) in zip(loader, order):
            assert images.shape[-1] == size and torch.allclose(images, by_hand(files, size), atol=1e-6)
    for rank in (0, 1):  # what each process builds (make: no collective, so no process group needed here)
        share = sweep.DataLoaders(model, cfg, World(rank=rank, size=2))
        assert accuracy.image_order(share.make((24, 24))) == accuracy.image_order(share.make((32, 32))) == order[rank::2]


@pytest.mark.slow
def test_resume_with_data_measures_nothing_and_the_plot_draws_the_comparison(digits_compared, digits_trained, few,
                                                                              tmp_path):
    again = tmp_path / "again.json"
    again.write_text(digits_compared["out"].read_text())
    result = cli("compare", digits_trained / "digits.yaml", "--gmacs", DIGITS_TARGETS, *DIGITS_FAST,
                 "--checkpoint", digits_trained / "vit.pth", "--data", few, "--fidelity", "--output", again, "--resume")
    assert result.exit_code == 0, result.output
    assert "(8 resumed)" in result.stderr and json.loads(again.read_text())["rows"] == digits_compared["rows"]
    figure = tmp_path / "fig.json"
    assert cli("plot", again, "--kind", "tradeoff", "-o", figure).exit_code == 0
    speed = {s["label"].split(" (")[0]: s for s in json.loads(figure.read_text())["panels"][0]["series"]}
    resolution = sorted((r for r in digits_compared["rows"] if r["method"] == RESOLUTION), key=lambda r: r["gmacs"])
    assert speed["Resolution baseline"]["y"] == [r["acc"] for r in resolution]
    assert speed["Resolution baseline"]["point_labels"] == ["0.008 GMACs", "0.011 GMACs"]
    assert {"GTP", "Random baseline", "stock timm"} <= set(speed)


def test_report_folder_holds_the_page_the_data_and_replays_the_command(tiny, tmp_path):
    """--report, here on a resumed comparison (nothing measured again): README.md with every condition and one
    table per measured target, the rows as JSON (those of the result file), and the command that made it."""
    again, folder = tmp_path / "again.json", tmp_path / "report"
    again.write_text(tiny["out"].read_text())
    result = cli("compare", tiny["profile"], "--gmacs", TARGETS, *FAST, "--output", again, "--resume",
                 "--report", folder)
    assert result.exit_code == 0, result.output
    assert f"report written: {folder / 'README.md'}" in result.stderr
    page = (folder / "README.md").read_text()
    assert page.startswith(f"# gtpcli compare: tiny at {TARGETS.replace(',', ', ')} GMACs")
    assert json.loads((folder / "compare.json").read_text())["rows"] == tiny["file"]["rows"]
    command = next(line for line in page.splitlines() if line.startswith("- command:"))
    for word in ("gtpcli compare", "--gmacs 1,0.01,0.007", "--method gtp,random", "--rounds 2", "--resume",
                 f"--report {folder}"):
        assert word in command, command
    for condition in ("random weights", "data: none", "torch threads", f"torch {torch.__version__}",
                      "2 interleaved rounds", "batch 2", "counted by fvcore"):
        assert condition in page, condition
    tables = [line for line in page.splitlines() if line.startswith("| ")]
    assert sum(line.startswith("| method | setting") for line in tables) == 2  # one table per measured target
    assert sum(line.startswith("| method | ideal | measured") for line in tables) == 2  # and where its ideal went
    assert sum(line.startswith("| resolution") for line in tables) == 4
    assert "skipped: no method reaches 1 GMACs" in page
    assert "![gap](gap.png)" in page and (folder / "gap.png").is_file()  # the rows have their breakdowns


@pytest.mark.parametrize("extra", [["--dry-run"], []])
def test_report_refuses_a_folder_of_other_files_and_dry_run_before_measuring(tiny, tmp_path, extra):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    args = ["--report", tmp_path / "new"] if extra else ["--report", folder]
    result = cli("compare", tiny["profile"], "--gmacs", TARGETS, *FAST, *extra, *args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert ("--dry-run" if extra else "not a gtpcli compare report") in result.output
    assert (folder / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_bins_paper_targets_the_papers_bins_with_its_figures_and_settings_beside():
    """deit_s: Table 2's bins; each method of the table gets its published row at that bin (the paper's
    setting, which may differ from the solved one: Evo-ViT's 0.7 at 3.5 GMACs is solved as 0.65), the
    baselines and TC-ViT none."""
    from gtpcli.reference.bins import TABLES

    result = cli("compare", "deit_s", "--bins", "paper", "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    planned = json.loads(result.stdout)
    table = TABLES["deit_small_patch16_224"]
    assert planned["targets_gmacs"] == table["bins"] == [3.5, 3.0, 2.6, 2.3]
    for row in planned["rows"]:
        published = table["methods"].get(row["method"])
        if published is None:
            assert "paper" not in row, row
            continue
        at = table["bins"].index(row["target_gmacs"])
        assert row["paper"]["setting"] == published["settings"][at]
        assert (row["paper"]["acc"], row["paper"]["acc_ft"]) == (published["acc"][at], published["acc_ft"][at])
        assert "Table 2" in row["paper"]["source"] and "A6000" in row["paper"]["source"]
    evo = next(r for r in planned["rows"] if r["method"] == "evo" and r["target_gmacs"] == 3.5)
    assert evo["setting"] == {"keep_ratio": 0.65} and evo["paper"]["setting"] == {"keep_ratio": 0.7}


@pytest.mark.parametrize("args, message", [
    ([], "--gmacs 3.5,3.0,2.6, --speedup 1.2,1.5 or --bins paper"),
    (["--gmacs", "3", "--speedup", "1.5"], "one of them"),
    (["--speedup", "1.5,1"], "--speedup: every target must be above 1"),
    (["--speedup", "0.8"], "--speedup: every target must be above 1"),
    (["--speedup", "1.5,1.5"], "names a target twice"),
    (["--gmacs", "3", "--bins", "paper"], "one of them"),
    (["--bins", "table9"], "only 'paper'"),
])
def test_targets_are_gmacs_or_the_papers_bins(args, message):
    result = cli("compare", "deit_s", *args, "--dry-run")
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_bins_paper_on_a_backbone_without_a_table_is_one_line():
    result = cli("compare", MODEL.replace("small", "tiny"), "--bins", "paper", "--dry-run")
    assert result.exit_code == 2 and "cover deit_s and deit_b only" in result.output


def test_the_plan_shows_the_papers_top1_and_setting_beside_each_method_labelled_as_published():
    result = cli("compare", "deit_s", "--gmacs", "3.5", "--dry-run")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "79.0 (keep_ratio=0.7)" in text and "79.5 (P=8)" in text  # Evo-ViT: the paper's setting, not 0.65
    assert "without finetuning" in text and "A6000" in text and "not measured here" in text
    other = cli("compare", "deit_s", "--gmacs", "3.4", "--dry-run")  # no bin of the table: no paper column
    assert other.exit_code == 0 and "paper" not in other.stdout.lower()


def test_the_measured_table_shows_the_papers_column_where_a_row_carries_it(tiny):
    """A measured row keeps its plan's paper entry (here written into the tiny file by hand, as the plan writes
    it for a bin of GTP-ViT's table) and the table shows it, labelled, beside the measured columns."""
    from gtpcli.report.compare import render_measured

    result = json.loads(tiny["out"].read_text())
    gtp = next(r for r in result["rows"] if r["method"] == "gtp")
    gtp["paper"] = {"setting": {"P": 8}, "acc": 79.5, "source": "GTP-ViT Tables 2/3 (A6000, batch 128), Table 2"}
    shown = io.StringIO()
    render_measured(result, Console(file=shown, width=200, color_system=None))
    text = " ".join(shown.getvalue().split())
    assert "paper top-1" in text and "79.5 (P=8)" in text and "not measured here" in text


def test_a_measured_row_keeps_its_plans_paper_entry_and_resuming_hands_the_sweep_none():
    from gtpcli.commands.compare import as_measured, as_sweep_row

    paper = {"setting": {"P": 8}, "acc": 79.5, "source": "Table 2"}
    swept = {"method": "gtp", "P": 8, "macs": 3_444_000_000, "analytic_macs": 3_444_000_000, "setting": "P=8"}
    row = as_measured(swept, {"method": "gtp", "setting": {"P": 8}, "paper": paper}, 3.5)
    assert row["paper"] == paper and row["schedule"] == "P=8"
    assert as_sweep_row(row) == {**swept, "target_gmacs": 3.5, "gmacs": 3.444, "analytic_gmacs": 3.444,
                                 "gap": row["gap"]}


# --- speed targets (--speedup): planned at the ideal cost, each setting corrected by a short timing --------------

def test_a_speed_target_is_planned_at_its_ideal_gmacs_with_every_row_marked():
    result = plan_speedups("deit_s", DEIT_S, [1.2, 1.5])
    stock = result["stock_gmacs"]
    assert result["targets_speedup"] == [1.2, 1.5]
    assert result["targets_gmacs"] == [pytest.approx(stock / 1.2, rel=1e-5), pytest.approx(stock / 1.5, rel=1e-5)]  # 6 digits
    same_cost = plan("deit_s", DEIT_S, result["targets_gmacs"])
    assert [(r["method"], r["setting"]) for r in result["rows"]] == [(r["method"], r["setting"]) for r in same_cost["rows"]]
    speedup_of = dict(zip(result["targets_gmacs"], [1.2, 1.5]))
    assert all(r["target_speedup"] == speedup_of[r["target_gmacs"]] for r in result["rows"] + result["skipped"])


def nearest_setting(method: str, gmacs: float) -> dict:
    """The setting whose analytic MACs are nearest `gmacs`, straight from the candidates (first on ties)."""
    if method == RESOLUTION:
        return {"img_size": resolution(DEIT_S, round(gmacs * 1e9)).value}
    card = methods.REGISTRY[method]
    value, _ = min(candidates(DEIT_S, card), key=lambda c: abs(c[1] - round(gmacs * 1e9)))
    return {card.matched_cost_knob().name: value}


@pytest.mark.parametrize("method", ["gtp", "tome", "evit", "random", RESOLUTION])
@pytest.mark.parametrize("share", [0.8, 1.0, 1.15])
def test_a_speed_targets_row_is_solved_again_where_its_measured_share_of_ideal_reaches_it(method, share):
    """At 1.5x a row planned at g GMACs (ideal stock / g) that measured `share` of its ideal there reaches 1.5x,
    at that share, at g x measured / 1.5 GMACs: the setting nearest that, cheaper where it fell short of its
    ideal, dearer where it beat it."""
    planned = next(r for r in plan_speedups("deit_s", DEIT_S, [1.5])["rows"] if r["method"] == method)
    measured = share * (planned["target_gmacs"] * 1.5) / planned["gmacs"]  # share x ideal (stock / g)
    found = retarget(DEIT_S, planned, measured, {})
    asked = planned["gmacs"] * measured / 1.5
    assert found["calibration"]["asked_gmacs"] == pytest.approx(asked, rel=1e-5)
    assert found["setting"] == nearest_setting(method, found["calibration"]["asked_gmacs"])
    assert found["calibration"]["setting"] == planned["setting"] and found["calibration"]["speedup"] == measured
    assert (found["target_gmacs"], found["target_speedup"]) == (planned["target_gmacs"], 1.5)
    assert found["gap"] == pytest.approx(found["gmacs"] / planned["target_gmacs"] - 1)
    if share < 1:
        assert found["gmacs"] <= planned["gmacs"]
    elif share > 1:
        assert found["gmacs"] >= planned["gmacs"]
    else:  # at its ideal: asked for the ideal cost again
        assert asked == pytest.approx(planned["target_gmacs"], rel=1e-5)


def test_a_speed_target_out_of_a_methods_reach_after_the_correction_is_one_line():
    planned = next(r for r in plan_speedups("deit_s", DEIT_S, [1.5])["rows"] if r["method"] == "gtp")
    found = retarget(DEIT_S, planned, 0.3, {})  # 0.3x at P=11: 1.5x asks for a fifth of its cost
    assert isinstance(found, Miss)
    assert found.reason.startswith("gtp at 1.5x: 0.30x at P=11 asks for 0.603 GMACs; GTP:") and "out of reach" in found.reason


TINY_ARCH = Arch(N=65, C=32, L=12, H=2, patch_size=8, num_classes=10)


@pytest.fixture(scope="module")
def tiny_speed(tiny, tmp_path_factory):
    """The tiny ViT compared at two measured-speed targets, without breakdowns, then resumed."""
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    args = ["compare", tiny["profile"], "--speedup", "1.1,1.4", *FAST, "--no-breakdown", "--output", out]
    planned = cli(*args[:-2], "--dry-run", "--format", "json")
    measured = cli(*args)
    resumed = cli(*args, "--resume", "--format", "json")
    for result in (planned, measured, resumed):
        assert result.exit_code == 0, result.output
    return {"plan": json.loads(planned.stdout), "measured": measured, "resumed": resumed,
            "file": json.loads(out.read_text())}


def test_each_speed_targets_rows_are_the_corrected_settings_or_say_why_not(tiny_speed):
    """Every planned row ends measured at the setting its short timing asked for, or skipped with its reason."""
    result, rows = tiny_speed["file"], tiny_speed["file"]["rows"]
    assert result["targets_speedup"] == [1.1, 1.4] and result["targets_gmacs"] == tiny_speed["plan"]["targets_gmacs"]
    for planned in tiny_speed["plan"]["rows"]:
        target, method = planned["target_gmacs"], planned["method"]
        found = [r for r in rows if (r["target_gmacs"], r["method"]) == (target, method)]
        skipped = [s for s in result["skipped"] if (s["target_gmacs"], s["method"]) == (target, method)]
        assert len(found) + len(skipped) == 1, (target, method)
        if skipped:
            assert skipped[0]["reason"].startswith(f"{method} at {planned['target_speedup']:g}x: ")
            continue
        row, cal = found[0], found[0]["calibration"]
        assert cal["setting"] == planned["setting"] and cal["gmacs"] == planned["gmacs"] and cal["speedup"] > 0
        assert cal["asked_gmacs"] == pytest.approx(planned["gmacs"] * cal["speedup"] / planned["target_speedup"], rel=1e-5)
        if method == RESOLUTION:
            assert row["setting"] == {"img_size": resolution(TINY_ARCH, round(cal["asked_gmacs"] * 1e9)).value}
        else:
            card = methods.REGISTRY[method]
            value, macs = min(candidates(TINY_ARCH, card), key=lambda c: abs(c[1] - round(cal["asked_gmacs"] * 1e9)))
            assert row["setting"] == {"P": value} and row["analytic_macs"] == macs
        assert row["speedup_gap"] == round(row["speedup"] / planned["target_speedup"] - 1, 4)
    stocks = [r for r in rows if r["method"] == "stock"]
    assert [r["target_speedup"] for r in stocks] == [1.1, 1.4] and all("speedup_gap" not in r for r in stocks)


def test_a_speed_comparison_says_its_targets_as_speed_ups_and_resumes_without_timing_again(tiny_speed):
    stdout = tiny_speed["measured"].stdout
    assert "tiny at 1.1x (ideal" in stdout and "tiny at 1.4x (ideal" in stdout and "Speed target:" in stdout
    assert "corrected by a short timing" in tiny_speed["measured"].stderr
    resumed = json.loads(tiny_speed["resumed"].stdout)["rows"]
    assert resumed == tiny_speed["file"]["rows"]  # the settings its calibration chose, not new ones
    n = len(resumed)
    assert f"saved {n} points ({n} resumed)" in tiny_speed["resumed"].stderr


def test_on_cpu_a_comparison_times_each_row_once_per_round_unless_runs_says(tiny, tmp_path):
    """profile's CPU default is 20 timed batches, two per round; compare's is one per round (10), as its
    help says, and --runs still rules."""
    args = ("compare", tiny["profile"], "--gmacs", "0.007", "--method", "gtp", "--batch-size", 2, "--device", "cpu",
            "--no-breakdown", "--format", "json")
    plain = cli(*args, "--output", tmp_path / "plain.json")
    assert plain.exit_code == 0, plain.output
    assert {(r["runs"], r["rounds"]) for r in json.loads(plain.stdout)["rows"]} == {(10, 10)}
    given = cli(*args, "--runs", 4, "--rounds", 2, "--output", tmp_path / "given.json")
    assert given.exit_code == 0, given.output
    assert {(r["runs"], r["rounds"]) for r in json.loads(given.stdout)["rows"]} == {(4, 2)}
