"""Streaming, resumable `score`: parts as batches finish, exact resume after a kill, embeddings, safety."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.pipeline.images import find_images
from clip_aesthetics.runs import score as scoring
from clip_aesthetics.runs.resumable import parts_folder_for
from conftest import TINY_CLIP_CONFIG, save_open_clip_dir
from test_cli_score import PROMPT_ARGS
from test_zeroshot import GROUPS, reference_scores

PIPELINE = ["--workers", "0", "--batch-size", "2", "--part-size", "4"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def score_args(folder: Path, spec: str, out: Path, *extra: str) -> list[str]:
    return ["score", str(folder), "--model", spec, *PROMPT_ARGS, "-o", str(out), *PIPELINE, *extra]


@pytest.fixture
def many_photos(photo_dir: Path) -> Path:
    """8 photos + 6 copies (14 images, 4 parts of 4), and one unreadable file."""
    for i, source in enumerate(find_images([photo_dir])[:6]):
        (photo_dir / f"copy{i}{source.suffix}").write_bytes(source.read_bytes())
    (photo_dir / "empty.jpg").write_bytes(b"")
    return photo_dir


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def uninterrupted(folder: Path, spec: str, tmp_path: Path) -> list[dict]:
    out = tmp_path / "whole" / "ranked.csv"
    result = run(*score_args(folder, spec, out))
    assert result.exit_code == 0, result.output
    return read_csv(out)


def test_ranked_rows_match_open_clip(many_photos: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    rows = uninterrupted(many_photos, tiny_clip_spec, tmp_path)
    files = [p for p in find_images([many_photos]) if p.name != "empty.jpg"]
    expected = reference_scores(tiny_clip_spec, GROUPS, files)
    by_path = {r["path"]: float(r["score"]) for r in rows}
    assert len(rows) == 14 and [int(r["rank"]) for r in rows] == list(range(1, 15))
    np.testing.assert_allclose([by_path[str(p)] for p in files], expected.numpy(), atol=1e-5)
    assert not parts_folder_for(tmp_path / "whole" / "ranked.csv").exists()  # work folder removed
    errors = read_csv(tmp_path / "whole" / "ranked.errors.csv")
    assert [Path(e["path"]).name for e in errors] == ["empty.jpg"]


def _failing_after(n_batches: int):
    """iter_scored that dies (like a kill) after ``n_batches`` batches."""
    real = scoring.iter_scored

    def wrapped(scorer, sources, **options):
        for i, batch in enumerate(real(scorer, sources, **options)):
            if i == n_batches:
                raise RuntimeError("injected failure")
            yield batch

    return wrapped


def test_injected_failure_then_rerun_gives_identical_rows(
    many_photos: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    expected = uninterrupted(many_photos, tiny_clip_spec, tmp_path)
    out = tmp_path / "ranked.csv"
    out.write_text("previous results\n")
    real = scoring.iter_scored
    monkeypatch.setattr(scoring, "iter_scored", _failing_after(5))
    result = run(*score_args(many_photos, tiny_clip_spec, out))
    assert result.exit_code != 0
    parts = parts_folder_for(out)
    # parts were written as batches finished: 5 batches of 2 = 10 inputs -> parts 0 and 1 (4 each) on disk
    part_files = sorted(parts.glob("part-*.parquet"))
    assert [p.name for p in part_files] == ["part-000000.parquet", "part-000001.parquet"]
    assert sum(pq.read_metadata(p).num_rows for p in part_files) == 8
    assert out.read_text() == "previous results\n"  # nothing that looks finished replaced the old file

    counted: list[int] = []

    def counting(scorer, sources, **options):
        counted.append(len(sources))
        yield from real(scorer, sources, **options)

    monkeypatch.setattr(scoring, "iter_scored", counting)
    result = run(*score_args(many_photos, tiny_clip_spec, out))
    assert result.exit_code == 0, result.output
    assert counted == [15 - 8]  # only the missing parts were scored again
    assert read_csv(out) == expected  # same paths, scores (to the last digit), ranks, labels
    assert not parts.exists()


def test_sigkill_then_rerun_gives_identical_rows(
    many_photos: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    expected = uninterrupted(many_photos, tiny_clip_spec, tmp_path)
    out = tmp_path / "killed" / "ranked.csv"
    process = _slow_score_process(score_args(many_photos, tiny_clip_spec, out), tmp_path)
    parts = parts_folder_for(out)
    try:
        _wait_for(lambda: len(list(parts.glob("part-*.parquet"))) >= 2, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not out.exists() and (parts / "state.json").is_file()
    result = run(*score_args(many_photos, tiny_clip_spec, out))
    assert result.exit_code == 0, result.output
    assert read_csv(out) == expected


def test_sigint_keeps_parts_and_exits_130(many_photos: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    out = tmp_path / "ranked.csv"
    process = _slow_score_process(score_args(many_photos, tiny_clip_spec, out), tmp_path)
    parts = parts_folder_for(out)
    try:
        _wait_for(lambda: len(list(parts.glob("part-*.parquet"))) >= 1, process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("error: interrupted")
    assert not out.exists() and list(parts.glob("part-*.parquet"))
    result = run(*score_args(many_photos, tiny_clip_spec, out))
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 14 and not parts.exists()


SLOW_SCORE = """
import sys, time
import clip_aesthetics.runs.score as scoring
real = scoring.iter_scored
def slow(*args, **kwargs):
    for batch in real(*args, **kwargs):
        yield batch
        time.sleep(0.4)
scoring.iter_scored = slow  # the CLI imports it from clip_aesthetics.runs.score when a run starts
from clip_aesthetics.cli import app
app(sys.argv[1:], prog_name="clip-aesthetics")
"""


def _slow_score_process(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """The real CLI in a subprocess, slowed down between batches so a test can kill it half-way."""
    script = tmp_path / "slow_score.py"
    script.write_text(SLOW_SCORE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_other_settings_refused_then_overwrite_starts_over(
    many_photos: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    out = tmp_path / "ranked.csv"
    monkeypatch.setattr(scoring, "iter_scored", _failing_after(3))
    assert run(*score_args(many_photos, tiny_clip_spec, out)).exit_code != 0
    monkeypatch.undo()
    parts = parts_folder_for(out)
    before = sorted(p.name for p in parts.iterdir())
    other = [
        a for a in score_args(many_photos, tiny_clip_spec, out) if a != "--positive=a outstanding picture"
    ]
    other += ["--positive", "a stunning picture"]
    result = run(*other)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert sorted(p.name for p in parts.iterdir()) == before and not out.exists()
    result = run(*other, "--overwrite")
    assert result.exit_code == 0, result.output
    expected = uninterrupted_with(other, tmp_path / "fresh.csv")
    assert read_csv(out) == expected


def uninterrupted_with(args: list[str], out: Path) -> list[dict]:
    args = list(args)
    args[args.index("-o") + 1] = str(out)
    result = run(*args)
    assert result.exit_code == 0, result.output
    return read_csv(out)


def test_embeddings_kept_and_scored_without_images(
    many_photos: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    out = tmp_path / "ranked.parquet"
    result = run(*score_args(many_photos, tiny_clip_spec, out, "--embeddings"))
    assert result.exit_code == 0, result.output
    ranked = pq.read_table(out).to_pylist()
    stored = pq.read_table(tmp_path / "ranked.embeddings.parquet")
    files = [p for p in find_images([many_photos]) if p.name != "empty.jpg"]
    assert stored["path"].to_pylist() == [str(p) for p in files]  # input order, aligned by path
    embeddings = np.array(stored["embedding"].to_pylist(), dtype=np.float32)
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_spec)
    with torch.inference_mode():
        reference = model.eval().encode_image(torch.stack([preprocess(Image.open(p)) for p in files]))
    np.testing.assert_allclose(embeddings, reference.numpy(), atol=1e-4)
    assert backbone.feature_dim == embeddings.shape[1]

    # score the stored embeddings: no image is read (the folder is gone), same ranking and scores
    for p in many_photos.rglob("*"):
        if p.is_file():
            p.unlink()
    again = tmp_path / "again.csv"
    result = run(
        "score", "--from-embeddings", tmp_path / "ranked.embeddings.parquet", *PROMPT_ARGS, "-o", again
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(again)
    assert [r["path"] for r in rows] == [r["path"] for r in ranked]
    np.testing.assert_allclose([float(r["score"]) for r in rows], [r["score"] for r in ranked], atol=1e-5)


def test_embeddings_of_another_model_refused(many_photos: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    out = tmp_path / "ranked.csv"
    assert run(*score_args(many_photos, tiny_clip_spec, out, "--embeddings")).exit_code == 0
    result = run(
        "score",
        "--from-embeddings",
        tmp_path / "ranked.embeddings.parquet",
        "--model",
        f"local-dir:{save_open_clip_dir(tmp_path / 'other-clip', TINY_CLIP_CONFIG, seed=1)}",
        *PROMPT_ARGS,
        "-o",
        tmp_path / "x.csv",
    )
    assert result.exit_code == 2 and not (tmp_path / "x.csv").exists(), result.output


def test_html_only_run_keeps_parts_beside_the_report(
    many_photos: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    page = tmp_path / "report.html"
    args = ["score", many_photos, "--model", tiny_clip_spec, *PROMPT_ARGS, *PIPELINE, "--html", page]
    monkeypatch.setattr(scoring, "iter_scored", _failing_after(3))
    assert run(*args).exit_code != 0
    assert list(parts_folder_for(page).glob("part-*.parquet")) and not page.exists()
    monkeypatch.undo()
    assert run(*args).exit_code == 0 and page.is_file() and not parts_folder_for(page).exists()


def test_distribution_scorer_columns(photo_dir: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    from clip_aesthetics.scorers import ProbeHead, ProbeScorer, save_scorer

    backbone = load_backbone(tiny_clip_spec, device="cpu")
    dim = backbone.feature_dim
    torch.manual_seed(0)
    head = ProbeHead(
        torch.zeros(dim), torch.ones(dim), torch.randn(10, dim) * 0.01, torch.full((10,), 0.1), "distribution"
    )
    probe = tmp_path / "dist.safetensors"
    save_scorer(ProbeScorer(backbone, head), probe, tensors=head.tensors())
    out = tmp_path / "ranked.csv"
    result = run("score", photo_dir, "--scorer", probe, "-o", out, *PIPELINE)
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert "raw" not in rows[0] and [f"pred_{k}" for k in range(1, 11)] == list(rows[0])[4:]
    bins = np.array([[float(r[f"pred_{k}"]) for k in range(1, 11)] for r in rows])
    np.testing.assert_allclose(bins.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(bins @ np.arange(1, 11), [float(r["score"]) for r in rows], atol=1e-4)
    reference = scoring.score_paths(
        ProbeScorer(backbone, head), find_images([photo_dir]), workers=0, batch_size=2
    )
    assert [r["path"] for r in rows] == [r["path"] for r in reference.rows]
    np.testing.assert_allclose(
        bins, [[r[f"pred_{k}"] for k in range(1, 11)] for r in reference.rows], atol=1e-6
    )
