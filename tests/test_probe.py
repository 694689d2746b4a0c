"""Linear probes: closed forms against numpy, learning a planted signal, scorer files, CLI; LAION heads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from scipy import stats
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from clip_aesthetics import load_backbone
from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.features import DatasetSpec, embed_dataset, load_features
from clip_aesthetics.features.fit_probe import ALPHA_EXPONENTS, fit_linear, fit_probe
from clip_aesthetics.metrics import srcc
from clip_aesthetics.runs.score import build_scorer, score_paths
from clip_aesthetics.scorers import ProbeHead, ZeroShotScorer, load_scorer, read_scorer_file
from conftest import TINY_CLIP_CONFIG, console_text, save_open_clip_dir

GROUPS = PromptGroups(("a stunning photo", "a masterpiece"), ("a dull photo",))


def regression_problem(n: int = 300, d: int = 12, k: int = 1, seed: int = 0):
    """Features with offsets and unequal scales (so standardisation matters) and a noisy linear target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * rng.uniform(0.1, 10, d) + rng.normal(0, 50, d)
    y = x @ rng.normal(size=(d, k)) + rng.normal(0, 1.0, (n, k)) + 5
    return x, y


def standardised(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (x - reference.mean(axis=0)) / reference.std(axis=0)


def ridge_reference(z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """[intercept; w] minimising ||y - b - z w||^2 + alpha ||w||^2, as one augmented least-squares problem."""
    n, d = z.shape
    a = np.block([[np.ones((n, 1)), z], [np.zeros((d, 1)), np.sqrt(alpha) * np.eye(d)]])
    b = np.vstack([y.reshape(n, -1), np.zeros((d, y.reshape(n, -1).shape[1]))])
    return np.linalg.lstsq(a, b, rcond=None)[0]


@pytest.mark.parametrize("k", [1, 3])
def test_ols_equals_lstsq_on_standardised_features(k: int):
    x, y = regression_problem(k=k)
    fit = fit_linear(x, y, "ols")
    z = standardised(x, x)
    expected = np.linalg.lstsq(np.column_stack([np.ones(len(z)), z]), y, rcond=None)[0]
    np.testing.assert_allclose(fit.intercept, expected[0], rtol=1e-9)
    np.testing.assert_allclose(fit.weights, expected[1:], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.mean, x.mean(axis=0))
    np.testing.assert_allclose(fit.std, x.std(axis=0))
    np.testing.assert_allclose(fit.predict(x), np.column_stack([np.ones(len(z)), z]) @ expected, atol=1e-8)


def test_ols_on_float16_features_and_a_constant_feature():
    x, y = regression_problem()
    x16 = np.column_stack([x / 50, np.full(len(x), 3.0)]).astype(np.float16)  # the cache's dtype
    fit = fit_linear(x16, y, "ols")
    x64 = x16.astype(np.float64)
    z = np.column_stack([standardised(x64[:, :-1], x64[:, :-1]), np.zeros(len(x))])  # constant -> 0
    expected = np.linalg.lstsq(np.column_stack([np.ones(len(z)), z]), y, rcond=None)[0]
    assert fit.std[-1] == 1.0 and fit.weights[-1, 0] == 0.0
    np.testing.assert_allclose(fit.weights, expected[1:], rtol=1e-7, atol=1e-9)


def test_ridge_equals_closed_form_and_tends_to_ols():
    x, y = regression_problem(k=2)
    z = standardised(x, x)
    for alpha in (0.5, 30.0, 1e4):
        fit = fit_linear(x, y, "ridge", alpha)
        expected = ridge_reference(z, y, alpha)
        np.testing.assert_allclose(fit.intercept, expected[0], rtol=1e-9)
        np.testing.assert_allclose(fit.weights, expected[1:], rtol=1e-7, atol=1e-9)
    ols = fit_linear(x, y, "ols")
    nearly_zero = fit_linear(x, y, "ridge", 1e-9)
    np.testing.assert_allclose(nearly_zero.weights, ols.weights, rtol=1e-6, atol=1e-9)


def test_auto_alpha_minimises_validation_mse_over_the_grid():
    x_all, y_all = regression_problem(n=320, d=30, seed=1)  # few images per feature: shrinkage pays off
    x, y, x_val, y_val = x_all[:120], y_all[:120], x_all[120:], y_all[120:]
    fit = fit_linear(x, y, "ridge", "auto", x_val, y_val)
    z, z_val = standardised(x, x), standardised(x_val, x)
    errors = []
    for alpha in len(x) * 10.0**ALPHA_EXPONENTS:
        coef = ridge_reference(z, y, alpha)
        errors.append(np.mean((z_val @ coef[1:] + coef[0] - y_val) ** 2))
    np.testing.assert_allclose(fit.selection["val_mse"], errors, rtol=1e-6)
    assert fit.alpha == pytest.approx(len(x) * 10.0 ** ALPHA_EXPONENTS[int(np.argmin(errors))])
    with pytest.raises(ValueError, match="validation split"):
        fit_linear(x, y, "ridge", "auto")
    with pytest.raises(ValueError, match="--solver ridge"):
        fit_linear(x, y, "ols", 1.0)


def test_distribution_head_clips_renormalises_and_takes_the_mean():
    raw = np.array([[0.3, -0.1, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05], [-0.1] * 10])
    d = raw.shape[1]
    head = ProbeHead(torch.zeros(d), torch.ones(d), torch.eye(d), torch.zeros(d), "distribution")
    out = head(torch.tensor(raw, dtype=torch.float32))
    clipped = np.clip(raw[0], 0, None)
    expected = clipped / clipped.sum()
    np.testing.assert_allclose(out.distribution[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(out.distribution[1].numpy(), np.full(10, 0.1), rtol=1e-6)  # all clipped
    np.testing.assert_allclose(out.score.numpy(), [expected @ np.arange(1, 11), 5.5], rtol=1e-6)


# --- on a synthetic AVA set with the tiny random CLIP -------------------------------------------------------


@pytest.fixture(scope="module")
def ava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_ava(tmp_path_factory.mktemp("probe") / "AVA_dataset", n=200, size=64, seed=0)


@pytest.fixture(scope="module")
def backbone(tiny_clip_spec: str):
    return load_backbone(tiny_clip_spec, device="cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, ava: Path, backbone) -> Path:
    out = tmp_path_factory.mktemp("probe-cache") / "cache"
    spec = DatasetSpec("ava", str(ava), split="random", fractions=(0.6, 0.2, 0.2))
    embed_dataset(spec, backbone, out, batch_size=32, shard_size=64, workers=0, progress=False)
    return out


def test_probe_learns_the_planted_signal_better_than_baselines(cache: Path, backbone):
    features = load_features(cache)
    test = features.select("test")
    train_mean = np.full(len(test), features.select("train").means.mean())
    assert np.isnan(srcc(train_mean, test.means))  # a constant prediction ranks nothing
    zeroshot = ZeroShotScorer(backbone, GROUPS).score_features(torch.from_numpy(test.features))
    zeroshot_srcc = srcc(zeroshot.score.numpy(), test.means)
    results = {
        (solver, target): fit_probe(features, solver=solver, target=target)
        for solver, target in [("ols", "mean"), ("ridge", "mean"), ("ridge", "distribution")]
    }
    for result in results.values():
        probe_srcc = result.metrics["test"]["srcc"]
        assert probe_srcc > 0.35 and probe_srcc > zeroshot_srcc + 0.2, (probe_srcc, zeroshot_srcc)
    assert "emd" in results["ridge", "distribution"].metrics["test"]
    ols = results["ols", "mean"]
    with torch.inference_mode():
        predictions = ols.head(torch.from_numpy(test.features)).score.double().numpy()
    np.testing.assert_allclose(predictions, ols.linear.predict(test.features)[:, 0], rtol=1e-5)
    # the reported test metrics, by scipy and numpy on the head's predictions
    reported = ols.metrics["test"]
    assert reported["srcc"] == pytest.approx(stats.spearmanr(predictions, test.means).statistic, abs=1e-12)
    assert reported["plcc"] == pytest.approx(stats.pearsonr(predictions, test.means).statistic, abs=1e-12)
    assert reported["accuracy"] == pytest.approx(np.mean((predictions > 5) == (test.means > 5)))
    assert reported["mse"] == pytest.approx(np.mean((predictions - test.means) ** 2), abs=1e-12)


def test_head_file_round_trip_and_pixels_path(tmp_path: Path, cache: Path, backbone):
    result = fit_probe(cache, solver="ridge", alpha="auto", target="distribution")
    path = result.save(tmp_path / "head.safetensors")
    config, tensors = read_scorer_file(path)
    as_json = lambda data: json.loads(json.dumps(data))  # noqa: E731 (tuples read back as lists)
    assert config["method"] == "probe" and config["backbone"] == as_json(backbone.describe())
    assert config["fit"]["solver"] == "ridge" and config["fit"]["alpha"] == result.linear.alpha
    assert set(config["fit"]["metrics"]) == {"val", "test"} and tensors["scaler_mean"].shape == (32,)
    scorer = load_scorer(path, backbone=backbone)
    assert (
        as_json(scorer.config())
        == as_json(result.config())
        == {k: v for k, v in config.items() if k != "version"}
    )
    features = load_features(cache).select("test")
    with torch.inference_mode():
        loaded = scorer.score_features(torch.from_numpy(features.features))
        fitted = result.head(torch.from_numpy(features.features))
    torch.testing.assert_close(loaded.score, fitted.score)
    torch.testing.assert_close(loaded.distribution, fitted.distribution)
    # from image files through the pipeline: the cached float16 features give the same scores
    report = score_paths(scorer, features.paths, workers=0, progress=False)
    by_path = {row["path"]: row["score"] for row in report.rows}
    np.testing.assert_allclose([by_path[p] for p in features.paths], loaded.score.numpy(), atol=5e-3)


def test_cli_embed_fit_probe_then_score(tmp_path: Path, ava: Path, tiny_clip_spec: str):
    runner, cache, head = CliRunner(), tmp_path / "cache", tmp_path / "head.safetensors"
    embedded = runner.invoke(
        app,
        [
            "embed",
            str(ava),
            "-m",
            tiny_clip_spec,
            "-o",
            str(cache),
            "--split-kind",
            "random",
            "--workers",
            "0",
        ],
    )
    assert embedded.exit_code == 0, embedded.output
    metrics = tmp_path / "metrics.json"
    args = ["fit-probe", str(cache), "-o", str(head), "--solver", "ridge", "--metrics", str(metrics)]
    fitted = runner.invoke(app, args)
    assert fitted.exit_code == 0, fitted.output
    assert "test" in fitted.output and json.loads(metrics.read_text())["metrics"]["test"]["n"] == 20
    ranked = tmp_path / "ranked.csv"
    scored = runner.invoke(
        app, ["score", str(ava / "images"), "--scorer", str(head), "-o", str(ranked), "--workers", "0"]
    )
    assert scored.exit_code == 0, scored.output
    rows = list(csv.DictReader(ranked.open()))
    assert len(rows) == 198 and [int(r["rank"]) for r in rows] == list(range(1, 199))
    bad = runner.invoke(app, ["fit-probe", str(cache), "-o", str(head), "--alpha", "lots"])
    assert bad.exit_code == 2 and "--alpha takes a number" in bad.output


# --- LAION aesthetic predictor heads ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip768(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny CLIP whose image embedding is 768-d, like ViT-L/14's."""
    folder = save_open_clip_dir(
        tmp_path_factory.mktemp("clip768") / "m", {**TINY_CLIP_CONFIG, "embed_dim": 768}
    )
    return f"local-dir:{folder}"


def laion_reference_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(768, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    ).eval()


def test_laion_head_matches_an_independent_mlp(tmp_path: Path, clip768: str, photo_dir: Path):
    mlp = laion_reference_mlp()
    checkpoint = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, checkpoint)
    scorer = build_scorer(f"laion:{checkpoint}", model=clip768, device="cpu")
    assert scorer.method == "laion"
    paths = sorted(photo_dir.rglob("*.jpg"))
    report = score_paths(scorer, paths, workers=0, progress=False)
    model, _, preprocess = open_clip.create_model_and_transforms(clip768)
    with torch.inference_mode():
        embeddings = model.eval().encode_image(torch.stack([preprocess(Image.open(p)) for p in paths]))
        expected = mlp(F.normalize(embeddings, dim=-1)).squeeze(-1).numpy()
    by_path = {row["path"]: row["score"] for row in report.rows}
    np.testing.assert_allclose([by_path[str(p)] for p in paths], expected, rtol=1e-4, atol=1e-4)


def test_laion_head_errors_are_one_line(tmp_path: Path, tiny_clip_spec: str, clip768: str, photo_dir: Path):
    checkpoint = tmp_path / "head.pth"
    torch.save({f"layers.{k}": v for k, v in laion_reference_mlp().state_dict().items()}, checkpoint)
    with pytest.raises(ValueError, match="expects 768-d"):
        build_scorer(f"laion:{checkpoint}", model=tiny_clip_spec, device="cpu")
    torch.save({"fc.weight": torch.zeros(1, 768)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a LAION aesthetic predictor checkpoint"):
        build_scorer(f"laion:{tmp_path / 'other.pth'}", model=clip768, device="cpu")
    result = CliRunner().invoke(
        app, ["score", str(photo_dir), "--scorer", f"laion:{checkpoint}", "-m", clip768, "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "scored 8" in console_text(result)
    missing = CliRunner().invoke(app, ["score", str(photo_dir), "--scorer", f"laion:{tmp_path / 'nope.pth'}"])
    assert missing.exit_code == 2 and "checkpoint not found" in missing.output
