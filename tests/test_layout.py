"""Every table gtpcli prints is readable at 80 and 100 columns: a table wider than the terminal is laid out
another way (transposed, or in blocks that repeat the row labels), never cut short with an ellipsis, and a
pipe gets the full layout however wide. The tables are real: results of real runs on small random-weight
ViTs (profile, trace, check, search), the analytic model (complexity), the built-in profiles."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from gtpcli.cli import app
from gtpcli.cost.analytic import Arch
from gtpcli.measure.complexity import complexity_result
from gtpcli.models.profiles import builtin_dir, load_profile
from gtpcli.report import markup, tables
from gtpcli.report.compare import render_plan
from gtpcli.report.layout import blocks

runner = CliRunner()
WIDTHS = (80, 100, 200)
# 64 px in 8 px patches: 65 tokens, enough for the main job's P = 0..14 over 4 blocks
TINY = ("name: tiny\nmodel: {timm: vit_tiny_patch16_224, img_size: 64, patch_size: 8, prefix_tokens: 1, "
        "embed_dim: 32, depth: 4, num_heads: 2, num_classes: 2}\nmethod: gtp\n")


def screen(render, result, width: int) -> str:
    """What a terminal of `width` columns shows (Rich's own capture)."""
    console = Console(width=width, record=True, file=io.StringIO())
    render(result, console)
    return console.export_text()


def built(render, result) -> list:
    """The tables a renderer builds, as Markdown and LaTeX read them: every cell in full."""
    collector = markup.Collector()
    render(result, collector)
    return [item for item in collector.items if not isinstance(item, str)]


def pieces(text: str) -> set[str]:
    """Every stretch of a line between two table rules, stripped: a cell's line as shown."""
    return {part.strip() for line in text.splitlines() for part in re.split("[│┃]", line)}


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_nothing_cut(render, result, width: int) -> str:
    """No ellipsis, no table wider than the screen; every header and cell of every table whole on one line;
    each caption whole, right below its table."""
    text = screen(render, result, width)
    assert "…" not in text
    shown = pieces(text)
    assert max(len(line) for line in text.splitlines() if line[:1] in "┏┃┡│└") <= width
    for t in built(render, result):
        headers, rows = markup.cells(t)
        for cell in headers + [c for row, _ in rows for c in row]:
            assert cell.strip() in shown, (width, cell)
        for words in (t.title, t.caption):
            assert words is None or flat(markup.plain(words)) in flat(text)
        if t.caption:   # right below the table (its last block) it qualifies
            opening = " ".join(markup.plain(t.caption).split()[:3])
            lines = text.splitlines()
            assert any(line.startswith(opening) and lines[at - 1].startswith("└") for at, line in enumerate(lines))
    return text


def assert_shown(text: str, numbers: list[str]) -> None:
    """Each formatted number of the result data is a cell, or part of one, in full."""
    shown = pieces(text)
    for number in numbers:
        assert number in shown or any(number in piece.split() for piece in shown), number


# --- complexity: the analytic model ----------------------------------------------------------------------

def complexity_numbers(result: dict) -> list[str]:
    numbers = []
    for r in result["rows"]:
        numbers += [str(r[k]) for k in "NCLHP"] + [f"{r[k] / 1e6:,.3f}" for k in result["tokens"]]
        numbers += [f"{r['ratio']:.2f}"] if r.get("ratio") else []
        numbers += [f"{r[k]:+,}" for k in r if k.endswith("_closed_form_diff") and r[k]]
        numbers += [f"{r['backbone_macs'] / 1e9:.3f}"] if "backbone_macs" in r else []
    return numbers


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("arch,Ns,Cs,Ps,model", [
    (Arch(N=1, C=1), [785], [768], [8], None),                 # the mission's example
    (Arch(N=1, C=1), [197], [384], [8], None),
    (Arch(N=1, C=1), [197], [384], list(range(15)), None),     # a P sweep: 15 rows
    (load_profile("deit_s").arch, [197], [384], list(range(15)), "deit_s"),  # with the backbone column
])
def test_complexity_is_whole_at_every_width(arch, Ns, Cs, Ps, model, width):
    result = complexity_result(arch, Ns, Cs, Ps, model)
    text = assert_nothing_cut(tables.render_complexity, result, width)
    assert_shown(text, complexity_numbers(result))


@pytest.mark.parametrize("width", WIDTHS)
def test_complexity_per_layer_tables_are_whole(width):
    result = complexity_result(Arch(N=1, C=1), [197], [384], [8], None, layers=True)
    text = assert_nothing_cut(tables.render_complexity, result, width)
    assert_shown(text, [f"{v:,}" for layer in result["rows"][0]["layers"] for k, v in layer.items()
                        if isinstance(v, int) and k not in ("layer", "N_l", "n_l")])


def test_complexity_leads_with_gtp_against_tome_where_it_must_split():
    """The mission's columns first: a split puts GTP and ToMe, exact and as printed, in the first block."""
    result = complexity_result(Arch(N=1, C=1), [197], [384], list(range(15)), None)
    text = screen(tables.render_complexity, result, 80)
    first = text[text.index("┏"):text.index("└")]
    assert all(h in first for h in ("GTP sum", "GTP Eq.15", "ToMe sum", "ToMe Eq.14"))
    assert "TC-ViT" not in first
    assert text.count("┏") > 1 and text.count("   N ┃") == text.count("┏")  # every block repeats N, C, L, H, P


def test_one_complexity_point_reads_down_one_column_at_80():
    result = complexity_result(Arch(N=1, C=1), [785], [768], [8], None)
    text = screen(tables.render_complexity, result, 80)
    assert text.count("┏") == 1
    assert any(re.match(r"[│┃] GTP sum +│ +527\.410 [│┃]", line) for line in text.splitlines())


# --- profile: a real sweep ---------------------------------------------------------------------------------

def run_sweep(folder: Path, *args: str) -> dict:
    """P = 0..14 of GTP on a small random-weight ViT, with the deit_s profile's published rows beside it
    (the longest row labels)."""
    reference = yaml.safe_load((builtin_dir() / "deit_s.yaml").read_text())["reference"]
    (folder / "tiny.yaml").write_text(TINY + yaml.safe_dump({"reference": reference}))
    found = runner.invoke(app, ["profile", str(folder / "tiny.yaml"), "--P", "0..14", *args, "--format", "json",
                                "--output", str(folder / "out.json")])
    assert found.exit_code == 0, found.output
    return json.loads(found.stdout)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Timed too (2 batches of 2): img/s, speed-ups and the widest cells, the latency percentiles."""
    return run_sweep(tmp_path_factory.mktemp("sweep"), "--batch-size", "2", "--runs", "2", "--warmup", "0")


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """MACs only, as `gtpcli profile deit_s --P 0..14 --no-speed`: the cells do not depend on timing noise."""
    return run_sweep(tmp_path_factory.mktemp("counted"), "--no-speed")


def profile_numbers(result: dict) -> list[str]:
    numbers = []
    for r in result["rows"]:
        numbers += [f"{r['gmacs']:.2f}"]
        numbers += [f"{r['img_s']:.1f}", f"{r['speedup']:.2f}x"] if r.get("img_s") is not None else []
        numbers += [f"{r['latency_ms_p50']:.1f}"] if r.get("latency_ms_p50") is not None else []
        numbers += [f"P={r['P']}"] if r["method"] != "stock" else []
        numbers += [f"{r['paper_img_s']:.1f}"] if r.get("paper_img_s") is not None else []
    return numbers


@pytest.mark.parametrize("width", WIDTHS)
def test_profile_sweep_is_whole_at_every_width(sweep, counted, width):
    for result in (sweep, counted):
        text = assert_nothing_cut(tables.render_profile, result, width)
        assert_shown(text, profile_numbers(result))


def header_widths(text: str) -> list[int]:
    """The widths of a table's columns (with padding and one rule) from its header line."""
    line = next(line for line in text.splitlines() if line.startswith("┃"))
    return [len(part) + 1 for part in line.strip("┃").split("┃")]


def test_the_sweep_keeps_the_papers_layout_exactly_while_it_fits(sweep):
    natural = screen(tables.render_profile, sweep, 10_000)
    fits = 1 + sum(header_widths(natural))
    assert fits > 100   # 15 values of P do not fit an ordinary terminal
    paper = screen(tables.render_profile, sweep, fits)
    header = [line for line in paper.splitlines() if line.startswith("┃") and "P=0" in line]
    assert len(header) == 1 and "P=14" in header[0] and paper.count("┏") == 1
    narrower = assert_nothing_cut(tables.render_profile, sweep, fits - 1)
    assert not any("P=0" in line and "P=14" in line for line in narrower.splitlines())  # laid out another way


def test_at_80_columns_the_sweep_takes_fewer_blocks_with_p_as_rows(counted):
    """As `gtpcli profile deit_s --P 0..14 --no-speed` shows it: the published row labels are too wide to
    leave room for more than a few P columns beside them, so P goes down the side, in fewer blocks."""
    widths = header_widths(screen(tables.render_profile, counted, 10_000))
    labels, per_block = widths[0], []
    for width in widths[1:]:   # the paper's layout, packed as tightly as it goes
        if per_block and 1 + labels + per_block[-1] + width <= 80:
            per_block[-1] += width
        else:
            per_block.append(width)
    text = screen(tables.render_profile, counted, 80)
    assert 1 < text.count("┏") < len(per_block)
    for P in range(15):
        assert len(re.findall(rf"^│ P={P} +│", text, re.M)) == text.count("┏")   # each block names every P


def test_blocks_are_as_few_as_fit_and_as_even_as_that_allows():
    assert blocks([11] + [9] * 15, 1, 80, [[at] for at in range(1, 16)]) == [
        [1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]     # 7 fit beside the labels: 7, 7, 1 is worse
    together = [[1, 2], [3, 4], [5], [6]]
    assert blocks([20, 20, 20, 20, 20, 20, 20], 1, 70, together) == [[1, 2], [3, 4], [5, 6]]  # pairs kept whole


def test_a_pipe_gets_the_full_layout_however_wide(tmp_path):
    """Not a terminal and no COLUMNS: one table as built, wider than any screen, nothing cut."""
    (tmp_path / "wide.yaml").write_text(TINY.replace("img_size: 64, patch_size: 8", "img_size: 64, patch_size: 4")
                                        .replace("depth: 4", "depth: 2"))
    found = runner.invoke(app, ["profile", str(tmp_path / "wide.yaml"), "--P", "0..30", "--no-speed",
                                "--output", str(tmp_path / "out.json")], env={"COLUMNS": None})
    assert found.exit_code == 0, found.output
    header = [line for line in found.stdout.splitlines() if line.startswith("┃") and "P=0" in line]
    assert len(header) == 1 and "P=30" in header[0] and len(header[0]) > 220
    assert "…" not in found.stdout


def test_columns_sets_the_width_of_a_capture(tmp_path):
    found = runner.invoke(app, ["complexity", "--N", "197", "--C", "384", "--P", "0..14"], env={"COLUMNS": "80"})
    assert found.exit_code == 0, found.output
    assert max(map(len, found.stdout.splitlines())) <= 80 and "…" not in found.stdout
    assert found.stdout.count("┏") > 1


def test_markdown_is_the_table_as_built_whatever_the_width():
    found = runner.invoke(app, ["complexity", "--N", "785", "--C", "768", "--format", "markdown"], env={"COLUMNS": "80"})
    header = next(line for line in found.stdout.splitlines() if line.startswith("| N |"))
    assert header.split(" | ")[:7] == ["| N", "C", "L", "H", "P", "GTP sum", "GTP Eq.15"]
    assert "TC-ViT lazy" in header


# --- trace, check, search, profiles -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trace")
    found = runner.invoke(app, ["trace", "deit_tiny_patch16_224", "--P", "8", "--batch-size", "2", "--steps", "1",
                                "--out", str(folder), "--format", "json"])
    assert found.exit_code == 0, found.output
    return json.loads(found.stdout)


@pytest.mark.parametrize("width", WIDTHS)
def test_trace_is_whole_at_every_width(traced, width):
    text = assert_nothing_cut(tables.render_trace, traced, width)
    assert_shown(text, [f"{s['ms']:.2f}" for s in traced["stages"]] + [s["stage"] for s in traced["stages"]]
                 + [o["op"] for o in traced["top_ops"]])


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    (folder / "spec.yaml").write_text('check:\n  models: [deit_tiny_patch16_224]\n  methods: [gtp, tome]\n  P: "0,8"\n'
                                      "  metrics: [macs, tokens, overhead_macs]\n")
    made = runner.invoke(app, ["check", str(folder / "spec.yaml"), "--update-baseline", str(folder / "base.json")])
    assert made.exit_code == 0, made.output
    found = runner.invoke(app, ["check", str(folder / "spec.yaml"), "--baseline", str(folder / "base.json"),
                                "--format", "json"])
    assert found.exit_code == 0, found.output
    return json.loads(found.stdout)


@pytest.mark.parametrize("width", WIDTHS)
def test_check_is_whole_at_every_width(checked, width):
    text = assert_nothing_cut(tables.render_check, checked, width)
    assert_shown(text, [f"{r['now']:,}" for r in checked["rows"] if isinstance(r["now"], int)])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    (folder / "tiny.yaml").write_text(TINY)
    for label in ("a", "b"):
        (folder / "data" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (64, 64), (40 * i, 200 if label == "a" else 20, 90)).save(folder / "data" / label / f"{i}.png")
    found = runner.invoke(app, ["profile", str(folder / "tiny.yaml"), "--P", "0..8:2", "--data", str(folder / "data"),
                                "--alpha", "0.1,0.5", "--search", "--holdout", "4", "--limit", "8", "--format", "json",
                                "--output", str(folder / "out.json")])
    assert found.exit_code == 0, found.output
    return json.loads(found.stdout)


@pytest.mark.parametrize("width", WIDTHS)
def test_search_is_whole_at_every_width(searched, width):
    text = assert_nothing_cut(tables.render_search, searched, width)
    assert_shown(text, [f"{b['value']:.2f}" for b in searched["best"]] + [f"{b['gmacs_analytic']:.3f}" for b in searched["best"]])


@pytest.mark.parametrize("width", WIDTHS)
def test_profiles_list_is_whole_at_every_width(width):
    found = runner.invoke(app, ["profiles"], env={"COLUMNS": str(width)})
    assert found.exit_code == 0, found.output
    assert "…" not in found.stdout and max(map(len, found.stdout.splitlines())) <= width
    shown = pieces(found.stdout)
    listed = json.loads(runner.invoke(app, ["profiles", "--format", "json"]).stdout)["rows"]
    for row in listed:
        assert row["name"] in shown and row["timm"] in shown and str(row["N"]) in shown


@pytest.fixture(scope="module")
def binned(tmp_path_factory):
    """GTP's Table 2 bins: GTP run at its settings (setting and published figures only), the other methods'
    published rows beside it."""
    folder = tmp_path_factory.mktemp("bins")
    found = runner.invoke(app, ["profile", "deit_s", "--bins", "paper", "--method", "gtp", "--no-speed", "--no-flops",
                                "--format", "json", "--output", str(folder / "out.json")])
    assert found.exit_code == 0, found.output
    return json.loads(found.stdout)


@pytest.mark.parametrize("width", WIDTHS)
def test_bins_are_whole_at_every_width(binned, width):
    text = assert_nothing_cut(tables.render_bins, binned, width)
    assert_shown(text, [f"P={r['P']}" for r in binned["rows"] if r.get("bin_gmacs") is not None])
    assert_shown(text, ["1581.9", "2134.3", "1.18x"])   # GTP-ViT Table 2: GTP's img/s at 3.5 and 2.6 GMACs, Tri-Level's corrected ratio


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    """TPC-ViT, whose token counts depend on the image: a --delta sweep of 6 values, timed (the widest
    cells: E[GMACs] +- std, each batching mode's executed / ideal GMACs)."""
    folder = tmp_path_factory.mktemp("adaptive")
    (folder / "tiny.yaml").write_text(TINY)
    found = runner.invoke(app, ["profile", str(folder / "tiny.yaml"), "--method", "tpc", "--delta", "0.001..0.2",
                                "--hp", "tpc.gate_center=-2", "--hp", "tpc.kappa=32", "--batch-size", "8", "--runs", "1",
                                "--warmup", "0", "--format", "json", "--output", str(folder / "out.json")])
    assert found.exit_code == 0, found.output
    return json.loads(found.stdout)


@pytest.mark.parametrize("width", WIDTHS)
def test_input_dependent_tables_are_whole_at_every_width(adaptive, width):
    text = assert_nothing_cut(tables.render_profile, adaptive, width)
    tpc = [r for r in adaptive["rows"] if r["method"] == "tpc"]
    assert_shown(text, [r["setting"] for r in tpc] + [f"{d['mean']:.1f}" for r in tpc for d in r["tokens_dist"]])


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_plan_is_whole_at_every_width(width):
    found = runner.invoke(app, ["compare", "deit_s", "--gmacs", "3.5,3.0,2.6", "--dry-run", "--format", "json"])
    assert found.exit_code == 0, found.output
    plan = json.loads(found.stdout)
    text = assert_nothing_cut(render_plan, plan, width)
    assert_shown(text, [f"{r['gmacs']:.3f}" for r in plan["rows"]] + [r["method"] for r in plan["rows"]])
