"""A progress bar on stderr for long jobs, shown only on a terminal (or when asked)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(total: int, description: str, show: bool | None = None) -> Iterator:
    """Yields ``advance(n)``; draws a rich progress bar on stderr when ``show`` (default: stderr is a tty)."""
    if not (sys.stderr.isatty() if show is None else show):
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
