"""`profile --search`: hyperparameter lists and ranges, the best setting per P on a case whose answer is known,
resuming without measuring anything twice, disjoint held-out images, and the written per_P block."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from gtpcli.measure import search
from gtpcli.cli import app
from gtpcli.errors import GtpcliError
from gtpcli.methods import REGISTRY
from gtpcli.config.ranges import hparam_values, parse_numbers
from test_accuracy import trained  # noqa: F401  (the digits ViT and its folders, cached)
from test_bad_input import TINY

runner = CliRunner()
GTP = {h.name: h for h in REGISTRY["gtp"].hparams}


@pytest.mark.parametrize("name,text,expected", [
    ("alpha", "0..0.4:0.1", [0.0, 0.1, 0.2, 0.3, 0.4]),          # decimal steps: no 0.30000000000000004
    ("alpha", "0.05,0.15", [0.05, 0.15]),
    ("alpha", "0..1", [0.0, 1.0]),                               # integer bounds step by 1, as --P does
    ("sparsity", "0.5..1.0:0.1", [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
    ("sparsity", "0.7..1:0.2", [0.7, 0.9]),                      # the stop is a bound, not a value to hit
    ("M", "4,8,16", [4, 8, 16]),
    ("M", "1..16:5", [1, 6, 11, 16]),
    ("selection", "mixed,diag,broad", ["mixed", "diag", "broad"]),
    ("graph", "mixed, spatial", ["mixed", "spatial"]),
    ("head_fusion", "max,mean", ["max", "mean"]),
    ("variant", "paper,authors", ["paper", "authors"]),
    ("prop_attn", "on,off", [True, False]),
    ("prop_attn", "true", [True]),
    ("alpha", 0.3, [0.3]),                                       # a YAML number from --config
    ("M", 8, [8]),
])
def test_every_hyperparameter_takes_a_list_or_range(name, text, expected):
    assert hparam_values(GTP[name], text, f"--{name}") == expected


@pytest.mark.parametrize("name,text,message", [
    ("alpha", "0.1..0.4", "needs a step"),
    ("alpha", "0.4..0.1:0.1", "runs backwards"),
    ("alpha", "0..1:0", "step must be positive"),
    ("alpha", "0..1:-0.1", "step must be positive"),
    ("alpha", "0.1,,0.2", "empty item"),
    ("alpha", "x", "cannot read 'x'"),
    ("alpha", "nan", "cannot read 'nan'"),
    ("alpha", "-0.1,0.2", "--alpha must be >= 0"),
    ("alpha", "0.1,0.1", "given twice"),
    ("alpha", "0..1000:0.0001", "at most 10,000"),
    ("sparsity", "0..1:0.5", "--sparsity must be > 0"),
    ("sparsity", "0.5..1.5:0.5", "--sparsity must be <= 1"),
    ("M", "1.5", "cannot read '1.5'"),
    ("M", "0..4", "--M must be >= 1"),
    ("graph", "mixed,grid", "--graph must be one of mixed, spatial, semantic, none"),
    ("selection", "mixed,", "empty item"),
    ("prop_attn", "on,maybe", "cannot read 'maybe'"),
])
def test_bad_lists_are_one_line_errors(name, text, message):
    with pytest.raises(GtpcliError, match=message) as caught:
        hparam_values(GTP[name], text, f"--{name}")
    assert "\n" not in str(caught.value)


def test_float_ranges_are_exact_decimals():
    assert parse_numbers("0.1..0.3:0.1") == [0.1, 0.2, 0.3]
    assert parse_numbers("0..0.9:0.3") == [0.0, 0.3, 0.6, 0.9]
    assert len(parse_numbers("0..1:0.01")) == 101


@pytest.fixture
def tiny(tmp_path):
    """A small random-weight ViT profile and an ImageFolder of 2 classes x 6 generated images."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), (40 * i, 200 if label == "a" else 20, 90)).save(tmp_path / "data" / label / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["--alpha", "0.1,0.3"], "add --search"),
    (["--graph", "mixed,none", "--no-speed"], "add --search"),
    (["--search"], "--search needs a GTP hyperparameter with several values"),
    (["--search", "--alpha", "0.1,0.3", "--no-data"], "--search needs --data"),
    (["--search", "--alpha", "0.1,0.3", "--holdout", "4"], "--holdout N needs --limit M"),
    (["--search", "--alpha", "0.1,0.3", "--limit", "8", "--holdout", "8"], "needs 16 images; "),
    (["--search", "--alpha", "0.1,0.3", "--holdout", "0", "--limit", "4"], "--holdout must be >= 1"),
    (["--search", "--alpha", "0.1,0.3", "--method", "tome"], "one method's grid"),
    (["--search", "--alpha", "0.1,0.3", "--shard-points"], "--shard-points belongs to a plain sweep"),
    (["--holdout", "4", "--limit", "4"], "--holdout belongs to --search"),
    (["--hp", "gtp.prop_attn=on,off"], "--hp gtp.prop_attn on,off names 2 values: add --search"),
    (["--search", "--hp", "gtp.prop_attn=on,maybe"], "--hp gtp.prop_attn: cannot read 'maybe'"),
    (["--search", "--alpha", "0..1:0.001", "--M", "1..8"], "add --yes to run it"),  # 8008 settings x 2 P x 12 images
])
def test_search_bad_input(tiny, args, message):
    data = [] if "--no-data" in args else ["--data", str(tiny / "data")]
    args = [a for a in args if a != "--no-data"]
    result = runner.invoke(app, ["profile", str(tiny / "tiny.yaml"), "--P", "0,2", *data, *args,
                                 "--output", str(tiny / "out.json")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output, result.output


def test_write_profile_needs_a_profile(tiny):
    result = runner.invoke(app, ["profile", "vit_tiny_patch16_224", "--P", "2", "--alpha", "0.1,0.3", "--search",
                                 "--data", str(tiny / "data"), "--write-profile", str(tiny / "w.yaml")])
    assert result.exit_code == 2 and "extends a profile" in result.output, result.output


def invoke(root, *args):
    result = runner.invoke(app, ["profile", str(root / "digits.yaml"), "--checkpoint", str(root / "vit.pth"),
                                 "--data", str(root / "val"), *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_search_picks_propagation_over_pruning_and_the_written_profile_reproduces_it(trained, tmp_path):
    """Known answer (tests/test_accuracy.py): on the digits ViT at P = 14 and alpha = 0.5, propagating the
    removed tokens beats dropping them. The search must pick the mixed graph, and its rows must be what plain
    fixed-setting sweeps measure on the same images: the winner through the written profile's per_P."""
    grid = ["--P", "14", "--alpha", "0.5", "--graph", "none,mixed", "--limit", "200", "--holdout", "160"]
    found = json.loads(invoke(trained, *grid, "--search", "--write-profile", str(tmp_path / "w.yaml"),
                              "-o", str(tmp_path / "s.json"), "-f", "json").stdout)
    best = found["best"][0]
    assert best["best"] == {"graph": "mixed"} and best["settings"] == 2 and best["runner_up"] == {"graph": "none"}
    rows = {r["hparams"].get("graph"): r for r in found["rows"]}
    assert best["value"] == rows["mixed"]["acc"] > rows["none"]["acc"]
    assert best["margin"] == round(rows["mixed"]["acc"] - rows["none"]["acc"], 2)
    assert best["holdout_images"] == 160 and best["holdout"] is not None and rows[None]["holdout_n"] == 160

    written = tmp_path / "w.yaml"
    from gtpcli.models.profiles import load_profile
    assert load_profile(str(written)).per_P[14] == {"alpha": 0.5, "graph": "mixed"}
    again = json.loads(runner.invoke(app, ["profile", str(written), "--checkpoint", str(trained / "vit.pth"),
                                           "--data", str(trained / "val"), "--limit", "200", "--P", "14",
                                           "--no-speed", "--no-flops", "-o", str(tmp_path / "p.json"),
                                           "-f", "json"]).stdout)["rows"]
    assert again[-1]["acc"] == rows["mixed"]["acc"] and again[0]["acc"] == rows[None]["acc"]
    pruned = json.loads(invoke(trained, "--P", "14", "--alpha", "0.5", "--graph", "none", "--limit", "200",
                               "--no-speed", "--no-flops", "-o", str(tmp_path / "q.json"), "-f", "json").stdout)
    assert pruned["rows"][-1]["acc"] == rows["none"]["acc"]


@pytest.mark.slow
def test_resume_after_an_interruption_measures_nothing_twice(trained, tmp_path, monkeypatch):
    grid = ["--P", "14", "--alpha", "0.3,0.5", "--graph", "mixed,none", "--limit", "60", "--search",
            "-o", str(tmp_path / "s.json")]
    measured, predicted = [], []
    real_measure, real_predict = search.measure_point, search.accuracy.predict

    def measure(model, cfg, method, P, *rest):
        if len(measured) == 3 and not cfg_resumed[0]:
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the grid
        measured.append((method, P, json.dumps(cfg.hparams_for(method, P), sort_keys=True)))
        return real_measure(model, cfg, method, P, *rest)

    def predict(*args, **kwargs):
        predicted.append(1)
        return real_predict(*args, **kwargs)

    cfg_resumed = [False]
    monkeypatch.setattr(search, "measure_point", measure)
    monkeypatch.setattr(search.accuracy, "predict", predict)
    interrupted = runner.invoke(app, ["profile", str(trained / "digits.yaml"), "--checkpoint", str(trained / "vit.pth"),
                                      "--data", str(trained / "val"), *grid])
    assert interrupted.exit_code == 130 and "--resume" in interrupted.output, interrupted.output
    assert len(json.loads((tmp_path / "s.json").read_text())["rows"]) == 3  # the stock row and two settings
    first = list(measured)

    cfg_resumed[0] = True
    measured.clear()
    invoke(trained, *grid, "--resume")
    assert len(measured) == 2 and not set(measured) & set(first)  # only the two settings left
    full = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert len(full) == 5 and all("acc" in r for r in full)

    measured.clear()
    predicted.clear()
    again = json.loads(invoke(trained, *grid, "--resume", "-f", "json").stdout)
    assert measured == [] and predicted == []  # not even the unreduced model is evaluated again
    assert [r["acc"] for r in again["rows"]] == [r["acc"] for r in full]


@pytest.mark.slow
def test_holdout_images_are_disjoint_and_the_search_subset_is_the_limit_subset(trained):
    from gtpcli.models import backbones
    from gtpcli.measure import sweep
    from gtpcli.measure import accuracy
    from gtpcli.measure import speed

    profile, timm_name = backbones.resolve(str(trained / "digits.yaml"))
    cfg = sweep.SweepConfig(profile.name, timm_name, profile, ["gtp"], [14], speed.Timing.default("cpu", "float32"),
                            {"gtp": {}}, trained / "vit.pth", data=trained / "val", limit=200)
    plan = search.Search(cfg, search.Grid("gtp", {"alpha": [0.1, 0.5]}), holdout=150)
    model = sweep.build(cfg)
    loaders = search.subsets(model, plan)

    def files(loader):
        subset = loader.dataset
        return {subset.dataset.files[i] for i in subset.indices}

    chosen, held = files(loaders["search"]), files(loaders["holdout"])
    assert len(chosen) == 200 and len(held) == 150 and not chosen & held
    plain = accuracy.data_loader(model, trained / "val", 16, 200, (32, 32))  # what profile --limit 200 evaluates
    assert files(plain) == chosen


def test_fixed_setting_rows_never_claim_to_match_a_best_over_settings_table(tiny):
    reference = 'reference: {source: "Table 1 (no finetuning, best over settings)", P: [0, 2], acc: [50.0, 49.0], gmacs: [0.1, 0.09]}\n'
    (tiny / "ref.yaml").write_text(TINY + reference)
    common = ["profile", str(tiny / "ref.yaml"), "--P", "2", "--data", str(tiny / "data"), "--no-speed", "--no-flops"]
    fixed = runner.invoke(app, [*common, "--output", str(tiny / "fixed.json")])
    assert fixed.exit_code == 0, fixed.output
    text = " ".join(fixed.stdout.split())
    assert "Acc (%), one setting" in text and "paper Acc (%), best over settings" in text
    assert "ours one fixed setting" in text
    best = runner.invoke(app, [*common, "--search", "--alpha", "0.1,0.5", "--output", str(tiny / "best.json")])
    assert best.exit_code == 0, best.output
    text = " ".join(best.stdout.split())
    assert "best over settings per P" in text and "one setting" not in text
    assert "paper Acc (%), best over" in text and "49.0" in text


def test_a_winner_at_the_edge_of_the_grid_is_noted_unless_the_range_ends_there():
    grid = search.Grid("gtp", {"alpha": [0.0, 0.25, 0.5], "sparsity": [0.5, 0.75, 1.0], "M": [4, 8]})
    assert search.at_edge(grid, {"alpha": 0.5, "sparsity": 0.75, "M": 8}) == ["alpha"]
    assert search.at_edge(grid, {"alpha": 0.25, "sparsity": 1.0, "M": 4}) == []   # theta cannot exceed 1; M has 2 values
    assert search.at_edge(grid, {"alpha": 0.0, "sparsity": 0.5, "M": 4}) == ["sparsity"]  # alpha >= 0 is its bound


def test_search_without_labels_ranks_by_agreement_with_the_unreduced_model(tiny):
    flat = tiny / "flat"
    flat.mkdir()
    for png in (tiny / "data").rglob("*.png"):
        (flat / f"{png.parent.name}{png.name}").write_bytes(png.read_bytes())
    result = runner.invoke(app, ["profile", str(tiny / "tiny.yaml"), "--P", "0,2", "--data", str(flat), "--fidelity",
                                 "--alpha", "0,0.5", "--search", "-f", "json", "--output", str(tiny / "f.json")])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["search"]["objective"] == "fidelity_top1" and all("acc" not in r for r in found["rows"])
    at_p0, at_p2 = found["best"]
    assert at_p0["value"] == 100.0 and at_p0["tied"] == 2  # P = 0 is the unreduced model, whatever alpha
    rows = [r for r in found["rows"] if r["P"] == 2]
    top = max(rows, key=lambda r: (r["fidelity_top1"], -r["fidelity_kl"]))
    assert at_p2["best"] == top["grid"] and at_p2["value"] == top["fidelity_top1"]
    low, high = at_p2["ci95"]
    assert low <= at_p2["value"] <= high and at_p2["images"] == 12


def test_a_search_names_the_ablation_row_it_reproduces():
    from gtpcli.reference.ablations import comparable

    deit_s, deit_b = "deit_small_patch16_224", "deit_base_patch16_224"
    spatial = comparable(deit_s, {"graph": "spatial"}, {"alpha": [0.1, 0.2]})
    assert spatial["acc"] == [79.8, 79.5, 78.9, 78.1] and "Table 4, graph spatial" in spatial["label"]
    assert comparable(deit_b, {"sparsity": 0.6}, {"alpha": [0.1, 0.2]})["acc"] == [81.8, 81.4, 80.9, 79.9]
    no_prop = comparable(deit_s, {"prop_attn": False}, {"sparsity": [0.5, 1.0]})
    assert no_prop["acc"] == [79.7, 79.3, 78.8, 77.8] and "without proportional attention" in no_prop["label"]
    assert comparable(deit_s, {}, {"alpha": [0.1, 0.2]}) is None                       # Table 1: the profile's row
    assert comparable(deit_s, {"sparsity": 0.6, "prop_attn": False}, {"alpha": [0.1]}) is None  # no such row
    assert comparable(deit_s, {"sparsity": 0.65}, {"alpha": [0.1, 0.2]}) is None      # not a published theta
    assert comparable("vit_small_patch16_224", {"graph": "spatial"}, {"alpha": [0.1]}) is None


def test_best_per_value_is_the_best_over_the_other_settings_with_the_table_4_row():
    from gtpcli.measure import sweep
    from gtpcli.measure import speed

    cfg = sweep.SweepConfig("deit_s", "deit_small_patch16_224", None, ["gtp"], [4, 14],
                            speed.Timing.default("cpu", "float32"), {"gtp": {}})
    plan = search.Search(cfg, search.Grid("gtp", {"graph": ["mixed", "none"], "alpha": [0.1, 0.3]}), best_per="graph")
    accs = {("mixed", 0.1): 70.0, ("mixed", 0.3): 72.0, ("none", 0.1): 71.0, ("none", 0.3): 69.0}
    rows = [{"method": "gtp", "P": P, "grid": {"graph": g, "alpha": a}, "acc": acc - (P == 14), "fidelity_kl": 0.1}
            for P in (4, 14) for (g, a), acc in accs.items()]
    found = {(e["graph"], e["P"]): e for e in search.best_per_value(rows, plan, "graph")}
    assert found["mixed", 4]["value"] == 72.0 and found["mixed", 4]["best"] == {"graph": "mixed", "alpha": 0.3}
    assert found["none", 14]["value"] == 70.0 and found["none", 14]["settings"] == 2
    assert found["none", 14]["paper_acc"] == 77.6 and "Table 4, graph none" in found["none", 14]["paper"]


@pytest.mark.parametrize("args,message", [
    (["--search", "--alpha", "0.1,0.3", "--best-per", "graph"], "--best-per graph: not a searched hyperparameter"),
    (["--best-per", "graph"], "--best-per belongs to --search"),
])
def test_best_per_bad_input(tiny, args, message):
    result = runner.invoke(app, ["profile", str(tiny / "tiny.yaml"), "--P", "2", "--data", str(tiny / "data"), *args,
                                 "--output", str(tiny / "out.json")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_hp_lists_are_grid_axes_too(tiny):
    """`--hp gtp.prop_attn=on,off` searches proportional attention (a switch on the command line otherwise)."""
    result = runner.invoke(app, ["profile", str(tiny / "tiny.yaml"), "--P", "2", "--data", str(tiny / "data"),
                                 "--sparsity", "0.5,1", "--hp", "gtp.prop_attn=on,off", "--hp", "gtp.M=4",
                                 "--search", "--best-per", "prop_attn", "-f", "json", "--output", str(tiny / "o.json")])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["search"]["grid"] == {"sparsity": [0.5, 1.0], "prop_attn": [True, False]}
    assert {r["hparams"]["M"] for r in found["rows"] if r["method"] == "gtp"} == {4}  # a single value stays fixed
    assert {e["prop_attn"] for e in found["best_per"]["rows"]} == {True, False}


def test_default_search_files_are_named_by_setting_and_never_collide(tiny, monkeypatch):
    """Without --output, a search's file is named as profile's are (results.default_path): MODEL-search, then
    what sets the setting apart in words (the --data folder, here named `data`; a dtype other than float32),
    so a bfloat16 search gets its own file beside the float32 one, and each keeps its own rows."""
    monkeypatch.chdir(tiny)
    base = ["profile", str(tiny / "tiny.yaml"), "--P", "0,2", "--data", str(tiny / "data"), "--alpha", "0,0.5",
            "--search", "--no-speed"]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    double = runner.invoke(app, [*base, "--dtype", "bfloat16"])
    assert double.exit_code == 0, double.output
    files = sorted(p.name for p in (tiny / "gtpcli-results").glob("*.json"))
    assert files == ["tiny-search-data-data-bfloat16.json", "tiny-search-data-data.json"]
    for name, dtype in (("tiny-search-data-data.json", "float32"), ("tiny-search-data-data-bfloat16.json", "bfloat16")):
        saved = json.loads((tiny / "gtpcli-results" / name).read_text())
        assert saved["env"]["dtype"] == dtype and {r["P"] for r in saved["rows"]} == {0, 2}
