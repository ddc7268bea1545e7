"""GTP-ViT's Tables 2 (DeiT-S) and 3 (DeiT-B) as data: each method's setting per GMACs bin (the paper's
appendix B, Tables 8 and 9) and its published figures, for `gtpcli profile --bins paper`.

The published figures are reference columns, never results: A6000, batch 128; `acc` without finetuning,
`acc_ft` after 30 epochs of finetuning (Table 2 only); `ratio` = img/s over the slowest method of the bin, as
printed, except the two misprints corrected here (see NOTES). DyViT and Tri-Level need training: they are
shown as published, never run. No torch here.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import GtpcliError

SOURCE = "GTP-ViT Tables 2/3 (A6000, batch 128; each baseline's setting from Tables 8/9)"

# Per backbone (timm name): bins, then per method its setting per bin and the published figures.
TABLES: dict[str, dict[str, Any]] = {
    "deit_small_patch16_224": {
        "table": "Table 2", "bins": [3.5, 3.0, 2.6, 2.3],
        "methods": {
            "gtp": {"settings": [{"P": 8}, {"P": 11}, {"P": 14}, {"P": 16}],
                    "acc": [79.5, 79.1, 78.3, 77.8], "acc_ft": [79.7, 79.5, 79.1, 78.6],
                    "img_s": [1581.9, 1784.8, 2134.3, 2304.7], "ratio": [1.39, 1.43, 1.59, 1.61]},
            "tome": {"settings": [{"P": 8}, {"P": 11}, {"P": 14}, {"P": 16}],
                     "acc": [79.4, 79.2, 78.6, 78.1], "acc_ft": [79.7, 79.4, 78.9, 78.4],
                     "img_s": [1536.7, 1746.0, 1934.0, 2154.7], "ratio": [1.35, 1.40, 1.44, 1.51]},
            "evit": {"settings": [{"keep_rate": k} for k in (0.8, 0.7, 0.6, 0.5)],
                     "acc": [79.2, 78.5, 76.8, 74.1], "acc_ft": [79.8, 79.5, 78.9, 78.5],
                     "img_s": [1600.5, 1852.3, 2144.5, 2393.8], "ratio": [1.40, 1.48, 1.60, 1.67]},
            "evo": {"settings": [{"keep_ratio": p} for p in (0.7, 0.5, 0.4, 0.3)],
                    "acc": [79.0, 77.4, 75.0, 72.1], "acc_ft": [78.4, 78.2, 78.0, 77.7],
                    "img_s": [1439.3, 1655.4, 1927.9, 2016.7], "ratio": [1.26, 1.33, 1.44, 1.41]},
            "ats": {"settings": [{"layers": s} for s in ("7-11", "6-11", "5-11", "3-11")],
                    "acc": [79.5, 79.2, 78.6, 78.2], "acc_ft": [79.7, 79.7, 79.0, 78.6],
                    "img_s": [1140.6, 1248.1, 1343.0, 1429.4], "ratio": [1.00, 1.00, 1.00, 1.00]},
            "dyvit": {"settings": [{"rho": r} for r in (0.8, 0.7, 0.6, 0.5)],
                      "acc": [74.0, 67.4, 58.3, 51.7], "acc_ft": [79.6, 79.3, 78.5, 77.5],
                      "img_s": [1478.4, 1700.1, 1980.9, 2217.7], "ratio": [1.30, 1.36, 1.47, 1.55]},
            "tri_level": {"settings": [{"R_T": r} for r in (0.8, 0.7, 0.6, 0.5)],
                          "acc": [67.6, 67.6, 67.6, 67.6], "acc_ft": [79.5, 79.1, 78.8, 78.1],
                          "img_s": [1345.9, 1551.2, 1793.8, 2013.2], "ratio": [1.18, 1.24, 1.34, 1.41]},
        },
    },
    "deit_base_patch16_224": {
        "table": "Table 3", "bins": [15.3, 13.1, 11.6, 9.8, 8.8],
        "methods": {
            "gtp": {"settings": [{"P": p} for p in (4, 8, 11, 14, 16)], "acc": [81.8, 81.5, 80.9, 80.0, 78.3],
                    "img_s": [449.1, 521.8, 601.8, 703.6, 778.5], "ratio": [1.22, 1.28, 1.33, 1.35, 1.43]},
            "tome": {"settings": [{"P": p} for p in (4, 8, 11, 14, 16)], "acc": [81.6, 81.2, 80.6, 79.5, 77.8],
                     "img_s": [435.1, 504.9, 584.5, 678.6, 764.0], "ratio": [1.18, 1.24, 1.29, 1.31, 1.40]},
            "evit": {"settings": [{"keep_rate": k} for k in (0.9, 0.8, 0.7, 0.6, 0.5)],
                     "acc": [81.7, 81.3, 80.5, 78.7, 75.1], "img_s": [447.2, 513.0, 593.2, 685.4, 787.4],
                     "ratio": [1.21, 1.26, 1.31, 1.32, 1.44]},
            "evo": {"settings": [{"keep_ratio": p} for p in (0.8, 0.7, 0.5, 0.4, 0.3)],
                    "acc": [81.5, 80.9, 79.1, 75.8, 60.6], "img_s": [430.6, 492.2, 570.2, 665.6, 736.6],
                    "ratio": [1.17, 1.21, 1.26, 1.28, 1.35]},
            "ats": {"settings": [{"layers": s} for s in ("9-11", "8-11", "6-11", "3-11", "1-11")],
                    "acc": [81.8, 81.7, 81.4, 80.5, 79.6], "img_s": [368.3, 407.9, 453.7, 519.6, 545.2],
                    "ratio": [1.00, 1.00, 1.00, 1.00, 1.00]},
            "dyvit": {"settings": [{"rho": r} for r in (0.9, 0.8, 0.7, 0.6, 0.5)],
                      "acc": [79.9, 77.7, 75.5, 69.5, 50.2], "img_s": [420.0, 489.0, 579.7, 676.2, 784.2],
                      "ratio": [1.14, 1.20, 1.28, 1.30, 1.44]},
            "tri_level": {"settings": [{"R_T": r} for r in (0.9, 0.8, 0.7, 0.6, 0.5)],
                          "acc": [64.6] * 5, "img_s": [398.9, 466.7, 539.7, 622.9, 707.7],
                          "ratio": [1.08, 1.14, 1.19, 1.20, 1.30]},
        },
    },
}

PAPER_ONLY = ("dyvit", "tri_level")  # need training (learned predictors; a training-time method): never run
TITLES = {"gtp": "GTP", "tome": "ToMe", "evit": "EViT", "evo": "Evo-ViT", "ats": "ATS", "dyvit": "DyViT",
          "tri_level": "Tri-Level"}
NOTES = {
    "deit_small_patch16_224": [
        "Paper ratios corrected from its own img/s: Tri-Level at 3.5 GMACs is printed x1.08 (1345.9 / 1140.6 = "
        "x1.18), DyViT at 2.3 GMACs x1.48 (2217.7 / 1429.4 = x1.55).",
        "Evo-ViT's 3.5-GMACs finetuned accuracy (78.4) is printed below its accuracy without finetuning (79.0).",
    ],
    "deit_base_patch16_224": [
        "Table 3 has no finetuned column.",
        "Evo-ViT's official stage-wise schedule misses three of Table 3's bins analytically: p = 0.7 gives 14.00 "
        "GMACs (bin 13.1), 0.4 gives 10.49 (bin 9.8), 0.3 gives 9.33 (bin 8.8, nearer 9.8): GTP's authors ran "
        "some other Evo-ViT schedule on DeiT-B, which the paper does not give.",
    ],
}
# (backbone, method, bin index) whose analytic GMACs are not within MISS_GMACS of the bin (see NOTES)
MISSES = {("deit_base_patch16_224", "evo", 1), ("deit_base_patch16_224", "evo", 3), ("deit_base_patch16_224", "evo", 4)}
MISS_GMACS = 0.35


def table_for(timm_name: str) -> dict[str, Any]:
    try:
        return TABLES[timm_name]
    except KeyError:
        raise GtpcliError(f"--bins paper: GTP's Tables 2/3 cover deit_s and deit_b only, not {timm_name}") from None


def runnable(timm_name: str) -> list[str]:
    """The methods of the backbone's table that gtpcli can run, in the table's order."""
    return [m for m in table_for(timm_name)["methods"] if m not in PAPER_ONLY]


def points(timm_name: str, methods: Sequence[str]) -> list[tuple[str, int | None, dict[str, Any], float]]:
    """(method, P, the method's setting, nominal GMACs) for every bin of the backbone's table, bin by bin."""
    table = table_for(timm_name)
    missing = [m for m in methods if m not in table["methods"] or m in PAPER_ONLY]
    if missing:
        raise GtpcliError(f"--bins paper: {', '.join(missing)} has no published setting in {table['table']} that "
                          f"gtpcli runs (choose from {', '.join(runnable(timm_name))})")
    found = []
    for index, nominal in enumerate(table["bins"]):
        for method in methods:
            setting = dict(table["methods"][method]["settings"][index])
            found.append((method, setting.pop("P", None), setting, nominal))
    return found


def add_bin_columns(rows: list[dict[str, Any]], timm_name: str) -> list[dict[str, Any]]:
    """Per binned row: speed over the slowest measured method of its bin (the paper's convention) and the
    paper's figures for that method and bin."""
    table = table_for(timm_name)
    for row in rows:
        if row.get("bin_gmacs") is None:
            continue
        same_bin = [r["img_s"] for r in rows if r.get("bin_gmacs") == row["bin_gmacs"] and r.get("img_s")]
        row["bin_ratio"] = round(row["img_s"] / min(same_bin), 3) if row.get("img_s") and same_bin else None
        index = table["bins"].index(row["bin_gmacs"])
        published = table["methods"][row["method"]]
        for key in ("acc", "acc_ft", "img_s", "ratio"):
            if key in published:
                row[f"paper_{key}"] = published[key][index]
        row["paper_source"] = f"{SOURCE}, {table['table']}"
    return rows


def reference_rows(timm_name: str, measured: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The published rows of the methods this run did not measure, for the table only."""
    table = table_for(timm_name)
    rows = []
    for method in [m for m in table["methods"] if m not in measured]:
        published = table["methods"][method]
        for index, nominal in enumerate(table["bins"]):
            rows.append({"method": method, "bin_gmacs": nominal, "setting": published["settings"][index],
                         **{f"paper_{k}": published[k][index] for k in ("acc", "acc_ft", "img_s", "ratio")
                            if k in published}})
    return rows
