"""One of each: the metric formatter, the Markdown table builder, and one atomic-write helper."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import clip_aesthetics
from clip_aesthetics.runs.evaluate import comparison_markdown
from clip_aesthetics.runs.tables import format_interval, format_metric, markdown_table

SRC = Path(clip_aesthetics.__file__).parent


CASES = [(0.12345, 3, "0.123"), (0.123456, 4, "0.1235"), (-1.0, 3, "-1.000"), (7, 1, "7.0")]
MISSING = [(None, 3, "-"), (math.nan, 3, "-"), (math.inf, 3, "-")]


@pytest.mark.parametrize(("value", "digits", "expected"), [*CASES, *MISSING])
def test_format_metric(value, digits, expected):
    assert format_metric(value, digits=digits) == expected


def test_format_interval():
    assert format_interval([0.1, 0.25]) == "[0.100, 0.250]"
    assert format_interval(None) == "" and format_interval([]) == ""


def cells(line: str) -> list[str]:
    """The cells of a Markdown row, with escaped pipes kept inside their cell."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_markdown_table_aligns_and_escapes():
    text = markdown_table(["name", "n"], [["a|b", 3], ["c", 10]], right=["n"])
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 4
    assert lines[1] == "|---|---:|"
    assert [cells(line) for line in (lines[0], lines[2], lines[3])] == [
        ["name", "n"],
        ["a|b", "3"],
        ["c", "10"],
    ]


def test_comparison_markdown_columns_follow_the_rows():
    rows = [
        {"name": "probe", "method": "probe", "backbone": "ViT-B-32", "n": 10, "srcc": 0.5, "plcc": math.nan}
        | {"n_failed": 1, "images_per_second": 12.34, "intervals": {"srcc": [0.4, 0.6]}},
        {"name": "zs", "method": "zeroshot", "backbone": None, "n": 10, "srcc": 0.25, "plcc": 0.3},
    ]
    lines = comparison_markdown(rows).splitlines()
    assert cells(lines[0]) == ["scorer", "method", "backbone", "n", "srcc", "plcc", "failed", "images/s"]
    assert cells(lines[2]) == ["probe", "probe", "ViT-B-32", "10", "0.500 [0.400, 0.600]", "-", "1", "12.3"]
    assert cells(lines[3]) == ["zs", "zeroshot", "-", "10", "0.250", "0.300", "0", "0.0"]


def test_only_fileio_renames_files_into_place():
    """Every output goes through clip_aesthetics.fileio: no other module does temp-file-and-rename."""
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "fileio.py" and re.search(r"os\.replace\(|os\.rename\(|mkstemp\(", path.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_atomic_savefig_writes_the_format_of_the_suffix(tmp_path: Path, suffix: str, magic: bytes):
    from matplotlib.figure import Figure

    from clip_aesthetics.fileio import atomic_savefig

    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([1, 2], [3, 4])
    path = atomic_savefig(figure, tmp_path / f"plot{suffix}", dpi=50)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [f"plot{suffix}"]  # no temporary file left behind
