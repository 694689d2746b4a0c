"""Numbers and tables as text: the one metric formatter and the one Markdown table builder.

Every report (compare tables, prompt search, the reproduction report, plot titles, console tables) formats
metrics through :func:`format_metric`, so a missing value looks the same everywhere. Pure Python: the CLI
imports it at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

MISSING = "-"


def format_metric(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``-`` when it is missing (None, NaN or infinite)."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.{digits}f}"


def format_interval(interval: Sequence[float] | None, digits: int = 3) -> str:
    """``[low, high]`` of a confidence interval, or an empty string when there is none."""
    if not interval:
        return ""
    return f"[{format_metric(interval[0], digits)}, {format_metric(interval[1], digits)}]"


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], right: Collection[str] = ()
) -> str:
    """A Markdown table (ending in a newline); columns named in ``right`` are right-aligned.

    Cells are converted with ``str`` and made table-safe: ``\\`` and ``|`` are escaped (a ``|`` would start a
    new column) and line breaks become spaces.
    """

    def line(cells: Iterable[object]) -> str:
        return "| " + " | ".join(_cell(str(cell)) for cell in cells) + " |"

    rule = "|" + "|".join("---:" if column in right else "---" for column in header) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)]) + "\n"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def print_table(
    console,
    title: str,
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Collection[str] = (),
    whole: Collection[str] = (),
) -> None:
    """Print a table that stays readable wherever it goes, cutting nothing.

    In a terminal: a rich table when it fits the width with the ``whole`` columns unbroken (names a user
    copies: models, paths), else one block per row (``column: value`` lines), which fits any width. Piped
    or redirected: tab-separated lines with a header, for ``cut``, ``sort`` and spreadsheets. A cell may
    hold a line break (a metric and its interval): it becomes a space outside rich.
    """
    rows = [[str(cell) for cell in row] for row in rows]
    if not console.is_terminal:
        for line in [header, *rows]:  # written as they are: rich would expand the tabs to spaces
            console.file.write("\t".join(" ".join(cell.split("\n")) for cell in line) + "\n")
        return
    from rich.table import Table

    table = Table(title=title)
    for column in header:
        keep = column in whole
        table.add_column(
            column, justify="right" if column in right else "left", no_wrap=keep, overflow="fold"
        )
    for row in rows:
        table.add_row(*row)
    if _narrowest(header, rows, whole) <= console.width:
        console.print(table)
        return
    console.print(title, soft_wrap=True)
    width = max(len(column) for column in header)
    for row in rows:
        console.print()
        for column, cell in zip(header, row, strict=True):
            text = f"{column:>{width}}: {' '.join(cell.split(chr(10)))}"
            console.print(text, soft_wrap=column in whole)  # other values wrap at words


def _narrowest(header: Sequence[str], rows: list[list[str]], whole: Collection[str]) -> int:
    """Columns of the narrowest rich table without a cut: ``whole`` columns at their longest line, the
    others at their longest word, plus the borders and padding (3 per column, 1 at the end)."""
    from rich.cells import cell_len

    width = 1
    for i, column in enumerate(header):
        cells = [column, *(row[i] for row in rows)]
        pieces = [p for c in cells for p in (c.split("\n") if column in whole else c.split())]
        width += 3 + max((cell_len(p) for p in pieces), default=0)
    return width
