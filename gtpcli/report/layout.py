"""Where every table meets the terminal: the console and the Rich table all commands render through.

A table wider than the console it is printed on is laid out another way, never cut short with an
ellipsis: as built (the paper's layout, P as columns) where it fits; otherwise split into blocks of
columns that fit, each block repeating the key columns (the row labels), either as built or transposed
(each row a column headed by its key cells: P as rows), whichever takes fewer blocks (as built where they
tie). Captions wrap below the last block. Markdown and LaTeX read the table as built (markup.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

from .markup import PAPER_STYLE

UNLIMITED = 1_000_000  # the width of a pipe or a file: no table is squeezed there, however wide


def console(stderr: bool = False) -> Console:
    """A terminal keeps its width (COLUMNS sets one, for a terminal or a capture); a pipe or file gets
    every table whole, however wide."""
    probe = Console(stderr=stderr)
    if probe.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return probe
    return Console(stderr=stderr, width=UNLIMITED)


def table(title: str, columns: Iterable[tuple[str, str]], rows: Iterable[Sequence[Any]], caption: str | None = None,
          paper: Iterable[int] = (), keys: int = 1) -> FitTable:
    """A table from (header, justify) pairs and rows of already formatted cells; the rows numbered in
    `paper` are published figures, in italics (and marked so in Markdown and LaTeX); the first `keys`
    columns name a row (a label; N, C, L, H, P) and are repeated in every block of a split."""
    t = FitTable(title=title, caption=caption, title_justify="left", caption_justify="left", min_width=len(title),
                 keys=keys)
    for header, justify in columns:
        t.add_column(header, justify=justify, overflow="fold")  # if Rich must ever squeeze, it wraps, never cuts
    published = set(paper)
    for at, row in enumerate(rows):
        t.add_row(*(str(cell) for cell in row), style=PAPER_STYLE if at in published else None)
    return t


class FitTable(Table):
    """A Rich table that lays itself out to fit the console it is printed on (see the module's docstring)."""

    def __init__(self, *args: Any, keys: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.keys = keys

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = options.max_width
        grid = Grid.of(self)
        widths = grid.widths(console, options)
        if width(widths, range(len(widths))) <= room or grid.keys >= len(widths):  # fits, or nothing to move
            yield from super().__rich_console__(console, options)
            return
        if self.title:
            yield console.render_str(self.title, style="table.title", highlight=False)
        for part in grid.layout(console, options, room, widths):
            yield part.table()
        if self.caption:
            yield console.render_str(self.caption, style="table.caption", highlight=False)


@dataclass
class Grid:
    """A table's content without its title and caption: per column a header, a justification, a style and
    the cells (Rich markup); per row a style; the first `keys` columns name the row."""

    headers: list[str]
    justify: list[str]
    column_styles: list[Any]
    cells: list[list[str]]   # per column
    row_styles: list[Any]
    keys: int

    @classmethod
    def of(cls, t: Table) -> Grid:
        keys = min(getattr(t, "keys", 1), len(t.columns))
        return cls([str(c.header) for c in t.columns], [c.justify for c in t.columns], [c.style for c in t.columns],
                   [[str(cell) for cell in c.cells] for c in t.columns], [r.style for r in t.rows], keys)

    def table(self) -> Table:
        t = Table()
        for header, justify, style in zip(self.headers, self.justify, self.column_styles):
            t.add_column(header, justify=justify, style=style, overflow="fold")
        for cells, style in zip(zip(*self.cells), self.row_styles):
            t.add_row(*cells, style=style)
        return t

    def widths(self, console: Console, options: ConsoleOptions) -> list[int]:
        """Each column's natural width with its padding and one border."""
        wide = options.update_width(UNLIMITED)
        return [Measurement.get(console, wide, self.only([at]).table()).maximum - 1 for at in range(len(self.headers))]

    def only(self, chosen: Sequence[int]) -> Grid:
        """These columns alone."""
        return Grid(*([column[at] for at in chosen] for column in (self.headers, self.justify, self.column_styles,
                                                                      self.cells)), self.row_styles,
                    sum(at < self.keys for at in chosen))

    def with_keys(self, chosen: Sequence[int]) -> Grid:
        return self.only([*range(self.keys), *chosen])

    def transposed(self) -> Grid:
        """Each row a column headed by its key cells, each value column a row labelled by its header."""
        keys, rows = self.keys, range(len(self.row_styles))
        return Grid(headers=["\n".join(self.headers[:keys])] + ["\n".join(c[r] for c in self.cells[:keys]) for r in rows],
                    justify=["left"] + ["right"] * len(rows),
                    column_styles=[None, *self.row_styles],
                    cells=[self.headers[keys:]] + [[c[r] for c in self.cells[keys:]] for r in rows],
                    row_styles=self.column_styles[keys:], keys=1)

    def layout(self, console: Console, options: ConsoleOptions, room: int, widths: list[int]) -> list[Grid]:
        """The fewer blocks of two layouts: as built, or transposed; as built where they tie."""
        as_built = self.split(widths, room)
        if not self.row_styles or 4 * (len(self.row_styles) + 1) >= room * len(as_built):
            return as_built   # no rows to turn, or too many: a transposed column takes 4 or more
        flipped = self.transposed()
        across = flipped.split(flipped.widths(console, options), room)
        return across if len(across) < len(as_built) else as_built

    def split(self, widths: list[int], room: int) -> list[Grid]:
        """Blocks of the value columns that fit in `room`, each beside the keys."""
        return [self.with_keys(block) for block in blocks(widths, self.keys, room, together(self.headers, self.keys))]


def width(widths: Sequence[int], chosen: Iterable[int]) -> int:
    """A Rich table's width with these columns: theirs plus the left edge."""
    return 1 + sum(widths[at] for at in chosen)


def blocks(widths: Sequence[int], keys: int, room: int, units: list[list[int]]) -> list[list[int]]:
    """The value columns, in `units` (runs of columns that belong together), in consecutive blocks that fit
    in `room` beside the `keys` first columns: as few blocks as fit, as even in count as that allows."""
    def fits(block: list[int]) -> bool:
        return width(widths, [*range(keys), *block]) <= room

    fewest = pack(units, fits)
    if len(fewest) < 2:
        return fewest
    most = -(-sum(map(len, units)) // len(fewest))
    even = pack(units, lambda block: fits(block) and len(block) <= most)
    return even if len(even) == len(fewest) else fewest


def pack(units: list[list[int]], ok: Callable[[list[int]], bool]) -> list[list[int]]:
    """Units in order: each joins the last block where `ok` allows, else starts one; a unit that is not ok
    even alone is packed column by column from a block of its own (a column too wide alone gets one)."""
    found: list[list[int]] = []
    for unit in units:
        if not ok(unit):
            found += pack([[at] for at in unit], ok) if len(unit) > 1 else [list(unit)]
        elif found and ok(found[-1] + unit):
            found[-1] += unit
        else:
            found.append(list(unit))
    return found


def together(headers: Sequence[str], first: int) -> list[list[int]]:
    """Runs of neighbouring columns from `first` on whose headers open with the same word ("ToMe sum",
    "ToMe Eq.14"): kept in one block where they fit together."""
    found: list[list[int]] = []
    for at in range(first, len(headers)):
        words = headers[at].split()
        if found and len(words) > 1 and headers[found[-1][-1]].split()[:1] == words[:1]:
            found[-1].append(at)
        else:
            found.append([at])
    return found
