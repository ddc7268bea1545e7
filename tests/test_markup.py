"""`--format markdown` and `--format latex`: the tables parse (a Markdown table with the right columns,
LaTeX with as many cells in every row as the column spec has columns) and the paper's rows are marked."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from gtpcli.report import markup
from gtpcli.cli import app
from gtpcli.report.tables import render_check, render_profile

runner = CliRunner()


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, body rows) of every pipe table, split on unescaped pipes; each row must have the
    header's width and the separator line only alignment marks."""
    tables, lines = [], text.splitlines()
    at = 0
    while at < len(lines):
        if lines[at].startswith("|") and at + 1 < len(lines) and re.fullmatch(r"\|(:?-+:?\|)+", lines[at + 1]):
            split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            header, body = split(lines[at]), []
            assert len(split(lines[at + 1].replace("|", "| "))) == len(header)
            at += 2
            while at < len(lines) and lines[at].startswith("|"):
                body.append(split(lines[at]))
                assert len(body[-1]) == len(header), lines[at]
                at += 1
            tables.append((header, body))
        at += 1
    return tables


def latex_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(column spec, rows of cells) of every tabular; every row has as many cells as the spec columns."""
    found = []
    for spec, body in re.findall(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", text, re.S):
        assert "\\toprule" in body and "\\bottomrule" in body
        rows = [re.split(r"(?<!\\)&", line[:-2]) for line in body.splitlines() if line.endswith(r"\\")]
        for cells in rows:
            assert len(cells) == len(spec), cells
        found.append((spec, [[c.strip() for c in cells] for cells in rows]))
    assert text.count("\\begin{table}") == text.count("\\end{table}") == len(found)
    return found


PROFILE = {
    "model": "deit_s", "weights": "random weights", "env": {"device": "cpu", "dtype": "float32", "batch_size": 16},
    "rows": [
        {"method": "stock", "P": 0, "gmacs": 4.61, "img_s": 20.0, "img_s_spread": 1.0, "speedup": 1.0},
        *({"method": "gtp", "P": P, "gmacs": g, "img_s": s, "img_s_spread": 0.5, "speedup": s / 20, "paper_gmacs": pg,
           "paper_img_s": ps, "paper_source": "GTP-ViT Table 1 (A6000, batch 128, no finetuning)", "warnings": []}
          for P, g, s, pg, ps in ((0, 4.61, 19.8, 4.6, 1265.3), (8, 3.42, 26.0, 3.4, 1581.9))),
    ],
}


def test_profile_markdown_has_one_column_per_P_and_the_paper_rows_in_italics():
    text = markup.render(PROFILE, render_profile, "markdown")
    [(header, body)] = markdown_tables(text)
    assert header == ["", "P=0", "P=8"]
    labels = [r[0] for r in body]
    assert labels[:2] == ["GMACs", "img/s"]
    assert "*paper GMACs*" in labels and "*paper img/s (A6000)*" in labels and "GMACs - paper" in labels
    assert body[labels.index("*paper GMACs*")][1:] == ["*4.6*", "*3.4*"]
    assert body[labels.index("GMACs - paper")][1:] == ["+0.01", "+0.02"]  # colour markup gone
    assert markup.PAPER_NOTE in text and "**deit_s + gtp**" in text


def test_profile_latex_is_booktabs_with_matching_columns_and_marked_paper_rows():
    text = markup.render(PROFILE, render_profile, "latex")
    [(spec, rows)] = latex_tables(text)
    assert spec == "lrr"
    assert rows[0] == ["", "P=0", "P=8"]
    paper = [r for r in rows if r[0].startswith("\\textit{paper")]
    assert [r[0] for r in paper] == ["\\textit{paper GMACs}", "\\textit{paper img/s (A6000)}"]
    assert "\\midrule\n\\textit{paper GMACs}" in text  # the paper's block ruled off from the measured rows
    assert "\\caption{deit\\_s + gtp}" in text and "Italic rows" in text


CHECK = {"rows": [{"model": "deit_s", "method": "gtp", "P": 8, "metric": "gmacs", "baseline": 3.42, "now": 3.42,
                   "delta": 0.0, "tolerance": "1%", "verdict": "pass"},
                  {"model": "deit_s", "method": "tome", "P": 8, "metric": "tokens", "baseline": [197, 189],
                   "now": [197, 190], "delta": None, "tolerance": "exact", "verdict": "fail", "why": "differs"}],
         "environment_differs": []}


def test_check_markdown_and_latex_keep_every_column_and_verdict():
    [(header, body)] = markdown_tables(markup.render(CHECK, render_check, "markdown"))
    assert header == ["model", "method", "P", "metric", "baseline", "now", "delta", "tolerance", "verdict"]
    assert [r[-1] for r in body] == ["pass", "FAIL differs"]
    [(spec, rows)] = latex_tables(markup.render(CHECK, render_check, "latex"))
    assert spec == "llrlrrrrl" and len(rows) == 3 and rows[2][4] == "[197, 189]"


def test_complexity_and_profiles_commands_print_markdown_and_latex():
    out = runner.invoke(app, ["complexity", "--N", "197,785", "--C", "384", "--method", "gtp,tome", "--per-layer",
                              "--format", "markdown"])
    assert out.exit_code == 0, out.output
    tables = markdown_tables(out.stdout)
    assert len(tables) == 3  # the overview and one per-layer table per row
    header, body = tables[0]
    assert header[:5] == ["N", "C", "L", "H", "P"] and "GTP sum" in header and "ToMe Eq.14" in header
    assert [r[0] for r in body] == ["197", "785"] and body[0][header.index("GTP sum")] == "20.259"
    out = runner.invoke(app, ["complexity", "--N", "197", "--C", "384", "--format", "latex"])
    assert out.exit_code == 0 and latex_tables(out.stdout)[0][1][1][:2] == ["197", "384"]
    out = runner.invoke(app, ["profiles", "--format", "latex"])
    assert out.exit_code == 0 and any(r[0] == "deit\\_s" for r in latex_tables(out.stdout)[0][1])


def test_latex_escapes_what_tex_would_read_as_commands():
    assert markup.latex_escape("a_b 5% & #1 {x} ~^\\") == r"a\_b 5\% \& \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"


def test_lines_and_other_renderables_become_notes_after_the_tables():
    from rich.panel import Panel

    def render(result, console):
        console.print("[yellow]warning[/] gtp P=8: noisy")
        console.print(Panel("boxed"))

    text = markup.render({}, render, "latex")
    assert text.startswith("% warning gtp P=8: noisy\n") and "% │ boxed" in text and "[yellow]" not in text
