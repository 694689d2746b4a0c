"""Evaluation end to end: metrics checked against scipy/numpy on the written predictions, exact split ids,
failed images, distributions (EMD), bootstrap intervals, and `compare` equal to separate `evaluate` runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from clip_aesthetics import load_backbone, save_scorer
from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava, parse_ava, split_records
from clip_aesthetics.datasets.ava import read_id_list
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.runs.evaluate import evaluate_scorer, load_split, write_predictions
from clip_aesthetics.scorers import ScoreOutput, Scorer, ZeroShotScorer
from conftest import console_text

PROMPTS = ["--positive", "a stunning photo", "--positive", "a masterpiece", "--negative", "a dull photo"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images, 18 official test ids: 2 of them have no file, 1 is truncated below."""
    root = make_synthetic_ava(
        tmp_path_factory.mktemp("eval") / "AVA_dataset", n=60, seed=5, size=64, test_fraction=0.3
    )
    present = [i for i in _test_ids(root) if (root / "images" / f"{i}.jpg").exists()]
    image = root / "images" / f"{present[0]}.jpg"
    image.write_bytes(image.read_bytes()[:200])
    return root


def _test_ids(root: Path) -> list[str]:
    return read_id_list(root / "aesthetics_image_lists" / "generic_test.jpgl")


def _planted(root: Path) -> dict[str, str]:
    with (root / "planted.csv").open() as f:
        return {row["id"]: row["image"] for row in csv.DictReader(f)}


def _true_means(root: Path) -> dict[str, float]:
    """Means straight from AVA.txt: sum(i * votes_i) / sum(votes)."""
    means = {}
    for line in (root / "AVA.txt").read_text().splitlines():
        fields = line.split()
        votes = np.array([int(v) for v in fields[2:12]])
        means[fields[1]] = float((votes * np.arange(1, 11)).sum() / votes.sum())
    return means


def _read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluated(synth: Path, tiny_clip_spec: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval-out")
    result = run(
        "evaluate", synth, "--dataset", "ava", "--split", "test", "--model", tiny_clip_spec, *PROMPTS,
        "--output", out / "metrics.json", "--predictions", out / "preds.csv", "--plots", out / "plots",
        "--bootstrap", 50, "--workers", 0, "--batch-size", 4,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "metrics.json").read_text()), console_text(result)


def test_evaluate_metrics_match_an_independent_computation(synth: Path, evaluated) -> None:
    out, doc, _ = evaluated
    rows = _read_predictions(out / "preds.csv")
    true_means = _true_means(synth)
    true = np.array([float(r["true_mean"]) for r in rows])
    pred = np.array([float(r["score"]) for r in rows])
    raw = np.array([float(r["raw"]) for r in rows])
    assert true == pytest.approx([true_means[r["id"]] for r in rows], abs=1e-12)
    m = doc["metrics"]
    assert m["n"] == len(rows) == doc["n_scored"]
    # zero-shot correlations are those of raw (the authors'): the 1-10 score saturates and ties in float32
    assert m["srcc"] == pytest.approx(stats.spearmanr(raw, true).statistic, abs=1e-12)
    assert m["plcc"] == pytest.approx(stats.pearsonr(raw, true).statistic, abs=1e-12)
    assert m["plcc_score"] == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-12)
    assert m["mse"] == pytest.approx(np.mean((pred - true) ** 2), abs=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - true)), abs=1e-12)
    # uncalibrated zero-shot: "good" is the closer prompt group (raw > 0), truth is mean > 5 (paper's rule)
    assert doc["thresholds"] == {"true": 5.0, "pred": 5.5}
    assert m["accuracy"] == pytest.approx(np.mean((raw > 0) == (true > 5)), abs=1e-12)
    assert m["true_good_fraction"] == pytest.approx(np.mean(true > 5))
    assert "emd" not in m and "pred_1" not in rows[0]
    # percentile bootstrap by hand: 50 resamples of the images with numpy's seeded generator (seed 0)
    resamples = np.random.default_rng(0).integers(0, len(raw), size=(50, len(raw)))
    values = np.array([stats.spearmanr(raw[i], true[i]).statistic for i in resamples])
    values = values[np.isfinite(values)]
    assert doc["intervals"]["srcc"] == pytest.approx(list(np.quantile(values, [0.025, 0.975])))
    assert set(doc["intervals"]) == {"srcc", "plcc", "accuracy", "mse", "mae"}
    assert doc["bootstrap"] == {"n": 50, "seed": 0, "level": 0.95}


def test_evaluate_covers_exactly_the_present_official_test_ids(synth: Path, evaluated) -> None:
    out, doc, output = evaluated
    planted = _planted(synth)
    listed = set(_test_ids(synth))
    missing = {i for i in listed if planted[i] == "missing"}
    truncated = {i for i in listed - missing if (synth / "images" / f"{i}.jpg").stat().st_size == 200}
    assert len(listed) == 18 and len(missing) == 2 and len(truncated) == 1
    scored = {r["id"] for r in _read_predictions(out / "preds.csv")}
    assert scored == listed - missing - truncated
    assert doc["n_failed"] == 1 and doc["failed"][0]["id"] in truncated
    assert "truncated" in doc["failed"][0]["error"] or "corrupt" in doc["failed"][0]["error"]
    assert "failed" in output and "15" in output
    assert doc["dataset"]["n_dropped"] == 2
    assert {d["id"] for d in doc["dataset"]["dropped"]} == missing
    _, info = split_records(parse_ava(synth), "official")
    assert doc["split"] == {"name": "test", **info.to_dict()}
    assert doc["split"]["counts"]["test"] == 16


def test_evaluate_records_scorer_versions_and_plots(evaluated, tiny_clip_spec: str) -> None:
    out, doc, _ = evaluated
    assert doc["scorer"]["method"] == "zeroshot"
    assert doc["scorer"]["backbone"]["model"] == tiny_clip_spec
    assert doc["scorer"]["prompts"] == {
        "positive": ["a stunning photo", "a masterpiece"],
        "negative": ["a dull photo"],
    }
    assert set(doc["versions"]) == {"clip_aesthetics", "torch", "open_clip", "timm", "numpy"}
    assert doc["images_per_second"] > 0 and doc["seconds"] > 0
    for name in ("scatter.png", "histogram.png"):
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


class DistributionScorer(Scorer):
    """A scorer with a 10-bin distribution (softmax of a fixed projection); records its batch sizes."""

    method = "test-distribution"
    has_distribution = True

    def __init__(self, backbone) -> None:
        super().__init__(backbone)
        self.register_buffer(
            "weight", torch.randn(backbone.feature_dim, 10, generator=torch.Generator().manual_seed(0))
        )
        self.batch_sizes: list[int] = []

    def forward(self, pixels: torch.Tensor) -> ScoreOutput:
        self.batch_sizes.append(pixels.shape[0])
        dist = torch.softmax(3 * self.backbone.encode_image(pixels).float() @ self.weight, dim=-1)
        return ScoreOutput(score=dist @ torch.arange(1.0, 11.0), distribution=dist)


def test_distribution_scorer_emd_streamed_in_batches(
    synth: Path, tiny_clip_spec: str, tmp_path: Path
) -> None:
    scorer = DistributionScorer(load_backbone(tiny_clip_spec, device="cpu")).eval()
    evaluation_set = load_split("ava", synth, "test")
    result = evaluate_scorer(scorer, evaluation_set.records, batch_size=4, workers=0)
    assert max(scorer.batch_sizes) <= 4 and sum(scorer.batch_sizes) == result.n_scored == 15
    # only O(n) numbers are kept per image: a score and a 10-bin distribution, no pixels or features
    assert result.pred.shape == (16,) and result.pred_dist.shape == (16, 10) and result.raw is None
    rows = _read_predictions(write_predictions(result, tmp_path / "p.csv"))
    q = np.array([[float(r[f"pred_{k}"]) for k in range(1, 11)] for r in rows])
    votes = {
        line.split()[1]: np.array(line.split()[2:12], dtype=float)
        for line in (synth / "AVA.txt").read_text().splitlines()
    }
    p = np.stack([votes[r["id"]] / votes[r["id"]].sum() for r in rows])
    q_norm = q / q.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only up to rounding
    expected = np.mean(np.sqrt(np.mean((np.cumsum(p, 1) - np.cumsum(q_norm, 1)) ** 2, axis=1)))
    assert result.metrics["emd"] == pytest.approx(expected, abs=1e-9)
    assert result.thresholds == {"true": 5.0, "pred": 5.0}
    pred = np.array([float(r["score"]) for r in rows])
    assert pred == pytest.approx(q @ np.arange(1, 11), abs=1e-5)


def test_compare_rows_equal_separate_evaluate_runs(synth: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    files = {
        "bright": save_scorer(
            ZeroShotScorer(backbone, PromptGroups(("a bright photo",), ("a dark photo",))),
            tmp_path / "bright.json",
        ),
        "sharp": save_scorer(
            ZeroShotScorer(backbone, PromptGroups(("a sharp photo",), ("a blurry photo",))),
            tmp_path / "sharp.json",
        ),
    }
    result = run(
        "compare", synth, "--scorer", files["bright"], "--scorer", files["sharp"], "--workers", 0,
        "--output", tmp_path / "table.md", "--json", tmp_path / "table.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "table.json").read_text())
    assert [row["name"] for row in table["rows"]] == ["bright", "sharp"]
    markdown = (tmp_path / "table.md").read_text().splitlines()
    assert len(markdown) == 4 and markdown[0].startswith("| scorer | method | backbone | n | srcc | plcc |")
    for row, line in zip(table["rows"], markdown[2:], strict=True):
        single = tmp_path / f"{row['name']}.metrics.json"
        evaluated = run("evaluate", synth, "--scorer", files[row["name"]], "--workers", 0, "--output", single)
        assert evaluated.exit_code == 0, evaluated.output
        doc = json.loads(single.read_text())
        assert {k: row[k] for k in doc["metrics"]} == doc["metrics"]
        assert row["n_failed"] == doc["n_failed"] == 1 and row["method"] == "zeroshot"
        assert table["split"] == doc["split"]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [row["name"], "zeroshot", tiny_clip_spec, "15"]
        assert cells[4:6] == [f"{row['srcc']:.3f}", f"{row['plcc']:.3f}"]
    assert table["rows"][0]["srcc"] != table["rows"][1]["srcc"]  # different prompts, different scorers


def test_random_and_all_splits(synth: Path) -> None:
    random_set = load_split("ava", synth, "test", "random", seed=1)
    assert random_set.info.kind == "random" and random_set.info.seed == 1
    assert len(random_set.records) == round(0.1 * 58)
    everything = load_split("ava", synth, "all")
    assert len(everything.records) == 58 and everything.info.counts == {"all": 58}
    assert everything.describe()["split"]["name"] == "all"
