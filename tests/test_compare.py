"""`gtpcli compare`'s plan (gtpcli/commands/compare.py): per target, every registered method at its solved
setting and the resolution baseline, as a table and as JSON; bad targets are one line each, bad input one
line and exit 2. Measuring the plan waits for the profile lane's interleaved rounds."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gtpcli import methods
from gtpcli.cli import app
from gtpcli.commands.compare import RESOLUTION, plan
from gtpcli.cost.analytic import Arch
from gtpcli.methods.solve import solve_all

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
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = cli("compare", MODEL, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
