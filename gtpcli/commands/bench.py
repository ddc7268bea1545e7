"""`gtpcli bench`: the speed targets of GTP, checked with the tool users have (a benchmark, never a test).

Each case is a plain `gtpcli profile` run (its command is printed with the result): the stock model and the
methods at one P, timed in the same interleaved rounds on one set of weights (docs/timing.md), with their
counted GMACs. Read off its rows: the ideal speed-up GMACs(stock) / GMACs(P) and the share of it reached,
GTP's img/s over ToMe's as the median of their per-round ratios, and the p50-latency speed-up at batch 1;
then whether each target is met. `--tcvit`: GTP, ToMe and TC-ViT's three connectivity solvers at equal P,
each solver against the exact series, in the same rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..config.run import RunConfig


@dataclass(frozen=True)
class Case:
    """One `gtpcli profile` run at one P: its points (method, setting), the per-round ratios taken between
    them (column, config, over config) and the targets read off them (config, column, at least, what)."""

    model: str
    batch: int
    P: int
    points: tuple[tuple[str, dict[str, Any]], ...]
    versus: tuple[tuple[str, str, str], ...] = ()
    goals: tuple[tuple[str, str, float, str], ...] = ()

    def command(self, rounds: int | None, runs: int | None) -> str:
        methods = ",".join(dict.fromkeys(method for method, _ in self.points))
        extra = (f" --rounds {rounds}" if rounds else "") + (f" --runs {runs}" if runs else "")
        settings = [config(method, setting) for method, setting in self.points if setting]
        return (f"gtpcli profile {self.model} --method {methods} --P {self.P} --batch-size {self.batch}{extra}"
                + (f"  (and, in the same rounds, {', '.join(settings)})" if settings else ""))


def config(method: str, setting: dict[str, Any]) -> str:
    """A point's name in the bench: the method, and the values of its own setting ("tcvit lazy")."""
    return " ".join([method, *map(str, setting.values())])


GTP, TOME, TCVIT = "gtp", "tome", "tcvit"
AGAINST_TOME = (("vs_tome", GTP, TOME),)
CASES = (
    Case("deit_s", 16, 8, ((GTP, {}), (TOME, {})), AGAINST_TOME,
         ((GTP, "share_of_ideal", 0.95, "GTP's share of the ideal speed-up (GMACs ratio)"),
          (GTP, "vs_tome", 1.0, "GTP's img/s over ToMe's (median of per-round ratios)"))),
    Case("vit_base_patch8_224", 4, 20, ((GTP, {}), (TOME, {})), AGAINST_TOME,
         ((GTP, "speedup", 1.05, "GTP's speed-up over stock"),
          (GTP, "vs_tome", 0.9, "GTP's img/s over ToMe's (median of per-round ratios)"))),
    Case("deit_s", 1, 8, ((GTP, {}),), (),
         ((GTP, "latency_share_of_ideal", 0.85, "GTP's p50-latency speed-up over stock, as a share of the ideal"),)),
)
SOLVERS = ((TCVIT, {}), (TCVIT, {"connectivity": "lazy"}), (TCVIT, {"connectivity": "newton"}))
TCVIT_CASES = tuple(Case(model, batch, P, ((GTP, {}), (TOME, {})) + SOLVERS,
                         AGAINST_TOME + tuple(("vs_series", config(*solver), TCVIT) for solver in SOLVERS))
                    for model, batch, P in (("deit_s", 16, 8), ("deit_s", 16, 14), ("vit_base_patch8_224", 2, 20)))


def bench_result(run: RunConfig, quick: bool, tcvit: bool, advance: Callable[[str], None],
                 warn: Callable[[str], None]) -> dict[str, Any]:
    """Every case measured as `gtpcli profile` measures it, its columns, and the targets as data."""
    cases = (TCVIT_CASES if tcvit else CASES)[:1 if quick else None]
    rows, found, commands = [], [], []
    for case in cases:
        measured = case_rows(run, case, advance, warn)
        rows += measured
        found += targets(case, measured)
        commands.append(case.command(run.rounds, run.runs))
    return {"rows": rows, "targets": found, "commands": commands}


def case_rows(run: RunConfig, case: Case, advance: Callable[[str], None],
              warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """The profile rows of one case (stock first, then its points in order), with the columns its targets read."""
    from ..measure import sweep
    from .profile import sweep_config

    methods = ",".join(dict.fromkeys(method for method, _ in case.points))
    cfg = sweep_config(replace(run, model=case.model, method=methods, P=str(case.P), batch_size=str(case.batch)))
    cfg = replace(cfg, only=[(method, case.P, setting) for method, setting in case.points])
    rows = sweep.run(cfg, [], lambda rows: None, lambda label: advance(f"{case.model} batch {case.batch}: {label}"),
                     warn)
    labels = ["stock"] + [config(method, setting) for method, setting in case.points]
    return with_columns(case, [{**row, "case": f"{row['model']} batch {case.batch}", "config": label}
                               for row, label in zip(rows, labels)])


def with_columns(case: Case, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ideal speed-up and its share reached, the p50-latency speed-up, and the case's per-round ratios
    between its points (GTP over ToMe, a TC-ViT solver over the exact series)."""
    stock, by = rows[0], {row["config"]: row for row in rows}
    for row in rows:
        if row.get("gmacs") and stock.get("gmacs"):
            row["ideal_speedup"] = round(stock["gmacs"] / row["gmacs"], 3)
            row["share_of_ideal"] = round(row["speedup"] / row["ideal_speedup"], 3) if row.get("speedup") else None
        if row.get("latency_ms_p50") and stock.get("latency_ms_p50"):
            row["latency_speedup"] = round(stock["latency_ms_p50"] / row["latency_ms_p50"], 3)
            if row.get("ideal_speedup"):
                row["latency_share_of_ideal"] = round(row["latency_speedup"] / row["ideal_speedup"], 3)
    for column, ours, theirs in case.versus:
        if ours in by and theirs in by and ours != theirs:
            by[ours] |= versus(column, by[theirs], by[ours])
    return rows


def versus(key: str, reference: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """`row` over `reference` as the median of their per-round ratios (and its quartiles), when both were
    timed in the same interleaved rounds."""
    from ..measure import speed

    ours, theirs = row.get("round_img_s") or [], reference.get("round_img_s") or []
    if len(ours) < 2 or len(ours) != len(theirs):
        return {}
    found = speed.ratio(theirs, ours)
    return {key: round(found.median, 3), f"{key}_q1": round(found.q1, 3), f"{key}_q3": round(found.q3, 3)}


def targets(case: Case, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The case's targets: what its rows measured against each goal, and whether it is met."""
    by = {row["config"]: row for row in rows}
    found = []
    for label, column, goal, what in case.goals:
        measured = by.get(label, {}).get(column)
        found.append({"target": f"{case.model} batch {case.batch} P={case.P}: {what}", "column": column,
                      "measured": measured, "goal": f">= {goal}", "met": measured is not None and measured >= goal})
    return found


def render_bench(result: dict[str, Any], console) -> None:
    """The cases' rows, the targets, and the profile command of each case."""
    from ..report.compare import speedup_text
    from ..report.tables import table

    columns = [("case", "left"), ("config", "left"), ("P", "right"), ("GMACs", "right"), ("img/s", "right"),
               ("speed-up (quartiles)", "left"), ("ideal", "right"), ("of ideal", "right"), ("p50 ms", "right"),
               ("vs ToMe", "right"), ("vs series", "right")]
    cells = []
    for r in result["rows"]:
        cells.append([r["case"], r["config"], r["P"], _fmt(r.get("gmacs"), "{:.2f}"), _fmt(r.get("img_s"), "{:.1f}"),
                      speedup_text(r), _fmt(r.get("ideal_speedup"), "{:.2f}x"), _fmt(r.get("share_of_ideal"), "{:.0%}"),
                      _fmt(r.get("latency_ms_p50"), "{:.1f}"), _fmt(r.get("vs_tome"), "{:.2f}x"),
                      _fmt(r.get("vs_series"), "{:.2f}x")])
    rounds = next((r["rounds"] for r in result["rows"] if r.get("rounds")), "?")
    console.print(table(f"gtpcli bench: {rounds} interleaved rounds per case", columns, cells,
                        caption="speed-ups: median of per-round ratios to stock timm (! where the rounds disagree); "
                                "vs ToMe, vs series: median of per-round ratios in the same rounds"))
    if result["targets"]:
        console.print(table("Targets", [("target", "left"), ("measured", "right"), ("goal", "right"), ("met", "left")],
                            [[g["target"], _fmt(g["measured"], "{:.3f}"), g["goal"], "yes" if g["met"] else "NO"]
                             for g in result["targets"]]))
    console.print("\n".join(["each case as a plain profile run:", *result["commands"]]), highlight=False, soft_wrap=True)


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
