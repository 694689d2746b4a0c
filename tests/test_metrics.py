"""Metrics against scipy and hand-worked examples."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import stats

from clip_aesthetics import metrics


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    true = rng.uniform(2, 8, 200)
    return true + rng.normal(0, 1, 200), true


def test_correlations_match_scipy(scores: tuple[np.ndarray, np.ndarray]) -> None:
    pred, true = scores
    assert metrics.srcc(pred, true) == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-12)
    assert metrics.plcc(pred, true) == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-12)


def test_srcc_handles_ties_like_scipy() -> None:
    pred, true = [1, 2, 2, 3, 5, 5], [2, 1, 3, 3, 4, 6]
    assert metrics.srcc(pred, true) == pytest.approx(stats.spearmanr(pred, true).statistic)


def test_constant_input_gives_nan_not_error() -> None:
    assert math.isnan(metrics.srcc([5, 5, 5], [1, 2, 3]))
    assert math.isnan(metrics.plcc([1, 2, 3], [4, 4, 4]))


@pytest.mark.parametrize("fn", [metrics.srcc, metrics.plcc, metrics.accuracy, metrics.mse, metrics.mae])
def test_validation_errors(fn) -> None:
    with pytest.raises(ValueError, match="same length"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        fn([1], [1])
    with pytest.raises(ValueError, match="NaN"):
        fn([1, float("nan")], [1, 2])


def test_accuracy_binarises_both_sides_strictly_above_threshold() -> None:
    pred = [4.0, 5.0, 5.1, 7.0, 6.0]
    true = [4.5, 5.5, 5.2, 4.0, 9.0]
    # good?  pred: F F T T T   true: F T T F T  -> agree on items 0, 2, 4
    assert metrics.accuracy(pred, true) == pytest.approx(3 / 5)
    # threshold 6: pred good F F F T F, true good F F F F T -> agree on 0, 1, 2
    assert metrics.accuracy(pred, true, threshold=6.0) == pytest.approx(3 / 5)


def test_mse_mae_hand_computed() -> None:
    pred, true = [1.0, 2.0, 4.0], [1.0, 3.0, 1.0]
    assert metrics.mse(pred, true) == pytest.approx((0 + 1 + 9) / 3)
    assert metrics.mae(pred, true) == pytest.approx((0 + 1 + 3) / 3)


def test_emd_adjacent_bins_is_sqrt_one_tenth() -> None:
    p = np.zeros(10)
    q = np.zeros(10)
    p[0], q[1] = 1, 1
    # CDFs differ by 1 at bin 1 only: sqrt(1/10)
    assert metrics.emd(p, q) == pytest.approx([math.sqrt(0.1)])
    assert metrics.emd(p, q, r=1) == pytest.approx([0.1])


def test_emd_hand_worked_and_per_image() -> None:
    p = np.array([[0.5, 0.5] + [0] * 8, [0.1] * 10])
    q = np.array([[0, 0, 1] + [0] * 7, [0.1] * 10])
    # image 0: CDF_p = .5, 1, 1, ...; CDF_q = 0, 0, 1, ... -> diffs .5, 1, then 0 -> sqrt((.25 + 1) / 10)
    expected = [math.sqrt(1.25 / 10), 0.0]
    np.testing.assert_allclose(metrics.emd(p, q), expected, atol=1e-12)
    # vote counts are normalised first, so scaling a row does not change the distance
    np.testing.assert_allclose(metrics.emd(p * 37, q * 3), expected, atol=1e-12)


def test_emd_matches_brute_force_formula() -> None:
    rng = np.random.default_rng(3)
    p, q = rng.dirichlet(np.ones(10), 5), rng.dirichlet(np.ones(10), 5)
    for r in (1, 2, 3):
        brute = [
            (sum(abs(sum(p[i, : k + 1]) - sum(q[i, : k + 1])) ** r for k in range(10)) / 10) ** (1 / r)
            for i in range(5)
        ]
        np.testing.assert_allclose(metrics.emd(p, q, r=r), brute)


def test_emd_rejects_bad_shapes_and_rows() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 10\)"):
        metrics.emd(np.ones((2, 9)), np.ones((2, 9)))
    with pytest.raises(ValueError, match="zero total"):
        metrics.emd(np.zeros((1, 10)), np.ones((1, 10)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.emd(np.ones((2, 10)), np.ones((3, 10)))


def test_votes_mean_and_distribution() -> None:
    counts = np.array([[0, 0, 0, 0, 1, 1, 0, 0, 0, 2], [1] * 10])
    np.testing.assert_allclose(metrics.mean_from_votes(counts), [(5 + 6 + 20) / 4, 5.5])
    assert metrics.mean_from_votes(counts[0]) == pytest.approx(7.75)
    np.testing.assert_allclose(metrics.votes_to_distribution(counts)[0], counts[0] / 4)
    assert metrics.votes_to_distribution(counts[1]).shape == (10,)


def test_bootstrap_ci_brackets_statistic_and_is_reproducible(scores: tuple[np.ndarray, np.ndarray]) -> None:
    pred, true = scores
    low, high = metrics.bootstrap_ci(metrics.srcc, pred, true, n=300, seed=1)
    point = metrics.srcc(pred, true)
    assert low < point < high
    # the width should be close to the Fisher-z normal approximation for Spearman (se ~ 1.03 / sqrt(n - 3))
    z, se = np.arctanh(point), 1.03 / math.sqrt(len(pred) - 3)
    fisher_width = np.tanh(z + 1.96 * se) - np.tanh(z - 1.96 * se)
    assert (high - low) == pytest.approx(fisher_width, rel=0.35)
    assert metrics.bootstrap_ci(metrics.srcc, pred, true, n=300, seed=1) == (low, high)


def test_bootstrap_ci_of_accuracy_with_partial() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 10, 400)
    pred = np.where(rng.random(400) < 0.8, true, 11 - true)  # ~80% agree on the binary label
    acc = functools.partial(metrics.accuracy, threshold=5.5)
    low, high = metrics.bootstrap_ci(acc, pred, true, n=400, seed=0)
    p = metrics.accuracy(pred, true, threshold=5.5)
    half = 1.96 * math.sqrt(p * (1 - p) / 400)  # binomial normal approximation
    assert low == pytest.approx(p - half, abs=0.015)
    assert high == pytest.approx(p + half, abs=0.015)


def test_compute_metrics_combines_everything(scores: tuple[np.ndarray, np.ndarray]) -> None:
    pred, true = scores
    out = metrics.compute_metrics(pred, true)
    assert set(out) == {"n", "srcc", "plcc", "accuracy", "mse", "mae"}
    assert out["n"] == 200
    assert out["plcc"] == pytest.approx(stats.pearsonr(pred, true).statistic)
    assert out["mse"] == pytest.approx(np.mean((pred - true) ** 2))

    rng = np.random.default_rng(1)
    pd, td = rng.dirichlet(np.ones(10), 200), rng.dirichlet(np.ones(10), 200)
    with_emd = metrics.compute_metrics(pred, true, pd, td)
    cdf_diff = np.cumsum(pd, axis=1) - np.cumsum(td, axis=1)
    assert with_emd["emd"] == pytest.approx(np.mean(np.sqrt(np.mean(cdf_diff**2, axis=1))))
    with pytest.raises(ValueError, match="both"):
        metrics.compute_metrics(pred, true, pred_dist=pd)
