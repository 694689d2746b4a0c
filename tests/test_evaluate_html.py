"""`evaluate --html`: the evaluation report lists every scored image by prediction, with its true mean."""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava


def test_evaluate_writes_html_report(tmp_path: Path, tiny_clip_spec: str) -> None:
    ava = make_synthetic_ava(tmp_path / "AVA_dataset", n=40, seed=4, size=48, test_fraction=0.3)
    args = [
        "evaluate",
        str(ava),
        "--split",
        "test",
        "--model",
        tiny_clip_spec,
        "--positive",
        "a great photo",
        "--negative",
        "a bad photo",
        "--output",
        str(tmp_path / "m.json"),
        "--predictions",
        str(tmp_path / "p.csv"),
        "--html",
        str(tmp_path / "report.html"),
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    predictions = sorted(csv.DictReader((tmp_path / "p.csv").open()), key=lambda r: -float(r["score"]))
    shown = [
        html.unescape(p)
        for p in re.findall(r"<figure class='card [a-z]+' data-rank='\d+' data-path='([^']*)'", page)
    ]
    assert shown == [r["path"] for r in predictions]
    assert "http://" not in page and "https://" not in page


def test_evaluate_html_needs_html_suffix(tmp_path: Path, tiny_clip_spec: str) -> None:
    result = CliRunner().invoke(
        app,
        ["evaluate", str(tmp_path), "--output", str(tmp_path / "m.json"), "--html", str(tmp_path / "r.txt")],
    )
    assert result.exit_code == 2 and "--html" in result.output
