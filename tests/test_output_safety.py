"""Nothing lost or silently wrong: odd file names, non-finite scores, bad or failing outputs, precision."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import clip_aesthetics.runs.score as scoring
from clip_aesthetics.cli import app
from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.encoders.compute import resolve_precision
from clip_aesthetics.features import load_features
from clip_aesthetics.fileio import name_from_text, text_name
from clip_aesthetics.runs.score import NON_FINITE, ScoredBatch, split_non_finite, write_rows
from clip_aesthetics.scorers import ProbeHead, ProbeScorer, ScoreOutput, save_scorer
from conftest import photo
from test_cli_score import PROMPT_ARGS

CPU = torch.device("cpu")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def score(folder: Path, spec: str, out: Path, *extra) -> object:
    return run("score", folder, "--model", spec, *PROMPT_ARGS, "-o", out, "--workers", "0", *extra)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- console markup in names (issue 14, point 7) ---


def test_markup_in_file_names_scored_and_written_unaltered(tmp_path: Path, tiny_clip_spec: str) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(["[red]x.jpg", "[bold]y.jpg", "plain.jpg"]):
        photo(i).save(folder / name)
    (folder / "empty[").mkdir()
    (folder / "empty[" / "bold].jpg").write_bytes(b"")  # the path reads .../empty[/bold].jpg
    out = tmp_path / "ranked.csv"
    result = score(folder, tiny_clip_spec, out, "--html", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert sorted(Path(r["path"]).name for r in read_csv(out)) == ["[bold]y.jpg", "[red]x.jpg", "plain.jpg"]
    errors = read_csv(tmp_path / "ranked.errors.csv")
    assert [e["path"] for e in errors] == [str(folder / "empty[/bold].jpg")]
    assert f"skipped {folder / 'empty[/bold].jpg'}: " in result.output  # printed as it is, on one line


def test_error_handler_prints_markup_as_text(tmp_path: Path, tiny_clip_spec: str) -> None:
    result = run("score", "nope[/b]", "--model", tiny_clip_spec)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "nope[/b]" in result.output  # one line (soft-wrapped), the name as given


# --- names that are not UTF-8 (point 8) ---


@pytest.fixture
def odd_names(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "photos"
    folder.mkdir()
    names = [os.fsdecode(b"bad\xff\xfe.jpg"), os.fsdecode(b"caf\xc3\xa9.jpg"), "ok.jpg"]
    for i, name in enumerate(names):
        photo(i).save(folder / name)
    return folder, [str(folder / n) for n in names]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_non_utf8_names_written_losslessly(
    odd_names, tmp_path: Path, tiny_clip_spec: str, suffix: str
) -> None:
    folder, paths = odd_names
    out = tmp_path / f"ranked{suffix}"
    result = score(folder, tiny_clip_spec, out)
    assert result.exit_code == 0, result.output
    if suffix == ".csv":
        written = [r["path"] for r in read_csv(out)]
    elif suffix == ".jsonl":
        written = [json.loads(line)["path"] for line in out.read_text(encoding="utf-8").splitlines()]
    else:
        written = pq.read_table(out)["path"].to_pylist()
    assert str(folder / "bad\\xff\\xfe.jpg") in written  # the documented escape, valid UTF-8
    assert sorted(name_from_text(w) for w in written) == sorted(paths)  # and back to the exact names
    assert all(Path(name_from_text(w)).is_file() for w in written)


def test_non_utf8_names_in_feature_cache(odd_names, tmp_path: Path, tiny_clip_spec: str) -> None:
    folder, paths = odd_names
    cache = tmp_path / "cache"
    result = run(
        "embed", folder, "--dataset", "folder", "--split-kind", "none", "--model", tiny_clip_spec, "-o", cache
    )
    assert result.exit_code == 0, result.output
    features = load_features(cache)
    assert sorted(features.paths) == sorted(paths) and len(features.features) == 3


def test_text_name_round_trip() -> None:
    for raw in (b"a\xff.jpg", b"\xe9t\xe9.png", "été [x].jpg".encode(), b"plain"):
        name = os.fsdecode(raw)
        text = text_name(name)
        text.encode("utf-8")  # always valid UTF-8
        assert os.fsencode(name_from_text(text)) == raw


# --- non-finite scores (point 2) ---


def _nan_probe(backbone, tmp_path: Path, nan_for_all: bool) -> Path:
    dim = backbone.feature_dim
    weight = torch.full((1, dim), float("nan")) if nan_for_all else torch.ones(1, dim)
    head = ProbeHead(torch.zeros(dim), torch.ones(dim), weight, torch.zeros(1))
    path = tmp_path / "probe.safetensors"
    scorer = ProbeScorer(backbone, head)
    save_scorer(scorer, path, tensors=scorer.tensors())
    return path


def test_all_non_finite_fails_with_that_reason(photo_dir: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    probe = _nan_probe(load_backbone(tiny_clip_spec, device="cpu"), tmp_path, nan_for_all=True)
    out = tmp_path / "ranked.csv"
    result = run("score", photo_dir, "--scorer", probe, "-o", out, "--workers", "0")
    assert result.exit_code == 1
    assert NON_FINITE in result.output and "could be read" not in result.output
    errors = read_csv(tmp_path / "ranked.errors.csv")
    assert len(errors) == 8 and {e["error"] for e in errors} == {NON_FINITE}
    assert read_csv(out) == []


def test_non_finite_scores_become_errors() -> None:
    output = ScoreOutput(
        score=torch.tensor([5.0, float("nan"), 6.0, float("inf")]),
        raw=torch.tensor([0.1, 0.2, float("nan"), 0.3]),
    )
    batch = split_non_finite(
        ScoredBatch([10, 11, 12, 13], output, np.arange(8.0).reshape(4, 2), [(14, "empty")])
    )
    assert batch.positions == [10] and batch.output.score.tolist() == [5.0]
    assert batch.features.tolist() == [[0.0, 1.0]]
    assert batch.errors == [(11, NON_FINITE), (12, NON_FINITE), (13, NON_FINITE), (14, "empty")]


# --- outputs validated first and written atomically (point 9) ---


def test_outputs_refused_before_any_work(photo_dir: Path, tmp_path: Path) -> None:
    model = "local-dir:/no/such/model"  # loading it would fail: the output checks must come first
    (tmp_path / "folder.csv").mkdir()
    same = tmp_path / "r.csv"
    same.write_text("previous\n")
    for extra in (
        ["-o", tmp_path / "x.xlsx"],
        ["-o", tmp_path / "folder.csv"],
        ["-o", same, "--html", same],
        ["--embeddings"],
    ):
        result = run("score", photo_dir, "--model", model, *extra)
        assert (
            result.exit_code == 2
            and "no such model" not in result.output
            and "open_clip_config" not in result.output
        )
    assert same.read_text() == "previous\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_refused_first(photo_dir: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run("score", photo_dir, "--model", "local-dir:/no/such/model", "-o", locked / "r.csv")
    assert result.exit_code == 2 and "not writable" in result.output


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_failed_write_leaves_previous_file(tmp_path: Path, monkeypatch, suffix: str) -> None:
    target = tmp_path / f"ranked{suffix}"
    target.write_bytes(b"previous results")
    rows = [{"path": f"/p/{i}.jpg", "score": 5.0 + i, "rank": i + 1, "label": "good"} for i in range(100)]

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        scoring, {".csv": "_write_csv", ".jsonl": "_write_jsonl"}.get(suffix, "_text_paths"), disk_full
    )
    with pytest.raises(OSError):
        write_rows(rows, target)
    assert target.read_bytes() == b"previous results"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left


# --- precision auto on CPUs with native bf16 (issue 11, point 5) ---


def test_auto_precision_follows_cpu_bf16(monkeypatch) -> None:
    monkeypatch.setenv("CLIP_AESTHETICS_CPU_BF16", "1")
    assert resolve_precision(CPU, "auto", cpu_bf16=True) == "bf16"
    assert resolve_precision(CPU, "auto") == "bf16"  # one rule for every command (evaluate too)
    assert resolve_precision(CPU, "auto", cpu_bf16=False) == "fp32"
    assert resolve_precision(CPU, "fp32", cpu_bf16=True) == "fp32"
    monkeypatch.setenv("CLIP_AESTHETICS_CPU_BF16", "0")
    assert resolve_precision(CPU, "auto", cpu_bf16=True) == "fp32"
    assert resolve_precision(torch.device("cuda"), "auto") == "bf16"


def test_cpu_flags_detection(monkeypatch) -> None:
    from clip_aesthetics.encoders import compute as base

    monkeypatch.delenv("CLIP_AESTHETICS_CPU_BF16")
    assert base.bf16_in_cpu_flags("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert base.bf16_in_cpu_flags("flags : fpu amx_bf16\n")
    assert not base.bf16_in_cpu_flags("flags : fpu sse avx2 avx512f\n")


def test_score_auto_uses_bf16_where_native(photo_dir: Path, tiny_clip_spec: str, monkeypatch) -> None:
    from clip_aesthetics.pipeline.images import find_images
    from clip_aesthetics.scorers import ZeroShotScorer
    from test_zeroshot import GROUPS

    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    paths = find_images([photo_dir])
    rows = {}
    for env, precision in (("1", "auto"), ("1", "bf16"), ("0", "auto")):
        monkeypatch.setenv("CLIP_AESTHETICS_CPU_BF16", env)
        report = scoring.score_paths(scorer, paths, workers=0, progress=False, precision=precision)
        rows[env, precision] = [r["score"] for r in report.rows]
    assert rows["1", "auto"] == rows["1", "bf16"] and rows["1", "auto"] != rows["0", "auto"]


def test_evaluate_outputs_refused_before_any_work(tmp_path: Path) -> None:
    dataset = tmp_path / "no-dataset-needed"  # the output checks come before the dataset is read
    (tmp_path / "folder.json").mkdir()
    metrics = tmp_path / "m.json"
    metrics.write_text("previous")
    for extra in (
        ["--output", tmp_path / "folder.json"],
        ["--output", metrics, "--predictions", tmp_path / "m.csv", "--html", tmp_path / "folder.json"],
    ):
        result = run("evaluate", dataset, *extra)
        assert result.exit_code == 2 and "dataset not found" not in result.output, result.output
    assert metrics.read_text() == "previous"


def test_evaluate_failed_write_keeps_previous_predictions(tmp_path: Path, monkeypatch) -> None:
    from clip_aesthetics.runs import evaluate as evaluation

    target = tmp_path / "preds.csv"
    target.write_text("previous")

    class Broken:  # a result whose rows fail half-way, as a full disk would
        raw = pred_dist = None
        scored = (0, 1)

        @property
        def records(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        evaluation.write_predictions(Broken(), target)
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["preds.csv"]


def test_embed_auto_precision_recorded(
    photo_dir: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    monkeypatch.setenv("CLIP_AESTHETICS_CPU_BF16", "1")
    cache = tmp_path / "cache"
    args = [
        "embed",
        photo_dir,
        "--dataset",
        "folder",
        "--split-kind",
        "none",
        "--model",
        tiny_clip_spec,
        "-o",
        cache,
    ]
    result = run(*args, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((cache / "manifest.json").read_text())["feature"]["precision"] == "bf16"


def test_evaluate_with_markup_in_names(tmp_path: Path, tiny_clip_spec: str) -> None:
    folder = tmp_path / "set"
    (folder / "empty[").mkdir(parents=True)
    names = [f"[red]x{i}.jpg" if i % 2 else f"[bold]y{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        photo(i).save(folder / name)
    (folder / "empty[" / "bold].jpg").write_bytes(b"")  # unreadable: listed with its odd name
    rows = [f"{n},{3 + i % 5},test" for i, n in enumerate([*names, "empty[/bold].jpg"])]
    (folder / "labels.csv").write_text("path,score,split\n" + "\n".join(rows) + "\n")
    metrics, preds = tmp_path / "m.json", tmp_path / "p.csv"
    result = run(
        "evaluate", folder / "labels.csv", "--dataset", "csv", "--model", tiny_clip_spec, *PROMPT_ARGS,
        "--workers", "0", "--output", metrics, "--predictions", preds,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(Path(r["path"]).name for r in read_csv(preds)) == sorted(names)
    assert json.loads(metrics.read_text())["n_scored"] == 6


def test_embed_and_evaluate_follow_one_precision_rule(
    photo_dir: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    """fit-probe's metrics come from `embed` features; `evaluate` of the same probe must use the same
    precision, and both files say which it was."""
    monkeypatch.setenv("CLIP_AESTHETICS_CPU_BF16", "1")  # as on a CPU with native bf16
    rows = [f"{p.name},{3 + i % 5},test" for i, p in enumerate(sorted(photo_dir.glob("*.*")))]
    labels = photo_dir / "labels.csv"
    labels.write_text("path,score,split\n" + "\n".join(rows) + "\n")
    common = ["--dataset", "csv", "--model", tiny_clip_spec, "--workers", "0"]
    cache, metrics = tmp_path / "cache", tmp_path / "m.json"
    assert run("embed", labels, *common, "-o", cache).exit_code == 0
    result = run("evaluate", labels, *common, *PROMPT_ARGS, "--output", metrics)
    assert result.exit_code == 0, result.output
    embedded = json.loads((cache / "manifest.json").read_text())["feature"]["precision"]
    assert embedded == json.loads(metrics.read_text())["precision"] == "bf16"
