"""Benchmark of GTP and ToMe against the stock model (not a test): `python -m gtpcli.bench`
(`--tcvit`: GTP, ToMe and TC-ViT at equal P, and TC-ViT's exact series against its lazy path).

Every configuration of a backbone (stock timm with its fused attention, GTP and ToMe at each P) is timed
in interleaved rounds, so a slow phase of the machine hits all of them alike; each speed-up is the median
of per-round ratios, with its quartiles, and flagged when the rounds disagree. Next to it: the ideal
speed-up GMACs(stock)/GMACs(P) (fvcore), the share of it reached, GTP's img/s against ToMe's at equal P,
the share of forward time in each method's own stages (profiler), and whether issue 18's targets are met.
Writes JSON next to the printed tables.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from ..measure import flops, speed, trace
from ..methods.patching import patch
from ..models import backbones
from ..report.tables import console, table

STOCK = "stock"
# (timm model, batch size, P values, the P whose stage shares are profiled)
CASES = [("deit_small_patch16_224", 16, [8, 14], 8), ("deit_small_patch16_224", 32, [8, 14], 8),
         ("vit_base_patch8_224", 4, [20], 20)]


def bench_case(name: str, batch: int, Ps: list[int], share_P: int, rounds: int) -> list[dict]:
    """One row per configuration of one backbone and batch size, all timed in the same interleaved rounds."""
    model = backbones.create(name).eval()
    size = backbones.image_size(model)
    configs = {STOCK: model}
    for method in ("gtp", "tome"):
        for P in Ps:
            configs[f"{method} P={P}"] = patch(copy.deepcopy(model), method, P=P)
    seconds = speed.interleaved(configs, size, speed.Timing("cpu", "float32", batch_size=batch, warmup=1), rounds)
    one = torch.randn(1, 3, *size)
    stock_macs = flops.count_macs(model, one).macs
    rows = []
    for label, patched in configs.items():
        method, P = (STOCK, 0) if label == STOCK else (label.split()[0], int(label.split("=")[1]))
        macs = flops.count_macs(patched, one).macs
        speedup = speed.ratio(seconds[STOCK], seconds[label])
        row = {"model": name, "batch": batch, "config": label, "method": method, "P": P, "rounds": rounds,
               "img_s": round(batch / sorted(seconds[label])[len(seconds[label]) // 2], 2),
               "speedup": round(speedup.median, 3), "speedup_q1": round(speedup.q1, 3),
               "speedup_q3": round(speedup.q3, 3), "wide": speedup.wide, "gmacs": round(macs / 1e9, 3),
               "ideal_speedup": round(stock_macs / macs, 3)}
        row["share_of_ideal"] = round(row["speedup"] / row["ideal_speedup"], 3)
        if method == "gtp":
            versus = speed.ratio(seconds[f"tome P={P}"], seconds[label])
            row["vs_tome"], row["vs_tome_q1"], row["vs_tome_q3"] = (round(v, 3) for v in (versus.median, versus.q1, versus.q3))
        if method != STOCK and P == share_P:
            stage_ms = trace.stage_times(patched, torch.randn(batch, 3, *size), steps=2)
            own = sum(v for k, v in stage_ms.items() if k.startswith(method + "."))
            row["stage_ms"] = {k: round(v, 2) for k, v in stage_ms.items()}
            row["own_stage_share"] = round(own / stage_ms[trace.FORWARD], 4)
        rows.append(row)
        console(stderr=True).print(f"{name} batch {batch} {label}: {row['img_s']} img/s, {row['speedup']}x stock",
                                   highlight=False)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Issue 18's targets, each with the measured value and whether it is met."""
    out = []

    def add(what: str, value: float, goal: float, at_most: bool = False):
        met = value <= goal if at_most else value >= goal
        out.append({"target": what, "measured": value, "goal": f"{'<=' if at_most else '>='} {goal}", "met": met})

    for r in (r for r in rows if r["method"] == "gtp"):
        where = f"{r['model'].split('_patch')[0]} b{r['batch']} P={r['P']}"
        if "own_stage_share" in r:
            add(f"{where}: share of forward time in GTP's own stages", r["own_stage_share"], 0.05, at_most=True)
        if r["model"].startswith("vit_base_patch8"):
            add(f"{where}: GTP speed-up over stock", r["speedup"], 1.0)
            add(f"{where}: GTP img/s over ToMe's", r["vs_tome"], 0.85)
        else:
            add(f"{where}: GTP img/s over ToMe's", r["vs_tome"], 0.95)
            add(f"{where}: GTP's share of the ideal speed-up", r["share_of_ideal"], 0.90)
    return out


def render(rows: list[dict], goals: list[dict]) -> None:
    columns = [("model", "left"), ("batch", "right"), ("config", "left"), ("img/s", "right"),
               ("speed-up (IQR over rounds)", "left"), ("ideal", "right"), ("of ideal", "right"),
               ("GTP/ToMe", "right"), ("own stages", "right"), ("stage ms per forward", "left")]
    cells = []
    for r in rows:
        stages = ", ".join(f"{k} {v}" for k, v in r.get("stage_ms", {}).items() if "." in k)
        cells.append([r["model"], r["batch"], r["config"], r["img_s"],
                      f"{r['speedup']:.2f}x ({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f}){' wide' if r['wide'] else ''}",
                      f"{r['ideal_speedup']:.2f}x", f"{r['share_of_ideal']:.0%}",
                      f"{r['vs_tome']:.2f}x" if "vs_tome" in r else "-",
                      f"{r['own_stage_share']:.1%}" if "own_stage_share" in r else "-", stages or "-"])
    out = console()
    out.print(table(f"GTP and ToMe on CPU, {rows[0]['rounds']} interleaved rounds (speed-ups: median of "
                    "per-round ratios to stock timm, fused attention)", columns, cells))
    out.print(table("Targets (issue 18)", [("target", "left"), ("measured", "right"), ("goal", "right"),
                                           ("met", "left")],
                    [[g["target"], f"{g['measured']:.3f}", g["goal"], "yes" if g["met"] else "NO"] for g in goals]))


# TC-ViT (`--tcvit`): the three methods at equal P, and TC-ViT's exact dense series against its lazy path
TCVIT_CASES = [("deit_small_patch16_224", 16, 8), ("deit_small_patch16_224", 16, 14), ("vit_base_patch8_224", 2, 20)]


def bench_tcvit(name: str, batch: int, P: int, rounds: int) -> list[dict]:
    """Stock, GTP, ToMe, TC-ViT series / lazy / newton at one P, timed in the same interleaved rounds;
    lazy against series as a per-round ratio; the share of forward time in TC-ViT's own stages."""
    model = backbones.create(name).eval()
    size = backbones.image_size(model)
    configs = {STOCK: model}
    for label, method, hparams in (("gtp", "gtp", {}), ("tome", "tome", {}), ("tcvit series", "tcvit", {}),
                                   ("tcvit lazy", "tcvit", {"connectivity": "lazy"}),
                                   ("tcvit newton", "tcvit", {"connectivity": "newton"})):
        configs[label] = patch(copy.deepcopy(model), method, P=P, **hparams)
    seconds = speed.interleaved(configs, size, speed.Timing("cpu", "float32", batch_size=batch, warmup=1), rounds)
    one = torch.randn(1, 3, *size)
    rows = []
    for label, patched in configs.items():
        speedup = speed.ratio(seconds[STOCK], seconds[label])
        row = {"model": name, "batch": batch, "P": P, "config": label, "rounds": rounds,
               "img_s": round(batch / sorted(seconds[label])[len(seconds[label]) // 2], 2),
               "speedup": round(speedup.median, 3), "speedup_q1": round(speedup.q1, 3),
               "speedup_q3": round(speedup.q3, 3), "gmacs": round(flops.count_macs(patched, one).macs / 1e9, 3)}
        if label.startswith("tcvit"):
            versus = speed.ratio(seconds["tcvit series"], seconds[label])
            row["vs_series"], row["vs_series_q1"], row["vs_series_q3"] = (round(v, 3) for v in
                                                                          (versus.median, versus.q1, versus.q3))
            stage_ms = trace.stage_times(patched, torch.randn(batch, 3, *size), steps=2)
            own = sum(v for k, v in stage_ms.items() if k.startswith("tcvit."))
            row["stage_ms"] = {k: round(v, 2) for k, v in stage_ms.items()}
            row["own_stage_share"] = round(own / stage_ms[trace.FORWARD], 4)
        rows.append(row)
        console(stderr=True).print(f"{name} batch {batch} P={P} {label}: {row['img_s']} img/s", highlight=False)
    return rows


def render_tcvit(rows: list[dict]) -> None:
    columns = [("model", "left"), ("batch", "right"), ("P", "right"), ("config", "left"), ("GMACs", "right"),
               ("img/s", "right"), ("vs stock (IQR)", "left"), ("vs TC-ViT series (IQR)", "left"),
               ("own stages", "right"), ("stage ms per forward", "left")]
    cells = []
    for r in rows:
        stages = ", ".join(f"{k.split('.')[1]} {v}" for k, v in r.get("stage_ms", {}).items() if k.startswith("tcvit."))
        cells.append([r["model"].split("_patch")[0], r["batch"], r["P"], r["config"], r["gmacs"], r["img_s"],
                      f"{r['speedup']:.2f}x ({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f})",
                      f"{r['vs_series']:.2f}x ({r['vs_series_q1']:.2f}-{r['vs_series_q3']:.2f})" if "vs_series" in r else "-",
                      f"{r['own_stage_share']:.1%}" if "own_stage_share" in r else "-", stages or "-"])
    console().print(table(f"GTP, ToMe and TC-ViT on CPU at equal P, {rows[0]['rounds']} interleaved rounds "
                          "(medians of per-round ratios)", columns, cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="DeiT-S at batch 16 only")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per backbone")
    parser.add_argument("--output", type=Path, default=Path("gtpcli-results/bench.json"))
    parser.add_argument("--tcvit", action="store_true", help="the three methods at equal P, TC-ViT series vs lazy")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.tcvit:
        rows = []
        for name, batch, P in TCVIT_CASES[:1] if args.quick else TCVIT_CASES:
            rows += bench_tcvit(name, batch, P, args.rounds if "patch8" not in name else max(3, args.rounds // 2))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_name(args.output.stem + "-tcvit.json").write_text(json.dumps({"rows": rows}, indent=2))
        render_tcvit(rows)
        return
    rows = []
    for case in CASES[:1] if args.quick else CASES:
        rows += bench_case(*case, rounds=args.rounds if "patch8" not in case[0] else max(3, args.rounds // 2))
    goals = targets(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rows": rows, "targets": goals}, indent=2))
    render(rows, goals)


if __name__ == "__main__":
    main()
