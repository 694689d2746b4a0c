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
