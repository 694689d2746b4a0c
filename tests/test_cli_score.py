"""`clip-aesthetics score` end to end: outputs, order, broken files, exit codes and messages."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.pipeline.images import find_images
from conftest import console_text
from test_zeroshot import GROUPS, reference_scores

PROMPT_ARGS = [f"--positive={t}" for t in GROUPS.positive] + [f"--negative={t}" for t in GROUPS.negative]


@pytest.fixture
def mixed_dir(photo_dir: Path) -> Path:
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "sub" / "notes.png").write_text("not an image")
    (photo_dir / "cut.jpg").write_bytes((photo_dir / "img1.jpg").read_bytes()[:300])
    return photo_dir


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_score_writes_ranked_csv_and_reports_broken(
    mixed_dir: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    out = tmp_path / "ranked.csv"
    result = run(
        "score", str(mixed_dir), "--model", tiny_clip_spec, *PROMPT_ARGS, "-o", str(out), "--workers", "0"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and [int(r["rank"]) for r in rows] == list(range(1, 9))
    good = [p for p in find_images([mixed_dir]) if p.name.startswith("img")]
    expected = reference_scores(tiny_clip_spec, GROUPS, good)
    assert [r["path"] for r in rows] == [str(good[i]) for i in expected.argsort(descending=True).tolist()]
    errors = {
        Path(r["path"]).name: r["error"] for r in csv.DictReader((tmp_path / "ranked.errors.csv").open())
    }
    assert set(errors) == {"empty.jpg", "notes.png", "cut.jpg"}
    assert "empty" in errors["empty.jpg"] and "not an image" in errors["notes.png"]
    assert "truncated" in errors["cut.jpg"] or "corrupt" in errors["cut.jpg"]
    assert "scored 8, unreadable 3" in console_text(result)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_other_output_formats(photo_dir: Path, tmp_path: Path, tiny_clip_spec: str, suffix: str) -> None:
    out = tmp_path / f"ranked{suffix}"
    result = run(
        "score", str(photo_dir), "--model", tiny_clip_spec, *PROMPT_ARGS, "-o", str(out), "--workers", "0"
    )
    assert result.exit_code == 0, result.output
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        rows = pq.read_table(out).to_pylist()
    assert [r["rank"] for r in rows] == list(range(1, 9))
    assert {"path", "score", "rank", "label", "raw"} <= set(rows[0])


def test_missing_path_is_one_line_error(tmp_path: Path, tiny_clip_spec: str) -> None:
    result = run("score", str(tmp_path / "nope"), "--model", tiny_clip_spec)
    assert result.exit_code == 2
    assert "no such file or folder" in result.output and "Traceback" not in result.output


def test_nothing_readable_exits_1(tmp_path: Path, tiny_clip_spec: str) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_text("x")
    result = run("score", str(tmp_path), "--model", tiny_clip_spec, *PROMPT_ARGS, "--workers", "0")
    assert result.exit_code == 1
    assert "none of the 2 images could be read" in result.output


def test_folder_without_images_exits_1(tmp_path: Path, tiny_clip_spec: str) -> None:
    (tmp_path / "readme.txt").write_text("x")
    result = run("score", str(tmp_path), "--model", tiny_clip_spec)
    assert result.exit_code == 1 and "no image files found" in result.output


def test_prompt_options_validated(photo_dir: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    result = run("score", str(photo_dir), "--model", tiny_clip_spec, "--positive", "nice")
    assert result.exit_code == 2 and "go together" in result.output
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"positive": ["x"], "negative": ["y"]}))
    result = run(
        "score", str(photo_dir), "--model", tiny_clip_spec, "--prompts", str(prompts), "--positive", "z"
    )
    assert result.exit_code == 2 and "either --prompts" in result.output


def test_bad_output_extension(photo_dir: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    result = run(
        "score",
        str(photo_dir),
        "--model",
        tiny_clip_spec,
        *PROMPT_ARGS,
        "-o",
        str(tmp_path / "x.xlsx"),
        "--workers",
        "0",
    )
    assert result.exit_code == 2 and ".csv, .jsonl, .parquet" in result.output


def test_console_command_in_subprocess(mixed_dir: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    out = tmp_path / "ranked.csv"
    command = [
        sys.executable,
        "-m",
        "clip_aesthetics",
        "score",
        str(mixed_dir),
        "--model",
        tiny_clip_spec,
        *PROMPT_ARGS,
        "--output",
        str(out),
        "--workers",
        "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(list(csv.DictReader(out.open()))) == 8
    assert result.stderr.count("skipped") == 3


def test_output_path_that_is_a_folder(photo_dir: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    (tmp_path / "out.html").mkdir()
    result = run(
        "score",
        str(photo_dir),
        "--model",
        tiny_clip_spec,
        *PROMPT_ARGS,
        "--html",
        str(tmp_path / "out.html"),
        "--workers",
        "0",
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "out.html" in result.output
