"""Fitting linear probes on cached features (paper section 4.2), in closed form, in float64.

Recipe: standardise each feature with the train split's mean and standard deviation (ddof 0, as
scikit-learn's ``StandardScaler``; a constant feature keeps std 1), then fit ``y = b + z @ w``:

- ``ols``: ordinary least squares, as in the paper (minimum-norm solution if the features are collinear).
- ``ridge``: least squares + ``alpha * ||w||^2`` (scikit-learn's ``Ridge`` convention: sum of squared errors,
  intercept not penalised). ``alpha='auto'`` tries ``n_train * 10^k`` for k on a log grid from -6 to 3 and
  keeps the one with the lowest validation MSE of the regression targets.

One pass over the features accumulates shifted sums (of x, x x^T, x y^T, y), from which the standardised,
centred Gram matrix follows exactly; its eigendecomposition then gives the solution for every alpha at the
cost of a matrix product. 255k x 768 features take seconds and no float64 copy of the data.

The fitted head is the scorer :class:`~clip_aesthetics.scorers.probe.ProbeScorer`; see there for the
``distribution`` target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics import compute_metrics
from ..scorers.probe import TARGETS, ProbeHead, probe_config
from ..scorers.registry import save_scorer
from . import FeatureSet, load_features

SOLVERS = ("ols", "ridge")
ALPHA_EXPONENTS = np.linspace(-6, 3, 37)  # the auto grid is n_train * 10^k
CHUNK_ROWS = 8192


@dataclass
class Moments:
    """Exact centred second moments of standardised features and targets, from one pass over the data."""

    n: int
    mean: np.ndarray  # (D,) feature means: the scaler's mean
    std: np.ndarray  # (D,) feature standard deviations (ddof 0; 1 where constant): the scaler's std
    y_mean: np.ndarray  # (K,)
    gram: np.ndarray  # (D, D) sum over rows of z z^T, z standardised (hence centred)
    cross: np.ndarray  # (D, K) sum over rows of z (y - y_mean)^T


def moments(x: np.ndarray, y: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> Moments:
    """Scaler and Gram statistics of features ``x`` (N, D), any float dtype, and targets ``y`` (N, K).

    Sums are taken around a shift (the first rows' mean) so that subtracting the mean afterwards loses no
    precision even when a feature's mean is large compared with its spread.
    """
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 training images to fit a probe, got {n}")
    shift = x[: min(n, 1024)].astype(np.float64).mean(axis=0)
    y = np.asarray(y, dtype=np.float64).reshape(n, -1)
    y_shift = y[: min(n, 1024)].mean(axis=0)
    sx, sy = np.zeros(d), np.zeros(y.shape[1])
    sxx, sxy = np.zeros((d, d)), np.zeros((d, y.shape[1]))
    for start in range(0, n, chunk_rows):
        xc = x[start : start + chunk_rows].astype(np.float64) - shift
        yc = y[start : start + chunk_rows] - y_shift
        sx += xc.sum(axis=0)
        sy += yc.sum(axis=0)
        sxx += xc.T @ xc
        sxy += xc.T @ yc
    dx, dy = sx / n, sy / n
    gram = sxx - n * np.outer(dx, dx)  # centred, still in raw units
    cross = sxy - n * np.outer(dx, dy)
    std = np.sqrt(np.clip(np.diag(gram), 0, None) / n)
    std[std <= 1e-12 * max(1.0, float(np.abs(shift + dx).max()))] = 1.0
    return Moments(n, shift + dx, std, y_shift + dy, gram / np.outer(std, std), cross / std[:, None])


@dataclass
class RidgePath:
    """Solutions for any penalty from one eigendecomposition of the standardised Gram matrix."""

    moments: Moments
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    projected: np.ndarray  # V^T cross

    @classmethod
    def from_moments(cls, m: Moments) -> RidgePath:
        eigenvalues, eigenvectors = np.linalg.eigh(m.gram)
        return cls(m, eigenvalues, eigenvectors, eigenvectors.T @ m.cross)

    def _inverse(self, alpha: float) -> np.ndarray:
        s = self.eigenvalues
        if alpha > 0:
            return 1.0 / (s + alpha)
        # OLS: pseudo-inverse, dropping directions numerically absent from the data (as lstsq's rcond does)
        tol = max(s.max(), 0.0) * len(s) * np.finfo(np.float64).eps
        return np.where(s > tol, 1.0 / np.where(s > tol, s, 1.0), 0.0)

    def coef(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Weights (D, K) on standardised features and intercept (K,); the intercept is the target mean."""
        weights = self.eigenvectors @ (self._inverse(alpha)[:, None] * self.projected)
        return weights, self.moments.y_mean.copy()

    def val_mse(self, z_val: np.ndarray, y_val: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Validation MSE (averaged over images and outputs) of each alpha, on standardised features."""
        rotated = z_val @ self.eigenvectors
        residual_base = y_val.reshape(len(z_val), -1) - self.moments.y_mean
        return np.array(
            [
                np.mean((rotated @ (self._inverse(a)[:, None] * self.projected) - residual_base) ** 2)
                for a in alphas
            ]
        )


@dataclass
class LinearFit:
    """A probe in float64: scaler, weights on standardised features, intercept, and how alpha was chosen."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # (D, K)
    intercept: np.ndarray  # (K,)
    solver: str
    alpha: float
    selection: dict | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Linear outputs (N, K) for raw features."""
        return self.standardise(x) @ self.weights + self.intercept

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std


def _choose_alpha(
    path: RidgePath, mean: np.ndarray, std: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None
) -> tuple[float, dict]:
    if x_val is None or y_val is None or len(x_val) < 2:
        raise ValueError("--alpha auto picks the penalty on the validation split, which has < 2 images here")
    alphas = path.moments.n * 10.0**ALPHA_EXPONENTS
    errors = path.val_mse((np.asarray(x_val, dtype=np.float64) - mean) / std, np.asarray(y_val), alphas)
    best = int(np.argmin(errors))
    selection = {
        "criterion": "validation MSE of the regression targets",
        "grid": alphas.tolist(),
        "val_mse": errors.tolist(),
        "at_grid_edge": best in (0, len(alphas) - 1),
    }
    return float(alphas[best]), selection


def fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    solver: str = "ols",
    alpha: float | str | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> LinearFit:
    """Standardise ``x`` and fit OLS or ridge to ``y`` (N,) or (N, K) in closed form.

    Args:
        x: training features (N, D), any float dtype (float16 caches are read chunk by chunk).
        y: targets.
        solver: ``ols`` or ``ridge``.
        alpha: ridge penalty (>= 0) or ``auto`` (default for ridge; needs ``x_val``/``y_val``); unused by OLS.
        x_val, y_val: the validation split, for ``alpha='auto'``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (choose {', '.join(SOLVERS)})")
    if solver == "ols" and alpha not in (None, 0, 0.0):
        raise ValueError("--alpha is a ridge penalty: use it with --solver ridge")
    m = moments(x, y)
    path = RidgePath.from_moments(m)
    selection = None
    if solver == "ols":
        chosen = 0.0
    elif alpha is None or alpha == "auto":
        chosen, selection = _choose_alpha(path, m.mean, m.std, x_val, y_val)
    else:
        chosen = float(alpha)
        if not chosen >= 0:
            raise ValueError(f"--alpha must be >= 0 or 'auto', got {alpha}")
    weights, intercept = path.coef(chosen)
    return LinearFit(m.mean, m.std, weights, intercept, solver, chosen, selection)


def targets(features: FeatureSet, target: str) -> np.ndarray:
    """Regression targets: mean scores (N, 1) or vote fractions (N, 10)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (choose {', '.join(TARGETS)})")
    if target == "distribution":
        if features.votes is None:
            raise ValueError(
                "--target distribution needs vote counts, and this cache has images without them"
            )
        return features.distributions
    if np.isnan(features.means).any():
        raise ValueError("the cache has images without a mean score: a probe needs a labelled dataset")
    return features.means[:, None]


def evaluate_head(head: ProbeHead, features: FeatureSet) -> dict[str, float]:
    """metrics.compute_metrics of the head's scores (and EMD, where it predicts distributions) on a split."""
    with torch.inference_mode():
        output = head(torch.from_numpy(features.features))
    distributions = output.distribution is not None and features.votes is not None
    return compute_metrics(
        output.score.double().numpy(),
        features.means,
        output.distribution.double().numpy() if distributions else None,
        features.distributions if distributions else None,
    )


@dataclass
class ProbeResult:
    """A fitted probe with its record; saved, it is a ``probe`` scorer file (see :meth:`save`).

    ``config()`` has the layout of :meth:`ProbeScorer.config` with the backbone described by the cache
    manifest, so a head can be fitted without loading the backbone.
    """

    head: ProbeHead
    linear: LinearFit
    fit: dict
    backbone: dict
    method: str = field(default="probe", init=False)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return self.fit["metrics"]

    def config(self) -> dict:
        base = {"method": self.method, "backbone": self.backbone, "calibration": None, "label_threshold": 5.0}
        return {**base, **probe_config(self.head, self.fit)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.head.tensors()

    def save(self, path: str | os.PathLike) -> os.PathLike:
        """Write the head as a ``.safetensors`` scorer file (config + scaler, weight, bias)."""
        return save_scorer(self, path)


def _head(linear: LinearFit, target: str) -> ProbeHead:
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return ProbeHead(
        as_tensor(linear.mean),
        as_tensor(linear.std),
        as_tensor(linear.weights.T),
        as_tensor(linear.intercept),
        target,
    )


def fit_probe(
    features: FeatureSet | str | os.PathLike,
    *,
    solver: str = "ols",
    alpha: float | str | None = None,
    target: str = "mean",
    fit_on: tuple[str, ...] = ("train",),
) -> ProbeResult:
    """Fit a probe on a cache's train split, choose alpha on val (ridge, auto), report val and test metrics.

    Args:
        features: a loaded :class:`FeatureSet` or the cache folder.
        solver: ``ols`` (the paper) or ``ridge``.
        alpha: ridge penalty or ``auto`` (default for ridge).
        target: ``mean`` (the mean score) or ``distribution`` (the ten vote fractions).
        fit_on: the splits fitted on: ``("train",)``, or ``("train", "val")`` as the authors did (their
            whole training file; the validation split is then not held out, so ``auto`` cannot use it).

    Raises:
        ValueError: the cache has no train split, no labels, or (auto) no validation split.
    """
    if not isinstance(features, FeatureSet):
        features = load_features(features)
    if not set(fit_on) <= {"train", "val"} or "train" not in fit_on:
        raise ValueError(f"a probe fits on train, or train and val; not {fit_on}")
    if "val" in fit_on and solver == "ridge" and alpha in (None, "auto"):
        raise ValueError("--alpha auto picks the penalty on validation images: they cannot also be fitted on")
    splits = {name: features.select(name) for name in ("train", "val", "test")}
    train, val = splits["train"], splits["val"]
    if "val" in fit_on:
        train = features.select(*fit_on)
    if len(train) < 2:
        raise ValueError(
            f"the cache has {len(train)} training images: "
            "embed the dataset with --split-kind official or random"
        )
    has_val = len(val) >= 2
    linear = fit_linear(
        train.features,
        targets(train, target),
        solver,
        alpha,
        val.features if has_val else None,
        targets(val, target) if has_val else None,
    )
    head = _head(linear, target)
    manifest = features.manifest
    fit = {
        "solver": solver,
        "alpha": linear.alpha,
        "alpha_selection": linear.selection,
        "target": target,
        "fit_on": list(fit_on),
        "n": {name: len(split) for name, split in splits.items()},
        "metrics": {
            name: evaluate_head(head, splits[name]) for name in ("val", "test") if len(splits[name]) >= 2
        },
        "features": manifest.get("feature"),
        "dataset": manifest.get("dataset"),
    }
    return ProbeResult(head, linear, fit, manifest.get("backbone", {}))
