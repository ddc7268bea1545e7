"""`--format markdown` and `--format latex`: the very tables a command prints, as text a README or a paper
takes without retyping. A command's renderer draws on a `Collector` instead of a terminal; each Rich table
it prints (title, headers, cells, caption, which rows are the paper's) is written out as a Markdown table
or a booktabs LaTeX table, and each line it prints (a warning, a hint) as a note after them."""

from __future__ import annotations

import io
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

PAPER_STYLE = "italic"  # report.table() gives the paper's rows this style: marked in every format
PAPER_NOTE = "Italic rows: published figures (the paper's), not measured here."


class Collector:
    """Stands in for a Rich console: keeps what is printed, in order."""

    def __init__(self):
        self.items: list[Table | str] = []

    def print(self, *objects: Any, **_: Any) -> None:
        for obj in objects:
            if isinstance(obj, Table):
                self.items.append(obj)
            elif isinstance(obj, str):
                self.items.append(plain(obj))
            else:  # any other Rich renderable: its text as a terminal would show it, without colour
                text = Console(file=io.StringIO(), width=120, color_system=None)
                text.print(obj)
                self.items.append(text.file.getvalue().rstrip("\n"))


def plain(text: Any) -> str:
    """Rich markup removed: '[green]+0.01[/]' -> '+0.01'."""
    return Text.from_markup(str(text)).plain if text is not None else ""


def cells(table: Table) -> tuple[list[str], list[tuple[list[str], bool]]]:
    """(headers, [(cells, is a paper row)]) of a Rich table, as plain text."""
    headers = [plain(c.header) for c in table.columns]
    columns = [[plain(cell) for cell in c.cells] for c in table.columns]
    rows = []
    for at, row in enumerate(table.rows):
        rows.append(([column[at] for column in columns], row.style == PAPER_STYLE))
    return headers, rows


def render(result: dict[str, Any], renderer: Callable, fmt: str) -> str:
    collector = Collector()
    renderer(result, collector)
    write = {"markdown": markdown_table, "latex": latex_table}[fmt]
    parts = [write(item) if isinstance(item, Table) else note(item, fmt) for item in collector.items]
    return "\n".join(parts)


def note(text: str, fmt: str) -> str:
    return "\n".join(f"% {line}" for line in text.splitlines()) + "\n" if fmt == "latex" else f"{text}\n"


# --- Markdown ---------------------------------------------------------------------------------------------

def markdown_table(table: Table) -> str:
    headers, rows = cells(table)
    align = {"left": ":---", "right": "---:", "center": ":---:"}
    lines = [f"**{_md(plain(table.title))}**", ""] if table.title else []
    lines.append("| " + " | ".join(_md(h) for h in headers) + " |")
    lines.append("|" + "|".join(align.get(c.justify, "---") for c in table.columns) + "|")
    for row, paper in rows:
        lines.append("| " + " | ".join(_italic(_md(c)) if paper and c else _md(c) for c in row) + " |")
    notes = [plain(table.caption)] if table.caption else []
    if any(paper for _, paper in rows):
        notes.append(PAPER_NOTE)
    return "\n".join(lines + [""] + [f"{n}\n" for n in notes if n])


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _italic(text: str) -> str:
    return f"*{text}*"


# --- LaTeX (booktabs) -------------------------------------------------------------------------------------

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(table: Table) -> str:
    """A booktabs table; the paper's rows in italics, a \\midrule above the first, said in the notes."""
    headers, rows = cells(table)
    spec = "".join({"right": "r", "center": "c"}.get(c.justify, "l") for c in table.columns)
    lines = [r"\begin{table}[htbp]", r"\centering"]
    if table.title:
        lines.append(rf"\caption{{{latex_escape(plain(table.title))}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
              " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    first_paper = next((at for at, (_, paper) in enumerate(rows) if paper), None)
    for at, (row, paper) in enumerate(rows):
        if at == first_paper and at > 0:
            lines.append(r"\midrule")
        escaped = [latex_escape(c).replace("\n", " ") for c in row]
        lines.append(" & ".join(rf"\textit{{{c}}}" if paper and c else c for c in escaped) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [plain(table.caption)] if table.caption else []
    if any(paper for _, paper in rows):
        notes.append(PAPER_NOTE)
    if notes:
        lines.append(r"\par\smallskip{\footnotesize " + r" \\ ".join(latex_escape(n).replace("\n", " ")
                                                                  for n in notes) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
