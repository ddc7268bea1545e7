"""GTP-ViT's ablation tables that report the best over the other settings (Table 4: graph type; Table 5:
attention sparsity and proportional attention) as data, and which of their rows a search reproduces.

Reference columns, never results: ImageNet-1K top-1 (%), no finetuning, the authors' code and grid. A row of
Table 4 is comparable with a search that holds the graph type fixed and searches the rest; a row of Table 5
with one that holds theta fixed (proportional attention on), and its `best_no_prop` row with a search over
theta with proportional attention off. No torch here.
"""

from __future__ import annotations

from typing import Any

P = [4, 8, 11, 14]
TABLE4 = {  # graph type; semantic graphs with M = 8; none = pruning without propagation
    "deit_small_patch16_224": {"mixed": [79.8, 79.5, 79.1, 78.3], "spatial": [79.8, 79.5, 78.9, 78.1],
                               "semantic": [79.8, 79.4, 79.0, 78.2], "none": [79.6, 79.2, 78.7, 77.6]},
    "deit_base_patch16_224": {"mixed": [81.7, 81.5, 80.9, 80.0], "spatial": [81.8, 81.4, 80.9, 79.8],
                              "semantic": [81.8, 81.5, 80.9, 80.0], "none": [81.7, 81.4, 80.7, 79.6]},
}
TABLE5 = {  # theta with proportional attention ("1.0": no sparsification), and the best theta without it
    "deit_small_patch16_224": {"1.0": [79.7, 79.2, 78.7, 77.6], "0.9": [79.7, 79.3, 79.0, 78.2],
                               "0.8": [79.7, 79.4, 79.0, 78.1], "0.7": [79.8, 79.4, 79.1, 78.2],
                               "0.6": [79.8, 79.5, 79.0, 78.3], "0.5": [79.8, 79.4, 79.0, 78.0],
                               "best_no_prop": [79.7, 79.3, 78.8, 77.8]},
    "deit_base_patch16_224": {"1.0": [81.7, 81.4, 80.7, 79.8], "0.9": [81.7, 81.4, 80.9, 80.0],
                              "0.8": [81.7, 81.5, 80.9, 79.9], "0.7": [81.7, 81.5, 80.9, 79.9],
                              "0.6": [81.8, 81.4, 80.9, 79.9], "0.5": [81.8, 81.5, 80.9, 80.0],
                              "best_no_prop": [81.8, 81.5, 80.9, 79.9]},
}
SOURCE = "no finetuning, best over the other settings, authors' code"


def comparable(timm_name: str, fixed: dict[str, Any], grid: dict[str, list]) -> dict[str, Any] | None:
    """The published row a GTP search reproduces, from what it holds `fixed` (set on the command line, not
    a profile's defaults) and what it searches (`grid`): {"label", "P", "acc"}; None when no ablation row
    matches (Table 1, the best over everything, is the profile's own reference)."""
    if "graph" in fixed and "graph" not in grid and timm_name in TABLE4:
        graph = fixed["graph"]
        return {"label": f"Table 4, graph {graph} ({SOURCE})", "P": P, "acc": TABLE4[timm_name][graph]}
    if timm_name not in TABLE5:
        return None
    if fixed.get("prop_attn") is False and "sparsity" in grid and "sparsity" not in fixed:
        return {"label": f"Table 5, best theta without proportional attention ({SOURCE})", "P": P,
                "acc": TABLE5[timm_name]["best_no_prop"]}
    held = fixed.get("sparsity") if "sparsity" not in grid else None
    theta = next((row for row in TABLE5[timm_name] if row != "best_no_prop" and float(row) == held), None)
    if theta is not None and fixed.get("prop_attn") is not False:
        return {"label": f"Table 5, theta {theta} with proportional attention ({SOURCE})", "P": P,
                "acc": TABLE5[timm_name][theta]}
    return None
