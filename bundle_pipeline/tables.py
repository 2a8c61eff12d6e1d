"""Tables for people that read well at any width: a terminal, an 80-column window, a pipe or a file.

A cell is a list of items (a graph name, ``tile_m=16``, ``2.0 KiB``); an item is never broken across lines,
so names are never cut or folded. A table is drawn in columns when every column can be as wide as its
widest item (header words included) within the width; otherwise it is printed as records, one
``field: value`` line per field, the value's items wrapped under it. A line is wider than the width only
when a single item (a name longer than the width) is: a terminal folds it, a file keeps it whole.

The layout is computed here; rich only styles titles and headers on a terminal, and is imported only when
something is printed (a no-op ``run`` must not load it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

FALLBACK_WIDTH = 80  # a pipe or a file, with no $COLUMNS to say otherwise
GAP = 2  # columns are separated by two spaces
INDENT = 4  # where a record's value continues when it wraps


@dataclass(frozen=True)
class Cell:
    """One cell: ``items`` joined by ``sep`` on one line; at a line break the separator's visible part
    (the comma of ``", "``) stays at the end of the line."""

    items: tuple[str, ...]
    sep: str = " "

    @property
    def min_width(self) -> int:
        """The widest item, with the separator's mark when a line may end after it."""
        tail = len(self.sep.rstrip())
        return max((text_width(item) + (tail if i < len(self.items) - 1 else 0) for i, item in enumerate(self.items)),
                   default=0)

    @property
    def max_width(self) -> int:
        return text_width(self.sep.join(self.items))

    def lines(self, width: int, first: int | None = None) -> list[str]:
        """Greedy wrap to ``width`` (``first``: room on the first line, when it differs); an item that does not
        fit on an empty line gets a line of its own, whole."""
        return wrap(self.items, self.sep, width, width if first is None else first)


def cell(*items: str, sep: str = " ") -> Cell:
    return Cell(tuple(items), sep)


def listed(names: Sequence[str], empty: str = "") -> Cell:
    """A comma-separated list of names (``empty`` when there are none)."""
    return Cell(tuple(names), ", ") if names else cell(empty)


def wrap(items: Sequence[str], sep: str, width: int, first: int) -> list[str]:
    """Lines of at most ``width`` display columns (``first`` on the first line) made of whole items."""
    tail = sep.rstrip()
    lines: list[str] = []
    line: list[str] = []
    room = first
    for i, item in enumerate(items):
        mark = tail if i < len(items) - 1 else ""
        if text_width(sep.join([*line, item]) + mark) > room:
            if line:
                lines.append(sep.join(line) + tail)
                line, room = [], width
            elif room < width and text_width(item + mark) <= width:  # it fits a whole line: start one
                lines.append("")
                room = width
        line.append(item)
    lines.append(sep.join(line))
    return lines


def text_width(text: str) -> int:
    """Display columns (a CJK character takes two), as rich counts them."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


@dataclass(frozen=True)
class Table:
    """A titled table: ``header`` labels (their words may wrap) and rows of cells."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[Cell, ...]]

    def widths(self, width: int) -> list[int] | None:
        """Column widths that fit ``width`` with no item broken, None when even the narrowest such layout is too
        wide. Spare room goes to whole columns, those that need the least to stop wrapping first (often a header),
        then to the one where it saves the most lines."""
        columns = [[cell(*label.split(" ")), *(row[j] for row in self.rows)] for j, label in enumerate(self.header)]
        low = [max(c.min_width for c in column) for column in columns]
        high = [max(c.max_width for c in column) for column in columns]
        spare = width - GAP * (len(columns) - 1) - sum(low)
        if spare < 0:
            return None
        widths = list(low)
        for j in sorted(range(len(widths)), key=lambda j: high[j] - low[j]):  # each column satisfied stops
            if high[j] - low[j] <= spare:                                     # wrapping: the cheapest first
                spare -= high[j] - low[j]
                widths[j] = high[j]
        saved = {j: _height(columns[j], widths[j]) - _height(columns[j], widths[j] + spare)
                 for j in range(len(widths)) if widths[j] < high[j]}
        best = max(saved, key=saved.get, default=None)
        if best is not None and saved[best] > 0:  # what is left goes where it saves the most lines
            widths[best] += spare
        return widths

    def records(self, width: int) -> list[str]:
        """One ``label: value`` line per field, the first field of each row marked ``-``."""
        lines = []
        for row in self.rows:
            for j, (label, value) in enumerate(zip(self.header, row, strict=True)):
                head = f"{'-' if j == 0 else ' '} {label}: "
                wrapped = value.lines(width - INDENT, first=width - text_width(head))
                lines.append((head + wrapped[0]).rstrip())
                lines += [" " * INDENT + rest for rest in wrapped[1:]]
        return lines


def _height(column: list[Cell], width: int) -> int:
    """Lines a column's cells take at ``width``."""
    return sum(len(c.lines(width)) for c in column)


def output_width(stream: TextIO) -> int:
    """$COLUMNS when set, else the terminal's width when ``stream`` is a terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            pass
    return FALLBACK_WIDTH


def show(blocks: Sequence[Table | Cell], stream: TextIO) -> None:
    """Print text lines (a Cell, word-wrapped) and tables, each table as columns or, if they cannot fit, as
    records; sections are separated by a blank line. Titles and headers are bold on a terminal."""
    width = output_width(stream)
    lines: list[tuple[str, str]] = []  # (text, style)
    for i, block in enumerate(blocks):
        if i:
            lines.append(("", ""))
        if isinstance(block, Cell):
            lines += [(line, "") for line in block.lines(width)]
            continue
        lines.append((block.title, "bold"))
        widths = block.widths(width)
        lines += [(line, "") for line in block.records(width)] if widths is None else _columns(block, widths)
    _write(lines, stream)


def _columns(table: Table, widths: list[int]) -> list[tuple[str, str]]:
    """Header (bottom-aligned, bold), a rule, then the rows; every cell was wrapped to its column's width."""
    def rows(cells: Sequence[Cell], bottom_aligned: bool) -> list[str]:
        wrapped = [c.lines(w) for c, w in zip(cells, widths, strict=True)]
        height = max(len(w) for w in wrapped)
        wrapped = [[""] * (height - len(w)) + w if bottom_aligned else w + [""] * (height - len(w)) for w in wrapped]
        return [(" " * GAP).join(_pad(text, w) for text, w in zip(line, widths, strict=True)).rstrip()
                for line in zip(*wrapped, strict=True)]

    out = [(line, "bold") for line in rows([cell(*label.split(" ")) for label in table.header], bottom_aligned=True)]
    out.append(("─" * (sum(widths) + GAP * (len(widths) - 1)), ""))
    for row in table.rows:
        out += [(line, "") for line in rows(row, bottom_aligned=False)]
    return out


def _pad(text: str, width: int) -> str:
    return text + " " * (width - text_width(text))


def _write(lines: list[tuple[str, str]], stream: TextIO) -> None:
    """Plain text in a pipe or a file; on a terminal rich adds the styles (and honours NO_COLOR, TERM=dumb).
    Lines are printed as they are: rich never wraps, folds or reads markup in them."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, highlight=False, soft_wrap=True)
    if not console.is_terminal or console.no_color or console.color_system is None:
        stream.write("".join(f"{line}\n" for line, _ in lines))
        return
    text = Text()
    for line, style in lines:
        text.append(line, style=style or None)
        text.append("\n")
    console.print(text, end="")
