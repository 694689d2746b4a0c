"""Console tables stay readable at 80 columns and in pipes, and never cut what a user copies."""

from __future__ import annotations

import csv
import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.encoders.weights import KNOWN_BACKBONES
from clip_aesthetics.runs.tables import print_table


def terminal(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, color_system=None, markup=False), out


def test_models_in_a_pipe_are_tab_separated_and_whole() -> None:
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if "\t" in line]
    rows = list(csv.reader(lines, delimiter="\t"))
    assert rows[0] == ["model", "pretrained", "offline", "what", "Hugging Face repo"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(m, p or "-") for m, p, _ in KNOWN_BACKBONES]


@pytest.mark.parametrize("width", [60, 80, 200])
def test_models_at_any_terminal_width_keep_every_name_whole(width: int, monkeypatch) -> None:
    console, out = terminal(width)
    monkeypatch.setattr("clip_aesthetics.cli.models.console", console)
    assert CliRunner().invoke(app, ["models"]).exit_code == 0
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines())
    for model, pretrained, _ in KNOWN_BACKBONES:
        assert model in text and (pretrained is None or pretrained in text)


def test_a_bootstrap_table_keeps_every_column_at_80() -> None:
    """evaluate --bootstrap: a metric and its interval per cell, eight number columns."""
    header = ["scorer", "n", "SRCC", "PLCC", "acc", "EMD", "MSE", "MAE", "failed", "time", "img/s"]
    cells = ["0.712\n[0.701, 0.723]", "0.730\n[0.719, 0.741]", "0.781", "0.052", "0.321", "0.452"]
    rows = [["zeroshot ViT-B-32", "20000", *cells, "3", "812.4 s", "24.6"]]
    console, out = terminal(80)
    print_table(console, "Test split", header, rows, right=header[1:], whole=header[1:])
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    for value in ["[0.701, 0.723]", "[0.719, 0.741]", "0.452", "812.4 s", "24.6", "zeroshot ViT-B-32"]:
        assert value in text


def test_a_table_that_fits_stays_a_table() -> None:
    console, out = terminal(80)
    print_table(console, "Top 2 of 2", ["rank", "score"], [["1", "7.100"], ["2", "6.900"]], right=["rank"])
    assert "┃" in out.getvalue() and "7.100" in out.getvalue()
