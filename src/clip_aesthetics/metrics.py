"""Evaluation metrics for image aesthetic assessment (numpy/scipy only).

Scores are means on the AVA 1-10 scale; distributions are 10-bin histograms over the scores 1..10.

Conventions:
- Inputs are 1-D sequences of equal length with at least two items and no NaN/inf; anything else raises
  ``ValueError`` with a message naming the problem.
- SRCC and PLCC of a constant input are undefined: they return ``nan`` (no warning, no exception), so a
  degenerate scorer shows up as ``nan`` in a metrics file instead of crashing an evaluation run.
- ``accuracy`` binarises both sides with the same threshold: "good" means score > threshold (AVA: 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from .constants import N_BINS

ArrayLike = Any  # anything np.asarray accepts; kept loose so lists, numpy arrays and CPU tensors all work
SCORES = np.arange(1, N_BINS + 1, dtype=np.float64)


def _pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a (prediction, ground truth) pair to 1-D float arrays."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same length, got {p.size} and {t.size}")
    if p.size < 2:
        raise ValueError(f"need at least 2 items to compute a metric, got {p.size}")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("pred and true must not contain NaN or infinite values")
    return p, t


def _is_constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def srcc(pred: ArrayLike, true: ArrayLike) -> float:
    """Spearman rank correlation coefficient.

    Returns:
        The coefficient in [-1, 1], or ``nan`` when either input is constant (rank correlation undefined).
    """
    p, t = _pair(pred, true)
    if _is_constant(p) or _is_constant(t):
        return float("nan")
    return float(stats.spearmanr(p, t).statistic)


def plcc(pred: ArrayLike, true: ArrayLike) -> float:
    """Pearson linear correlation coefficient.

    Returns:
        The coefficient in [-1, 1], or ``nan`` when either input is constant.
    """
    p, t = _pair(pred, true)
    if _is_constant(p) or _is_constant(t):
        return float("nan")
    return float(stats.pearsonr(p, t).statistic)


def check_threshold(value: float, name: str = "threshold") -> float:
    """``value`` as a float; ValueError unless finite (a NaN threshold calls every image "bad")."""
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def accuracy(pred: ArrayLike, true: ArrayLike, threshold: float = 5.0) -> float:
    """Binary accuracy: fraction of images where prediction and truth agree on "good" (score > threshold).

    Both inputs are on the same scale (1-10 for AVA). Note that on AVA about 70% of test images are good, so
    an accuracy near 0.70 is no better than always answering "good".
    """
    p, t = _pair(pred, true)
    threshold = check_threshold(threshold)
    return float(np.mean((p > threshold) == (t > threshold)))


def mse(pred: ArrayLike, true: ArrayLike) -> float:
    """Mean squared error."""
    p, t = _pair(pred, true)
    return float(np.mean((p - t) ** 2))


def mae(pred: ArrayLike, true: ArrayLike) -> float:
    """Mean absolute error."""
    p, t = _pair(pred, true)
    return float(np.mean(np.abs(p - t)))


def _as_distributions(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as an (N, 10) array of rows that sum to 1; vote counts are normalised too."""
    d = np.asarray(x, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.shape[1] != N_BINS:
        raise ValueError(f"{name} must have shape (N, {N_BINS}), got {np.shape(x)}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    totals = d.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError(f"{name} has a row with zero total mass (row {int(np.argmin(totals[:, 0]))})")
    return d / totals


def emd(p: ArrayLike, q: ArrayLike, r: float = 2) -> np.ndarray:
    """Earth mover's distance between 10-bin score distributions, per image.

    For each image, ``(mean_k |CDF_p(k) - CDF_q(k)|^r)^(1/r)`` over the 10 bins k, as in the NIMA/CLIP-IAA
    loss (r = 2). Rows are normalised to sum to 1 first, so raw vote counts may be passed directly. The last
    CDF bin is always 1 for both, so it contributes 0 but still counts in the mean over 10 bins.

    Args:
        p: Distributions of shape (N, 10) or (10,).
        q: Distributions of the same shape as ``p``.
        r: Norm exponent (> 0).

    Returns:
        Array of shape (N,) with one distance per image (average it for a dataset-level number).
    """
    a = _as_distributions(p, "p")
    b = _as_distributions(q, "q")
    if a.shape != b.shape:
        raise ValueError(f"p and q must have the same shape, got {a.shape} and {b.shape}")
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    diff = np.abs(np.cumsum(a, axis=1) - np.cumsum(b, axis=1))
    return np.mean(diff**r, axis=1) ** (1.0 / r)


def votes_to_distribution(counts: ArrayLike) -> np.ndarray:
    """Normalise vote counts of shape (N, 10) or (10,) to probabilities (same shape as given)."""
    counts_arr = np.asarray(counts)
    d = _as_distributions(counts_arr, "counts")
    return d.reshape(counts_arr.shape)


def mean_from_votes(counts: ArrayLike) -> np.ndarray | float:
    """Mean score on 1-10 from vote counts: ``sum_i i * p_i`` with ``p = counts / sum(counts)``.

    Returns:
        Array of shape (N,) for (N, 10) input, a float for a single (10,) histogram.
    """
    counts_arr = np.asarray(counts)
    means = _as_distributions(counts_arr, "counts") @ SCORES
    return float(means[0]) if counts_arr.ndim == 1 else means


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    pred: ArrayLike,
    true: ArrayLike,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a paired metric.

    Images are resampled with replacement ``n`` times; resamples where the metric is undefined (``nan``,
    e.g. a constant resample for SRCC) are ignored. Use ``functools.partial`` to fix extra arguments such as
    the accuracy threshold.

    Returns:
        ``(low, high)`` at the given level, e.g. the 2.5th and 97.5th percentiles for 0.95.
    """
    p, t = _pair(pred, true)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, p.size, size=(n, p.size))
    values = np.array([metric_fn(p[i], t[i]) for i in idx], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def compute_metrics(
    pred: ArrayLike,
    true: ArrayLike,
    pred_dist: ArrayLike | None = None,
    true_dist: ArrayLike | None = None,
    threshold: float = 5.0,
) -> dict[str, float]:
    """All standard metrics in one dict: n, srcc, plcc, accuracy, mse, mae, and emd (r = 2, mean over images).

    ``emd`` is included only when both distributions are given; giving only one is an error because it is
    almost certainly a bug in the caller.
    """
    p, t = _pair(pred, true)
    out: dict[str, float] = {
        "n": int(p.size),  # int is a float for typing; JSON keeps it whole
        "srcc": srcc(p, t),
        "plcc": plcc(p, t),
        "accuracy": accuracy(p, t, threshold),
        "mse": mse(p, t),
        "mae": mae(p, t),
    }
    if (pred_dist is None) != (true_dist is None):
        raise ValueError("pass both pred_dist and true_dist to compute EMD, or neither")
    if pred_dist is not None and true_dist is not None:
        distances = emd(pred_dist, true_dist, r=2)
        if distances.size != p.size:
            raise ValueError(f"distributions cover {distances.size} images but scores cover {p.size}")
        out["emd"] = float(distances.mean())
    return out
