"""`gtpcli plot` and `complexity --plot`: the data each kind draws, worked out by hand from small result
files written here; that every kind writes a real PNG, SVG and PDF; and the one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from gtpcli.report import plots
from gtpcli.cli import app
from gtpcli.measure.complexity import complexity_result
from gtpcli.cost.analytic import Arch
from gtpcli.errors import GtpcliError

runner = CliRunner()
SOURCE = "GTP-ViT Table 1 (A6000, batch 128, no finetuning, best over settings)"
ENV = {"device": "cpu", "device_name": "Test CPU", "dtype": "float32", "batch_size": 16, "torch": "2.9"}


def row(method, P, img_s=None, gmacs=None, acc=None, tokens=(5, 5, 5), **extra):
    """A profile row; a timed one has an interquartile range of 2 img/s below and 3 above its median."""
    timed = {"img_s_q1": img_s - 2, "img_s_q3": img_s + 3} if img_s is not None else {}
    return {"model": "m", "method": method, "P": P, "hparams": {}, "tokens": list(tokens), "img_s": img_s,
            "gmacs": gmacs, **timed, **({"acc": acc} if acc is not None else {}), **extra}


def profile_result(path, rows, **header):
    data = {"model": "m", "timm": "t", "weights": "w.pth", "img_size": 32, "env": ENV, **header, "rows": rows}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def measured(tmp_path):
    """Stock, GTP at P = 0, 1, 2 with the paper's figures at P = 0 and 2, ToMe at P = 1."""
    paper = {"paper_source": SOURCE}
    return profile_result(tmp_path / "run.json", [
        row("stock", 0, img_s=100.0, gmacs=4.0, acc=80.0),
        row("gtp", 0, img_s=98.0, gmacs=4.0, acc=80.0, paper_gmacs=4.6, paper_img_s=1000.0, paper_acc=79.8, **paper),
        row("gtp", 1, img_s=110.0, gmacs=3.2, acc=79.0, tokens=(5, 4, 3)),
        row("gtp", 2, img_s=125.0, gmacs=2.5, acc=77.5, tokens=(5, 3, 1), paper_gmacs=3.4, paper_img_s=1500.0,
            paper_acc=79.5, **paper),
        row("tome", 1, img_s=115.0, gmacs=3.3, acc=78.0, tokens=(5, 4, 3)),
    ])


def by_label(panel):
    return {s.label: s for s in panel.series}


def test_tradeoff_draws_each_method_the_stock_star_and_the_papers_points(measured):
    fig = plots.figure("tradeoff", [measured])
    speed, cost = fig.panels
    assert (speed.xlabel, speed.ylabel) == ("throughput (img/s)", "top-1 accuracy (%)")
    assert cost.xlabel == "GMACs per image"
    found = by_label(speed)
    gtp = found["GTP measured (Test CPU)"]
    assert (gtp.x, gtp.y, gtp.point_labels, gtp.mark) == ([98.0, 110.0, 125.0], [80.0, 79.0, 77.5], ["P=0", "P=1", "P=2"], "line")
    assert gtp.xbounds == [[96.0, 101.0], [108.0, 113.0], [123.0, 128.0]] and not gtp.ybounds
    assert not by_label(cost)["GTP measured (Test CPU)"].xbounds  # GMACs are counted, not timed
    assert found["ToMe measured (Test CPU)"].x == [115.0]
    paper = found["GTP paper (A6000, best over settings)"]
    assert (paper.x, paper.y, paper.mark, paper.group) == ([1000.0, 1500.0], [79.8, 79.5], "paper", "gtp")
    stock = found["stock timm (Test CPU)"]
    assert (stock.x, stock.y, stock.mark) == ([100.0], [80.0], "stock")
    assert "ToMe paper" not in " ".join(found)  # no published ToMe rows in this file
    assert by_label(cost)["GTP paper (A6000, best over settings)"].x == [4.6, 3.4]
    assert by_label(cost)["GTP measured (Test CPU)"].x == [4.0, 3.2, 2.5]
    assert speed.xscale == "linear"  # 98..1500 spans less than 20x
    assert "w.pth" in fig.caption and "batch 16" in fig.caption and "Test CPU" in fig.caption


def test_tradeoff_overlays_files_with_one_style_each_and_the_paper_once(measured, tmp_path):
    other = profile_result(tmp_path / "gpu.json", [row("stock", 0, img_s=2000.0, gmacs=4.0, acc=80.0),
                                                   row("gtp", 4, img_s=3000.0, gmacs=3.0, acc=79.0)],
                           env={**ENV, "device": "cuda", "device_name": "H100"})
    panel = plots.figure("tradeoff", [measured, other]).panels[0]
    found = by_label(panel)
    assert found["GTP measured (Test CPU, run)"].style == 0 and found["GTP measured (H100, gpu)"].style == 1
    assert sum(s.mark == "paper" for s in panel.series) == 1
    assert panel.xscale == "log"  # 98 img/s next to 3000
    base = json.loads(measured.read_text())
    bigger = profile_result(tmp_path / "b.json", [{**r, "model": "b", "paper_acc": r.get("paper_acc") and r["paper_acc"] + 2}
                                                  for r in base["rows"]], model="b")
    papers = [s for s in plots.figure("tradeoff", [measured, bigger]).panels[0].series if s.mark == "paper"]
    assert [(s.label, s.y) for s in papers] == [("GTP paper (A6000, best over settings, m)", [79.8, 79.5]),
                                                ("GTP paper (A6000, best over settings, b)", [81.8, 81.5])]
    speed = [s.label for s in plots.figure("speedup", [measured, bigger, measured]).panels[0].series if s.mark == "paper"]
    assert speed == ["GTP paper (A6000, m)", "GTP paper (A6000, b)"]  # each model's once, the repeated file adds none


def test_tradeoff_uses_fidelity_without_labels_and_says_what_is_missing(tmp_path):
    fid = profile_result(tmp_path / "fid.json", [row("stock", 0, img_s=10.0, gmacs=4.0, fidelity_top1=100.0),
                                                 row("gtp", 8, img_s=12.0, gmacs=3.0, fidelity_top1=96.9)])
    panel = plots.figure("tradeoff", [fid]).panels[0]
    assert panel.ylabel == "top-1 agreement with the unreduced model (%)"
    assert by_label(panel)["GTP measured (Test CPU)"].y == [96.9]
    bare = profile_result(tmp_path / "bare.json", [row("stock", 0, img_s=10.0, gmacs=4.0), row("gtp", 8, img_s=12.0)])
    with pytest.raises(GtpcliError, match="no accuracy or fidelity in any row.*--checkpoint.*--data"):
        plots.figure("tradeoff", [bare])


# --- a comparison (gtpcli compare -o): written by hand in its shape -----------------------------------------

def compare_row(target, method, img_s, gmacs, acc, setting=None):
    """A measured compare row: its target, the plan's method and setting, img/s with an IQR of 1 either side."""
    return {"model": "m", "target_gmacs": target, "method": method, "setting": setting or {}, "P": None,
            "hparams": {}, "gmacs": gmacs, "img_s": img_s, "img_s_q1": img_s - 1, "img_s_q3": img_s + 1,
            "acc": acc, "acc_n": 360}


def compare_result(path, rows, **header):
    data = {"model": "m", "timm": "t", "weights": "w.pth", "data": "/d/val", "limit": None, "command": "compare",
            "env": {**ENV, "rounds": 10}, "stock_gmacs": 4.0, "targets_gmacs": [3.0, 2.6], "measured": True,
            **header, "rows": rows}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def compared(tmp_path):
    """Two targets; at 3.0 GTP, ToMe and the resolution baseline are Pareto-optimal in img/s, random is
    not; at 2.6 ToMe is beaten by GTP (faster and better) and random by everything. Each target's stock row
    has its own img/s (100 and 104: median 102)."""
    return compare_result(tmp_path / "m-compare.json", [
        compare_row(3.0, "stock", 100.0, 4.0, 80.0),
        compare_row(3.0, "gtp", 130.0, 3.0, 79.0, {"P": 11}),
        compare_row(3.0, "tome", 135.0, 3.05, 78.5, {"P": 11}),
        compare_row(3.0, "random", 128.0, 3.1, 70.0, {"P": 10}),
        compare_row(3.0, "resolution", 140.0, 2.9, 78.0, {"img_size": 176}),
        compare_row(2.6, "stock", 104.0, 4.0, 80.0),
        compare_row(2.6, "gtp", 150.0, 2.6, 77.0, {"P": 14}),
        compare_row(2.6, "tome", 148.0, 2.62, 76.5, {"P": 14}),
        compare_row(2.6, "random", 145.0, 2.7, 60.0, {"P": 13}),
        compare_row(2.6, "resolution", 160.0, 2.55, 75.0, {"img_size": 160}),
    ])


def test_tradeoff_of_a_comparison_joins_each_methods_targets_and_draws_the_baselines_apart(compared):
    fig = plots.figure("tradeoff", [compared])
    speed, cost = fig.panels
    assert (speed.xlabel, speed.ylabel, cost.xlabel) == ("throughput (img/s)", "top-1 accuracy (%)", "GMACs per image")
    found = by_label(speed)
    gtp = found["GTP (Test CPU)"]  # ordered by GMACs: the 2.6 target first
    assert (gtp.x, gtp.y, gtp.point_labels, gtp.mark) == ([150.0, 130.0], [77.0, 79.0], ["2.6 GMACs", "3 GMACs"], "line")
    assert gtp.xbounds == [[149.0, 151.0], [129.0, 131.0]]
    assert found["ToMe (Test CPU)"].x == [148.0, 135.0]
    for name, method, ys in (("Random", "random", [60.0, 70.0]), ("Resolution", "resolution", [75.0, 78.0])):
        baseline = found[f"{name} baseline (Test CPU)"]
        assert (baseline.mark, baseline.group, baseline.y) == ("baseline", method, ys)
    assert by_label(cost)["Resolution baseline (Test CPU)"].x == [2.55, 2.9]
    stars = [s for p in fig.panels for s in p.series if s.mark == "stock"]
    assert [(s.label, s.x, s.y) for s in stars] == [("stock timm (Test CPU)", [102.0], [80.0]),
                                                    ("stock timm (Test CPU)", [4.0], [80.0])]  # once per panel
    assert [s.mark for s in speed.series].count("line") == 2 and len(speed.series) == 6


def test_the_pareto_rows_of_each_target_are_ringed(compared):
    speed, cost = plots.figure("tradeoff", [compared]).panels
    ring = [s for s in speed.series if s.mark == "pareto"]
    assert len(ring) == 1 and ring[0].label == "Pareto-optimal at its target"
    assert sorted(zip(ring[0].x, ring[0].y)) == [(130.0, 79.0), (135.0, 78.5), (140.0, 78.0), (150.0, 77.0),
                                                 (160.0, 75.0)]
    cheap = next(s for s in cost.series if s.mark == "pareto")  # fewer GMACs is better: ToMe at 3.0 falls
    assert sorted(zip(cheap.x, cheap.y)) == [(2.55, 75.0), (2.6, 77.0), (2.9, 78.0), (3.0, 79.0)]


def test_the_caption_of_a_comparison_says_what_it_was_measured_under(compared):
    text = plots.figure("tradeoff", [compared]).caption
    for part in ("w.pth", "Test CPU", "float32", "batch 16", "data val", "10 interleaved rounds per target",
                 "360 images", "stock: the median of its rows, one per target", "bars: quartiles of img/s",
                 "ringed: Pareto-optimal"):
        assert part in text, part


def test_a_comparison_without_accuracy_or_mixed_with_a_profile_is_one_line(compared, measured, tmp_path):
    data = json.loads(compared.read_text())
    bare = compare_result(tmp_path / "bare.json", [{k: v for k, v in r.items() if k != "acc"} for r in data["rows"]])
    with pytest.raises(GtpcliError, match="no accuracy or fidelity in any row; measure it with gtpcli compare"):
        plots.figure("tradeoff", [bare])
    with pytest.raises(GtpcliError, match="profile results or gtpcli compare results, not both"):
        plots.figure("tradeoff", [measured, compared])
    with pytest.raises(GtpcliError, match="is a gtpcli compare result; --kind speedup reads gtpcli profile"):
        plots.figure("speedup", [compared])
    fidelity = compare_result(tmp_path / "fid.json", [{**r, "fidelity_top1": r["acc"] + 10} | {"acc": None}
                                                      for r in data["rows"]])
    panel = plots.figure("tradeoff", [fidelity]).panels[0]
    assert panel.ylabel == "top-1 agreement with the unreduced model (%)"
    assert by_label(panel)["GTP (Test CPU)"].y == [87.0, 89.0]


def test_a_comparison_draws_as_png(compared, tmp_path):
    out = tmp_path / "compare.png"
    result = runner.invoke(app, ["plot", str(compared), "--kind", "tradeoff", "-o", str(out)])
    assert result.exit_code == 0, result.output
    valid(out)


def test_tradeoff_without_speed_draws_the_gmacs_panel_and_says_so(tmp_path):
    slow = profile_result(tmp_path / "nospeed.json", [row("stock", 0, gmacs=4.0, acc=80.0), row("gtp", 8, gmacs=3.0, acc=79.0)])
    fig = plots.figure("tradeoff", [slow])
    assert [p.xlabel for p in fig.panels] == ["GMACs per image"]
    assert "img/s not measured" in fig.caption


def test_speedup_is_measured_over_stock_against_the_gmacs_ratio(measured):
    panel = plots.figure("speedup", [measured]).panels[0]
    found = by_label(panel)
    gtp = found["GTP measured (Test CPU)"]
    assert gtp.x == [0, 1, 2] and gtp.y == [0.98, 1.1, 1.25]
    assert gtp.ybounds == [[0.96, 1.01], [1.08, 1.13], [1.23, 1.28]]  # the IQR over the stock median
    ideal = found["GTP ideal (GMACs ratio)"]
    assert ideal.mark == "ideal" and ideal.y == [1.0, 1.25, 1.6]  # 4.0 / 4.0, 4.0 / 3.2, 4.0 / 2.5
    assert found["GTP paper (A6000)"].y == [1.0, 1.5]  # a speed: whether accuracies were best-of does not matter  # 1500 / 1000: the paper's own P = 0 as its base
    assert found["stock"].y == [1.0, 1.0, 1.0]


def test_a_method_at_its_own_schedule_is_labelled_by_its_setting_and_kept_off_the_P_axis(measured, tmp_path):
    base = json.loads(measured.read_text())["rows"]
    own = row("evit", None, img_s=150.0, gmacs=3.0, acc=78.5, tokens=(5, 4, 2), setting="keep 0.7")
    path = profile_result(tmp_path / "own.json", base + [own])
    evit = by_label(plots.figure("tradeoff", [path]).panels[0])[f"{plots.title_of('evit')} measured (Test CPU)"]
    assert evit.point_labels == ["keep 0.7"] and evit.x == [150.0]
    fig = plots.figure("speedup", [path])
    assert {s.group for s in fig.panels[0].series} == {"gtp", "tome", "stock"}
    assert f"not on the P axis (own schedules): {plots.title_of('evit')}" in fig.caption
    tokens = plots.figure("tokens", [path]).panels[-1]
    assert by_label(tokens)["keep 0.7"].y == [5, 4, 2]


def test_paper_labels_say_hardware_finetuning_and_best_over_settings():
    assert plots.conditions("finetuned with distillation (TC-ViT Table 7)", accuracy=True) == "TC-ViT Table 7, finetuned"
    assert plots.conditions(SOURCE, accuracy=True) == "A6000, best over settings"
    assert plots.conditions("GTP-ViT Table 6 (A6000, batch 32, no finetuning, official ToMe)", accuracy=True) == "A6000"
    assert plots.conditions("", accuracy=False) == "published"


def test_speedup_needs_throughput_and_a_stock_row(tmp_path):
    slow = profile_result(tmp_path / "s.json", [row("stock", 0, gmacs=4.0), row("gtp", 8, gmacs=3.0)])
    with pytest.raises(GtpcliError, match="no throughput.*without --no-speed"):
        plots.figure("speedup", [slow])
    headless = profile_result(tmp_path / "h.json", [row("gtp", 8, img_s=3.0, gmacs=3.0)])
    with pytest.raises(GtpcliError, match="no measured stock row"):
        plots.figure("speedup", [headless])


def complexity_file(path, Ns, Cs, Ps=(8,)):
    result = complexity_result(Arch(N=1, C=1), list(Ns), list(Cs), list(Ps), None, methods=["gtp", "tome"])
    path.write_text(json.dumps(result))
    return path, result


def test_overhead_draws_every_column_against_the_swept_axis(tmp_path):
    path, result = complexity_file(tmp_path / "n.json", [197, 785, 3137], [768])
    panel = plots.figure("overhead", [path]).panels[0]
    assert panel.xlabel == "N (tokens)" and panel.ylabel == "extra MMACs of the method"
    assert "C=768" in panel.title and "P=8" in panel.title
    found = by_label(panel)
    assert list(found) == ["GTP sum", "GTP Eq.15", "ToMe sum", "ToMe Eq.14"]
    assert found["GTP sum"].x == [197, 785, 3137]
    assert found["ToMe Eq.14"].y == [r["tome_macs_closed_form"] / 1e6 for r in result["rows"]]
    assert (found["GTP sum"].style, found["GTP Eq.15"].style) == (0, 1)  # closed form in another line style
    assert panel.yscale == "log"


def test_overhead_says_which_zero_columns_a_log_axis_cannot_draw(tmp_path):
    result = complexity_result(Arch(N=1, C=1), [197, 785, 3137], [768], [8], None, methods=["gtp", "evo"])
    assert all(r["evo_macs"] == 0 for r in result["rows"])  # Evo-ViT sorts: no MACs
    (tmp_path / "z.json").write_text(json.dumps(result))
    fig = plots.figure("overhead", [tmp_path / "z.json"])
    assert [s.label for s in fig.panels[0].series] == ["GTP sum", "GTP Eq.15"]
    assert fig.caption.endswith("0 MACs, not drawn on the log axis: Evo-ViT")


def test_overhead_needs_exactly_one_swept_axis(tmp_path):
    both, _ = complexity_file(tmp_path / "b.json", [197, 785], [384, 768])
    with pytest.raises(GtpcliError, match="sweeps N and C"):
        plots.figure("overhead", [both])
    one, _ = complexity_file(tmp_path / "o.json", [197], [384])
    with pytest.raises(GtpcliError, match="sweeps none"):
        plots.figure("overhead", [one])


def adaptive_row(delta, counts, hist=None):
    """An input-dependent row as gtpcli/cost/adaptive.py describes it, built by hand: two blocks, all 5
    tokens enter the first, `counts` (one per image) the second."""
    from gtpcli.cost.adaptive import distribution

    dist = [distribution([5] * len(counts)), distribution(counts)]
    if hist is not None:
        dist[1]["hist"] = hist
    return {"model": "m", "method": "tpc", "P": None, "adaptive": True, "hparams": {"delta": delta, "K": 2},
            "tokens": [5.0, sum(counts) / len(counts)], "tokens_dist": dist, "gmacs": 1.0, "img_s": None}


def test_tradeoff_of_an_input_dependent_method_shows_its_per_image_gmacs_range(tmp_path):
    tpc = dict(adaptive_row(0.5, [2, 3, 4, 5]), acc=79.0, gmacs=3.0, gmacs_p5=2.5, gmacs_p95=3.75, setting="delta=0.5")
    path = profile_result(tmp_path / "tpc.json", [row("stock", 0, gmacs=4.0, acc=80.0), tpc])
    fig = plots.figure("tradeoff", [path])
    series = by_label(fig.panels[0])[f"{plots.title_of('tpc')} measured (Test CPU)"]
    assert (series.x, series.xbounds, series.point_labels) == ([3.0], [[2.5, 3.75]], ["delta=0.5"])
    assert "bars from 5 % to 95 % of the images" in fig.caption and "interquartile" not in fig.caption


def test_tokens_lines_for_fixed_schedules_and_boxes_from_the_distribution(measured, tmp_path):
    panels = plots.figure("tokens", [measured]).panels
    assert [p.title for p in panels] == ["GTP", "ToMe"]
    found = by_label(panels[0])
    assert found["stock"].y == [5, 5, 5] and found["stock"].mark == "reference"
    assert found["P=2"].y == [5, 3, 1] and found["P=2"].x == [1, 2, 3]
    mixed = profile_result(tmp_path / "tpc.json", [row("stock", 0, tokens=(5, 5)), adaptive_row(0.5, [2, 3, 4, 5]),
                                                   adaptive_row(0.9, [1, 1, 1, 5])])
    panel = plots.figure("tokens", [mixed]).panels[0]
    boxes = by_label(panel)
    assert set(boxes) == {"stock", "delta=0.5", "delta=0.9"}  # K is the same in both rows
    assert boxes["delta=0.5"].boxes[0] == {"med": 5, "q1": 5, "q3": 5, "whislo": 5, "whishi": 5, "mean": 5}
    # images 2, 3, 4, 5: one per one-token bin; the first quartile is image 1 of 4 (2), the third image 3 (4)
    assert boxes["delta=0.5"].boxes[1] == {"med": 3.5, "q1": 2, "q3": 4, "whislo": 2, "whishi": 5, "mean": 3.5}
    assert boxes["delta=0.9"].boxes[1] | {"med": None} == {"med": None, "q1": 1, "q3": 1, "whislo": 1, "whishi": 5, "mean": 2.0}
    assert boxes["delta=0.5"].y == [5.0, 3.5]
    assert panel.xlabel == "block"
    after = dict(adaptive_row(0.5, [2, 3, 4, 5]), tokens=[5.0, 3.5, 3.0])  # ATS also counts what leaves the last
    after["tokens_dist"].append(after["tokens_dist"][1])
    path = profile_result(tmp_path / "ats.json", [row("stock", 0, tokens=(5, 5)), after])
    assert plots.figure("tokens", [path]).panels[0].xlabel == "block (3: leaving the last block)"


def test_quartiles_of_wide_bins_are_interpolated_and_kept_around_the_median(tmp_path):
    # 4 images in bins [0, 10) (one) and [10, 20) (three): image 1 of 4 is the top of bin 1 (9), image 3 is
    # 2 of the 3 into bin 2 (10 + 9 * 2/3)
    assert plots.quantile([0, 10, 20], [1, 3], 0.25) == 9 and plots.quantile([0, 10, 20], [1, 3], 0.75) == 16
    row = adaptive_row(0.5, [2, 3, 4, 5], hist={"edges": [0, 10, 20], "counts": [1, 3]})
    box = plots.box_stats(row["tokens_dist"][1], tmp_path, row, 1)
    assert (box["q1"], box["med"], box["q3"]) == (3.5, 3.5, 16)  # 9 is above the median: clipped to it


def test_a_file_with_only_the_stock_model_says_what_to_measure(tmp_path):
    alone = profile_result(tmp_path / "stock.json", [row("stock", 0, img_s=1.0, gmacs=4.0, acc=80.0)])
    for kind in ("tokens", "tradeoff", "speedup"):
        with pytest.raises(GtpcliError, match="only the stock model was measured.*--method NAME"):
            plots.figure(kind, [alone])


def test_tokens_of_an_adaptive_row_without_its_distribution_is_an_error(tmp_path):
    broken = adaptive_row(0.5, [1, 3])
    del broken["tokens_dist"][1]["hist"]
    path = profile_result(tmp_path / "x.json", [broken])
    with pytest.raises(GtpcliError, match=r"tokens_dist\[1\] lacks 'hist'"):
        plots.figure("tokens", [path])
    del broken["tokens_dist"]
    path = profile_result(tmp_path / "y.json", [broken])
    with pytest.raises(GtpcliError, match="no per-block 'tokens_dist'"):
        plots.figure("tokens", [path])


def trace_file(path, method, shares, forward_ms=100.0):
    stages = [{"stage": name, "ms": share * forward_ms, "share": share} for name, share in shares.items()]
    data = {"model": "deit_s", "method": method, "P": 8, "device": "cpu", "batch_size": 16, "forward_ms": forward_ms,
            "stages": stages, "rows": stages}
    path.write_text(json.dumps(data))
    return path


def test_stages_stack_each_trace_backbone_first_then_each_methods_own(tmp_path):
    gtp = trace_file(tmp_path / "gtp.json", "gtp", {"attention": 0.5, "gtp.select": 0.1, "mlp": 0.3, "other": 0.1})
    tome = trace_file(tmp_path / "tome.json", "tome", {"attention": 0.4, "tome.match": 0.2, "mlp": 0.3, "other": 0.1},
                      forward_ms=80.0)
    panel, own = plots.figure("stages", [gtp, tome]).panels
    assert [s.label for s in panel.series] == ["attention", "mlp", "gtp.select", "tome.match", "other"]
    assert [s.label for s in own.series] == ["gtp.select", "tome.match"]  # alone, on a scale of their own
    found = by_label(panel)
    assert found["gtp.select"].y == [10.0, 0.0] and found["tome.match"].y == [0.0, 20.0]
    assert all(s.mark == "bar" for s in panel.series)
    assert [sum(s.y[at] for s in panel.series) for at in (0, 1)] == [pytest.approx(100.0)] * 2
    assert panel.xticks == ["gtp P=8\n100 ms", "tome P=8\n80 ms"]
    own = json.loads(tome.read_text()) | {"method": "evit", "P": None, "setting": "keep 0.7"}
    tome.write_text(json.dumps(own))
    assert plots.figure("stages", [gtp, tome]).panels[0].xticks[1] == "evit keep 0.7\n80 ms"


# --- gap: where the ideal went, from a hand-written compare result and a trace ----------------------------------

def ideal_gap(parts, ideal_ms=80.0, ideal=1.25, measured=1.1):
    """A breakdown as measure/gap.py writes it: the parts add up to the gap."""
    gap = round(sum(parts.values()), 3)
    return {"stock_ms": 100.0, "measured_ms": ideal_ms + gap, "ideal_ms": ideal_ms, "gap_ms": gap,
            "ideal_speedup": ideal, "measured_speedup": measured, "mac_ratios": {"attention": 0.8, "mlp": 0.7},
            "mac_ratios_from": "stages", "parts": {name: {"ms": ms, "share": ms / gap} for name, ms in parts.items()}}


def gap_row(target, method, setting, parts=None):
    row = {"model": "deit_s", "target_gmacs": target, "method": method, "setting": setting, "P": setting.get("P", 0),
           "hparams": {}, "gmacs": 3.0, "img_s": 100.0}
    return row | ({"ideal_gap": ideal_gap(parts)} if parts is not None else {})


def gap_file(path):
    """Two targets: at 3.0 GTP (a negative MLP part), random measured without a breakdown and the resolution
    baseline; at 2.6 GTP alone."""
    rows = [gap_row(3.0, "stock", {}),
            gap_row(3.0, "gtp", {"P": 11}, {"own_stages": 8.0, "attention": 4.0, "mlp": -2.5, "rest": 1.0}),
            gap_row(3.0, "random", {"P": 11}),
            gap_row(3.0, "resolution", {"img_size": 176}, {"own_stages": 0.0, "attention": 3.0, "mlp": 1.0,
                                                           "rest": -0.5}),
            gap_row(2.6, "stock", {}),
            gap_row(2.6, "gtp", {"P": 14}, {"own_stages": 9.0, "attention": 6.0, "mlp": 3.0, "rest": 0.25})]
    path.write_text(json.dumps({"model": "deit_s", "weights": "random weights", "env": ENV, "command": "compare",
                                "targets_gmacs": [3.0, 2.6], "rows": rows}))
    return path


def test_gap_stacks_each_rows_parts_as_the_json_holds_them_one_panel_per_target(tmp_path):
    path = gap_file(tmp_path / "compare.json")
    rows = json.loads(path.read_text())["rows"]
    fig = plots.figure("gap", [path])
    assert [p.title for p in fig.panels] == ["deit_s at 3 GMACs", "deit_s at 2.6 GMACs"]
    for panel, target in zip(fig.panels, (3.0, 2.6)):
        drawn = [r for r in rows if r["target_gmacs"] == target and "ideal_gap" in r]  # random has no breakdown
        found = by_label(panel)
        for name, label in plots.GAP_PARTS.items():
            assert found[label].mark == "bar" and found[label].y == [r["ideal_gap"]["parts"][name]["ms"] for r in drawn]
        total = found["gap: measured - ideal"]
        assert total.mark == "total" and total.y == [r["ideal_gap"]["gap_ms"] for r in drawn]
        for at in range(len(drawn)):
            assert sum(found[label].y[at] for label in plots.GAP_PARTS.values()) == pytest.approx(total.y[at])
    assert fig.panels[0].xticks == ["gtp P=11\n1.25x -> 1.10x", "resolution img_size=176\n1.25x -> 1.10x"]
    assert by_label(fig.panels[0])["MLP"].y == [-2.5, 1.0] and "random" not in " ".join(fig.panels[0].xticks)
    assert "Test CPU" in fig.caption and "stack down from 0" in fig.caption


def test_negative_parts_stack_down_from_zero_and_positive_ones_up(tmp_path):
    from matplotlib.figure import Figure as Canvas

    from gtpcli.report import draw

    fig = plots.figure("gap", [gap_file(tmp_path / "compare.json")])
    ax = Canvas().subplots()
    draw.draw_panel(ax, fig.panels[0], draw.colour_map(fig), draw.hatch_map(fig))
    gtp = sorted((p.get_y(), p.get_height()) for p in ax.patches if abs(p.get_x() + p.get_width() / 2) < 1e-9)
    # own 8 from 0, attention 4 on top of it, rest 1 on top of both; the MLP's -2.5 hangs below 0
    assert gtp == [(0.0, -2.5), (0.0, 8.0), (8.0, 4.0), (12.0, 1.0)]
    assert any(line.get_ydata()[0] == 0.0 for line in ax.get_lines())  # the zero line: parts below it are gains


def test_gap_of_a_trace_is_one_bar(tmp_path):
    path = trace_file(tmp_path / "t.json", "gtp", {"attention": 0.6, "mlp": 0.4})
    data = json.loads(path.read_text()) | {"ideal_gap": ideal_gap({"own_stages": 5.0, "attention": 2.0, "mlp": 1.0,
                                                                   "rest": 0.5})}
    path.write_text(json.dumps(data))
    (panel,) = plots.figure("gap", [path]).panels
    assert panel.xticks == ["gtp P=8\n1.25x -> 1.10x"] and by_label(panel)["own stages"].y == [5.0]
    assert by_label(panel)["gap: measured - ideal"].y == [8.5]


def test_gap_says_in_one_line_what_it_cannot_draw(measured, tmp_path):
    path = gap_file(tmp_path / "compare.json")
    data = json.loads(path.read_text())
    with pytest.raises(GtpcliError, match="is a gtpcli profile result; --kind gap reads gtpcli compare results"):
        plots.figure("gap", [measured])
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data | {"rows": [{k: v for k, v in r.items() if k != "ideal_gap"} for r in data["rows"]]}))
    with pytest.raises(GtpcliError, match="no row has a breakdown .ideal_gap.; measure it with gtpcli compare"):
        plots.figure("gap", [bare])
    data["rows"][1]["ideal_gap"]["parts"]["mlp"]["ms"] = "a lot"
    path.write_text(json.dumps(data))
    with pytest.raises(GtpcliError, match=r"rows\[1\]\.ideal_gap lacks gap_ms or parts"):
        plots.figure("gap", [path])
    with pytest.raises(GtpcliError, match="this trace has no ideal_gap"):
        plots.figure("gap", [trace_file(tmp_path / "t.json", "gtp", {"attention": 1.0})])


def test_a_kind_refuses_the_results_of_another_command(measured, tmp_path):
    trace = trace_file(tmp_path / "t.json", "gtp", {"attention": 1.0})
    with pytest.raises(GtpcliError, match="is a gtpcli trace result; --kind tradeoff reads gtpcli profile"):
        plots.figure("tradeoff", [trace])
    with pytest.raises(GtpcliError, match="is a gtpcli profile result; --kind stages reads gtpcli trace"):
        plots.figure("stages", [measured])


def valid(path):
    data = path.read_bytes()
    if path.suffix == ".png":
        from PIL import Image

        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(path) as image:
            image.verify()
            return image.size
    if path.suffix == ".pdf":
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        return None
    root = ET.fromstring(data)
    assert root.tag.endswith("svg")
    return None


@pytest.mark.parametrize("kind", list(plots.KINDS))
def test_every_kind_writes_png_svg_and_pdf(kind, measured, tmp_path):
    inputs = {"overhead": [complexity_file(tmp_path / "c.json", [197, 785], [384])[0]],
              "gap": [gap_file(tmp_path / "compare.json")],
              "stages": [trace_file(tmp_path / "t.json", "gtp", {"attention": 0.6, "gtp.select": 0.1, "other": 0.3})],
              "tokens": [measured, profile_result(tmp_path / "tpc.json", [adaptive_row(0.5, [2, 3, 4, 5]), adaptive_row(0.9, [1, 1, 1, 5])])]}
    for suffix in ("png", "svg", "pdf"):
        out = tmp_path / f"fig.{suffix}"
        result = runner.invoke(app, ["plot", *map(str, inputs.get(kind, [measured])), "--kind", kind, "-o", str(out)])
        assert result.exit_code == 0, result.output
        size = valid(out)
        if size:
            assert 300 < size[0] < 2000 and 300 < size[1] < 1200  # about 100 dpi, not a poster


def test_plot_json_is_the_data_it_draws(measured, tmp_path):
    out = tmp_path / "fig.json"
    assert runner.invoke(app, ["plot", str(measured), "--kind", "speedup", "-o", str(out)]).exit_code == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "speedup" and data == plots.figure("speedup", [measured]).to_dict()


def test_plot_errors_are_one_line_and_exit_2(measured, tmp_path):
    for args, says in (
        (["--kind", "pie", "-o", str(tmp_path / "f.png")], "unknown --kind 'pie'"),
        (["--kind", "tradeoff", "-o", str(tmp_path / "f.jpg")], "'.jpg'"),
        (["--kind", "overhead", "-o", str(tmp_path / "f.png")], "--kind overhead reads gtpcli complexity"),
    ):
        result = runner.invoke(app, ["plot", str(measured), *args])
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, result.output
    missing = runner.invoke(app, ["plot", str(tmp_path / "nope.json"), "-o", str(tmp_path / "f.png")])
    assert missing.exit_code == 2 and "not found" in missing.output
    (tmp_path / "list.json").write_text("[1, 2]")
    odd = runner.invoke(app, ["plot", str(tmp_path / "list.json"), "-o", str(tmp_path / "f.png")])
    assert odd.exit_code == 2 and "not a gtpcli result" in odd.output
    edited = json.loads(measured.read_text())
    edited["rows"][2]["acc"] = "79 %"
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    odd = runner.invoke(app, ["plot", str(tmp_path / "edited.json"), "-o", str(tmp_path / "f.png")])
    assert odd.exit_code == 2 and "rows[2].acc is '79 %', not a number" in odd.output, odd.output
    for kind, path in (("overhead", complexity_file(tmp_path / "c.json", [197, 785], [384])[0]),
                       ("tokens", profile_result(tmp_path / "t.json", [adaptive_row(0.5, [2, 3])]))):
        data = json.loads(path.read_text())
        if kind == "overhead":
            data["rows"][1]["gtp_macs"] = "many"
        else:
            data["rows"][0]["tokens_dist"][1]["p50"] = None
        path.write_text(json.dumps(data))
        bad = runner.invoke(app, ["plot", str(path), "--kind", kind, "-o", str(tmp_path / "f.png")])
        assert bad.exit_code == 2 and ("'many'" in bad.output or "tokens_dist[1]" in bad.output), bad.output
    assert not (tmp_path / "f.png").exists()


def test_complexity_plot_writes_the_figure_and_refuses_a_bad_suffix_first(tmp_path):
    out = tmp_path / "fig9.png"
    result = runner.invoke(app, ["complexity", "--N", "197..1025:64", "--C", "768", "--plot", str(out)])
    assert result.exit_code == 0, result.output
    valid(out)
    data = tmp_path / "fig9.json"
    assert runner.invoke(app, ["complexity", "--C", "192..1536:192", "--N", "197", "--plot", str(data)]).exit_code == 0
    assert json.loads(data.read_text())["panels"][0]["xlabel"] == "C (channels)"
    bad = runner.invoke(app, ["complexity", "--N", "197", "--C", "768", "--plot", str(tmp_path / "f.gif")])
    assert bad.exit_code == 2 and "--plot" in bad.output


def test_complexity_and_plot_data_import_neither_torch_nor_matplotlib(measured):
    code = ("import sys; from typer.testing import CliRunner; from gtpcli.cli import app; "
            "r = CliRunner().invoke(app, ['complexity', '--N', '785', '--C', '768']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['plot', '--help']); assert r.exit_code == 0, r.output; "
            f"from gtpcli.report import plots; plots.figure('tradeoff', [{str(measured)!r}]); "
            "assert not {'torch', 'timm', 'matplotlib'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
