"""Where every table meets the terminal: the console and the Rich table all commands render through."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

from .markup import PAPER_STYLE


def console(stderr: bool = False) -> Console:
    """A terminal keeps its width; a pipe or file gets room enough that no column is cut."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=220)


def table(title: str, columns: Iterable[tuple[str, str]], rows: Iterable[Sequence[Any]], caption: str | None = None,
          paper: Iterable[int] = ()) -> Table:
    """A Rich table from (header, justify) pairs and rows of already formatted cells; the rows numbered in
    `paper` are published figures, in italics (and marked so in Markdown and LaTeX)."""
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left", min_width=len(title))
    for header, justify in columns:
        t.add_column(header, justify=justify)
    published = set(paper)
    for at, row in enumerate(rows):
        t.add_row(*(str(cell) for cell in row), style=PAPER_STYLE if at in published else None)
    return t
