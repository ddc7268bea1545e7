"""Benchmark of the reduction methods themselves (not a test): `python -m gtpcli.bench`.

Measures, on this machine: stock timm (fused attention), stock timm with explicit attention (what a
method that needs the attention map must pay), GTP and ToMe at several P; the ideal speed-up
GMACs(P=0)/GMACs(P) and how much of it each method reaches over the explicit baseline; and the share
of forward time spent in each method's own stages (GTP: graph, selection, propagation; ToMe: matching,
merging). Writes JSON next to the printed tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import backbones
from .measure import flops, speed, trace
from .reduce import patch, unpatch
from .report import console, table


def set_fused(model, fused: bool) -> None:
    for block in model.blocks:
        block.attn.fused_attn = fused


def bench_model(name: str, batch: int, Ps: list[int], share_P: int, methods: list[str], runs: int) -> list[dict]:
    model = backbones.create(name)
    size = backbones.image_size(model)
    timing = speed.Timing("cpu", "float32", batch_size=batch, warmup=1, runs=runs)
    one = torch.randn(1, 3, *size)
    base_macs = flops.count_macs(model, one).macs
    rows = []

    def record(label, method, P):
        t = speed.measure(model, size, timing)
        macs = flops.count_macs(model, one).macs
        row = {"model": name, "config": label, "method": method, "P": P, "batch": batch, "img_s": round(t.img_s, 2),
               "q1": round(t.q1, 2), "q3": round(t.q3, 2), "runs": t.runs, "gmacs": round(macs / 1e9, 3),
               "ideal_speedup": round(base_macs / macs, 3)}
        if P == share_P and method != "stock":
            times = trace.stage_times(model, torch.randn(batch, 3, *size), steps=2)
            row["stage_ms"] = {k: round(v, 2) for k, v in times.items()}
        rows.append(row)
        console(stderr=True).print(f"{name} {label}: {row['img_s']} img/s", highlight=False)

    record("stock (fused attention)", "stock", 0)
    set_fused(model, False)
    record("stock (explicit attention)", "stock", 0)
    set_fused(model, True)
    for method in methods:
        for P in Ps:
            patch(model, method, P=P)
            record(f"{method} P={P}", method, P)
            unpatch(model)
    explicit = rows[1]["img_s"]
    for row in rows:
        row["speedup_vs_explicit"] = round(row["img_s"] / explicit, 3)
        row["share_of_ideal"] = round(row["speedup_vs_explicit"] / row["ideal_speedup"], 3)
        if "stage_ms" in row:
            own = [k for k in row["stage_ms"] if k.startswith(row["method"] + ".")]
            row["own_stage_share"] = round(sum(row["stage_ms"][k] for k in own) / row["stage_ms"]["forward"], 4)
    return rows


def render(rows: list[dict]) -> None:
    columns = [("model", "left"), ("config", "left"), ("batch", "right"), ("img/s", "right"), ("IQR", "left"),
               ("GMACs", "right"), ("ideal", "right"), ("vs explicit", "right"), ("of ideal", "right"),
               ("own stages", "right"), ("stage ms (per forward)", "left")]
    cells = []
    for r in rows:
        stages = ", ".join(f"{k} {v}" for k, v in r.get("stage_ms", {}).items() if k not in ("attention", "mlp"))
        cells.append([r["model"], r["config"], r["batch"], r["img_s"], f"{r['q1']}-{r['q3']} ({r['runs']} runs)",
                      r["gmacs"], f"{r['ideal_speedup']:.2f}x", f"{r['speedup_vs_explicit']:.2f}x",
                      f"{r['share_of_ideal']:.0%}", f"{r['own_stage_share']:.1%}" if "own_stage_share" in r else "-",
                      stages or "-"])
    console().print(table("GTP and ToMe on CPU: throughput and the cost of the methods' own stages", columns, cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="deit_small only, fewer runs")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--output", type=Path, default=Path("gtpcli-results/bench.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = bench_model("deit_small_patch16_224", 32, [0, 4, 8, 14], 8, ["gtp", "tome"], args.runs)
    if not args.quick:
        rows += bench_model("vit_base_patch8_224", 4, [0, 20], 20, ["gtp", "tome"], max(3, args.runs // 2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2))
    render(rows)


if __name__ == "__main__":
    main()
