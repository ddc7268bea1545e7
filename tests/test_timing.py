"""The timing protocol (docs/timing.md) on a simulated machine: interleaved rounds against the sequential
order, the statistics over rounds worked out by hand, and one set of weights serving every point."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gtpcli.cli import app
from gtpcli.commands import check as regress
from gtpcli.measure import speed, trace

runner = CliRunner()

# Eight configurations, seconds per batch on a quiet machine: stock first, then faster and faster points.
COSTS = {"stock": 1.0, **{f"P={P}": 1.0 - 0.06 * P for P in range(8)}}
PHASE = 40.0  # seconds: the machine alternates between full speed and half speed (another job takes it)


class Machine:
    """A simulated clock: a batch costs its configuration's seconds, twice that in a slow phase (decided when
    the batch starts), and every batch run is logged."""

    def __init__(self):
        self.now = 0.0
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now

    def setup(self, label: str) -> speed.Setup:
        def run(batch):
            slow = int(self.now // PHASE) % 2 == 1
            self.now += COSTS[label] * (2.0 if slow else 1.0)
            self.log.append(label)
        return speed.Setup(label, run, [[0]])   # one batch of one image


def speedups(rounds: int, runs: int = 24) -> dict[str, float]:
    machine = Machine()
    timing = speed.Timing(batch_size=1, warmup=0, runs=runs, rounds=rounds)
    timed = speed.rounds([machine.setup(label) for label in COSTS], timing, seed=0, clock=machine.clock)
    return {label: speed.speedup(timed["stock"], timed[label]).median for label in COSTS}


def test_interleaved_rounds_recover_every_true_ratio_where_the_sequential_order_does_not():
    true = {label: COSTS["stock"] / cost for label, cost in COSTS.items()}
    interleaved = speedups(rounds=24)
    assert all(abs(interleaved[label] / true[label] - 1) < 0.01 for label in COSTS), interleaved
    sequential = speedups(rounds=1)
    errors = [abs(sequential[label] / true[label] - 1) for label in COSTS]
    assert max(errors) > 0.4  # some point timed in a slow phase while stock ran in a fast one: 2x off


def test_one_round_is_the_sequential_order_and_more_rounds_shuffle_every_configuration_in():
    machine = Machine()
    speed.rounds([machine.setup(label) for label in COSTS], speed.Timing(batch_size=1, warmup=0, runs=3, rounds=1),
                 clock=machine.clock)
    assert machine.log == [label for label in COSTS for _ in range(3)]  # stock's batches, then each point's
    assert speed.schedule(4, 1) == [[0, 1, 2, 3]]
    order = speed.schedule(8, 6, seed=0)
    assert all(sorted(one) == list(range(8)) for one in order) and len({tuple(one) for one in order}) > 1
    assert order == speed.schedule(8, 6, seed=0) != speed.schedule(8, 6, seed=1)  # seeded: replayable


def test_each_round_times_an_equal_slice_of_every_configuration():
    machine = Machine()
    timing = speed.Timing(batch_size=1, warmup=1, runs=6, rounds=3)   # 2 batches per round
    timed = speed.rounds([machine.setup(label) for label in COSTS], timing, clock=machine.clock)
    assert machine.log[:len(COSTS)] == list(COSTS)  # the warm-up: each once, untimed
    rounds = [machine.log[len(COSTS) + at * 2 * len(COSTS):len(COSTS) + (at + 1) * 2 * len(COSTS)] for at in range(3)]
    for one in rounds:
        assert sorted(one) == sorted(label for label in COSTS for _ in range(2))
        assert all(one[at] == one[at + 1] for at in range(0, len(one), 2))  # a slice runs back to back
    assert all(len(t.seconds) == 3 and all(len(s) == 2 for s in t.seconds) for t in timed.values())


def test_quartiles_and_the_disagreement_flag_by_hand():
    assert speed.quartiles([1.4, 1.0, 1.2, 1.3, 1.1]) == pytest.approx((1.1, 1.2, 1.3))
    assert speed.quartiles([4.0, 1.0, 3.0, 2.0]) == pytest.approx((1.75, 2.5, 3.25))  # numpy's linear interpolation
    # per-round ratios 1.2, 1.1, 1.3, 1.0, 1.4: median 1.2, quartiles 1.1 and 1.3, 0.2 apart > 10% of 1.2
    wide = speed.ratio([10.0] * 5, [12.0, 11.0, 13.0, 10.0, 14.0])
    assert (wide.median, wide.q1, wide.q3) == pytest.approx((1.2, 1.1, 1.3)) and wide.disagree is True
    # 1.18 .. 1.22: quartiles 1.19 and 1.21, 0.02 apart < 0.12
    tight = speed.ratio([10.0] * 5, [12.0, 12.1, 11.9, 12.2, 11.8])
    assert (tight.q1, tight.q3) == pytest.approx((1.19, 1.21)) and tight.disagree is False
    assert speed.DISAGREE == 0.10
    one = speed.ratio([10.0], [12.0])
    assert one.median == pytest.approx(1.2) and one.q1 is None and one.disagree is None


def test_img_s_is_the_median_over_rounds_and_in_one_round_over_batches():
    rounds = speed.Timed(seconds=[[1.0, 1.0], [2.0, 2.0], [0.5, 1.5]], images=[4, 4])
    found = speed.throughput(rounds, 4)
    assert found.round_img_s == pytest.approx((4.0, 2.0, 4.0)) and found.img_s == pytest.approx(4.0)
    assert (found.q1, found.q3) == pytest.approx((3.0, 4.0)) and (found.rounds, found.runs) == (3, 6)
    sequential = speed.throughput(speed.Timed(seconds=[[1.0, 2.0, 4.0]], images=[4, 4, 4]), 4)
    assert sequential.img_s == pytest.approx(2.0) and sequential.rounds == 1   # 4, 2 and 1 img/s


def test_the_budget_never_asks_for_more_rounds_than_batches():
    default = speed.Timing.default("cpu")
    assert (default.runs, default.rounds, default.slice) == (20, 10, 2)
    assert default.budget(runs=3).timed_rounds == 3 and default.budget(runs=1).sequential
    assert default.budget(rounds=40).runs == 40 and default.budget(rounds=5).slice == 4
    with pytest.raises(Exception, match="at least 8 timed batches"):
        default.budget(runs=4, rounds=8)


def test_trace_shares_are_medians_over_passes_and_add_up():
    passes = [{"forward": 10.0, "attention": 4.0, "mlp": 5.0}, {"forward": 12.0, "attention": 5.0, "mlp": 6.0},
              {"forward": 30.0, "attention": 14.0, "mlp": 15.0}]   # the last pass ran in a slow phase
    forward, stages = trace.shares(passes)
    by = {s["stage"]: s for s in stages}
    assert forward == 12.0 and by["attention"]["ms"] == 5.0 and by["mlp"]["ms"] == 6.0 and by["other"]["ms"] == 1.0
    assert sum(s["share"] for s in stages) == pytest.approx(1.0, abs=1e-3)
    assert by["attention"]["share"] == pytest.approx(5 / 12, abs=1e-4)


def test_check_derives_the_speed_tolerance_from_the_spread_of_the_rounds():
    now = {"speedup": 1.25, "speedup_q1": 1.2, "speedup_q3": 1.3}      # 0.1 / 1.25 = 8%
    base = {"speedup": 1.3, "speedup_q1": 1.27, "speedup_q3": 1.33}    # 0.06 / 1.3 = 4.6%
    assert regress.speed_tolerance(now, base) == pytest.approx(0.126, abs=1e-3)
    assert regress.speed_tolerance({"speedup": 1.3}, {"speedup": 1.3}) == regress.SPREAD_FLOOR
    assert regress.judge(("m", "gtp", 8), "speedup", 1.3, 1.25, 0.126)["verdict"] == "pass"
    assert regress.judge(("m", "gtp", 8), "speedup", 1.3, 1.1, 0.126)["verdict"] == "fail"


def test_rounds_one_is_the_sequential_mode_and_the_caption_says_so(tmp_path):
    result = runner.invoke(app, ["profile", "deit_tiny_patch16_224", "--P", "0,1", "--img-size", "64", "--batch-size", "1",
                                 "--rounds", "1", "--runs", "2", "--warmup", "0", "--no-flops", "--output",
                                 str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    assert "timed in the sequential order (--rounds 1)" in " ".join(result.stdout.split())
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    stock = rows[0]
    for row in rows:
        assert row["rounds"] == 1 and row["runs"] == 2 and row["speedup_q1"] is None and row["rounds_disagree"] is None
        assert row["speedup"] == pytest.approx(row["img_s"] / stock["img_s"], rel=1e-2)  # a ratio of the medians


def test_interleaved_profile_rows_carry_the_rounds_and_one_model_serves_every_point(tmp_path, monkeypatch):
    seen = []
    real = speed.rounds

    def spy(setups, timing, **kwargs):
        seen.append([setup.run for setup in setups])
        return real(setups, timing, **kwargs)

    monkeypatch.setattr(speed, "rounds", spy)
    result = runner.invoke(app, ["profile", "deit_tiny_patch16_224", "--P", "0,1", "--method", "gtp,tome", "--img-size",
                                 "64", "--batch-size", "1", "--rounds", "3", "--runs", "3", "--warmup", "0", "--no-flops",
                                 "--format", "json", "--output", str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    [runs] = seen
    assert len(runs) == 5 and len({id(run) for run in runs}) == 1  # stock and 4 points: one model, its blocks swapped
    data = json.loads(result.stdout)
    assert data["env"]["rounds"] == 3 and data["env"]["disagree_margin"] == speed.DISAGREE
    for row in data["rows"]:
        assert row["rounds"] == 3 and row["runs"] == 3 and len(row["round_img_s"]) == 3
        per_round = speed.ratio(data["rows"][0]["round_img_s"], row["round_img_s"])
        assert row["speedup"] == pytest.approx(per_round.median, abs=2e-3)
        assert row["speedup_q1"] <= row["speedup"] <= row["speedup_q3"]
        assert row["rounds_disagree"] == ((row["speedup_q3"] - row["speedup_q1"]) > speed.DISAGREE * row["speedup"])


def test_bench_runs_its_cases_as_profile_runs_and_reads_the_targets_off_the_rows(tmp_path, monkeypatch):
    from gtpcli.commands import bench

    case = bench.Case("deit_tiny_patch16_224", 1, 4, (("gtp", {}), ("tome", {})), (("vs_tome", "gtp", "tome"),),
                      (("gtp", "vs_tome", 0.0, "GTP over ToMe"), ("gtp", "share_of_ideal", 100.0, "out of reach")))
    monkeypatch.setattr(bench, "CASES", (case,))
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--runs", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "gtpcli profile deit_tiny_patch16_224 --method gtp,tome --P 4 --batch-size 1 --runs 3" in result.stdout
    data = json.loads(out.read_text())
    stock, gtp, tome = data["rows"]
    assert (stock["method"], gtp["method"], tome["method"]) == ("stock", "gtp", "tome") and gtp["rounds"] == 3
    assert gtp["vs_tome"] == pytest.approx(speed.ratio(tome["round_img_s"], gtp["round_img_s"]).median, abs=2e-3)
    assert gtp["ideal_speedup"] == pytest.approx(stock["gmacs"] / gtp["gmacs"], abs=1e-3)
    assert [(t["measured"], t["met"]) for t in data["targets"]] == [(gtp["vs_tome"], True), (gtp["share_of_ideal"], False)]


def test_every_point_entered_in_any_order_computes_what_its_own_patched_copy_computes(small_vit, fresh, image):
    """One set of weights serves every point of the rounds: entering a point (a block swap, or a model-level
    patch) in a shuffled order gives exactly the forward of a copy patched with that point alone."""
    import torch

    from gtpcli.methods.patching import apply, attach

    points = [(None, None, {}), ("gtp", 2, {}), ("tpc", None, {"gate_center": -2.0, "kappa": 16}), ("tome", 2, {}),
              ("evit", 2, {})]
    x = image(small_vit, batch=2)
    with torch.inference_mode():
        alone = []
        for method, P, hparams in points:
            copy = fresh(small_vit)
            if method is not None:
                apply(copy, method, P, hparams)
            alone.append(copy(x))
        shared = fresh(small_vit)
        weights = [p.data_ptr() for p in shared.parameters()]
        enters = [attach(shared, method, P, hparams) for method, P, hparams in points]
        for order in speed.schedule(len(points), 4, seed=3):
            for at in order:
                enters[at]()
                assert torch.equal(shared(x), alone[at]), points[at]
        assert [p.data_ptr() for p in shared.parameters()] == weights
