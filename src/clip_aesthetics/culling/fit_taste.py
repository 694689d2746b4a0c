"""Learning a photographer's taste from their own ratings (the head is :class:`TasteScorer`).

Ratings come from ``xmp:Rating`` in sidecars (either naming convention; a reject counts as 0 stars,
unrated photos are left out) or from a CSV with ``path`` and ``rating`` columns. The head is ridge
regression of the stars on the L2-normalised CLIP embeddings, with the generic zero-shot score as an
unpenalised feature: with a large penalty the head is the generic score, linearly calibrated (the prior);
the penalty is chosen by K-fold cross-validation (lowest squared error). The reported SRCC is honest: it
comes from nested cross-validation (the penalty chosen inside each outer training fold), beside the
generic score's SRCC on the same photos.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metrics import srcc
from .xmp import Labels, XmpError, read_labels

MIN_RATINGS = 10
FOLDS = 5
ALPHA_GRID = 10.0 ** np.linspace(-3, 3, 25)  # times the mean squared singular value of the features
SEED = 0


@dataclass
class TasteFit:
    """The fitted head and how well it ranks unseen photos."""

    weight: np.ndarray  # (D,)
    intercept: float
    prior_slope: float
    alpha: float
    n: int
    cv_srcc: float  # nested cross-validation, taste head
    generic_srcc: float  # the generic score alone, same photos

    def summary(self) -> dict:
        return {
            "n_ratings": self.n,
            "alpha": self.alpha,
            "cv_srcc": self.cv_srcc,
            "generic_srcc": self.generic_srcc,
            "folds": min(FOLDS, self.n),
        }


def rating_of(image: str | os.PathLike) -> float | None:
    """Stars 0-5 from a photo's sidecar (a reject is 0); None when it is unrated."""
    return stars_of(read_labels(image))


def stars_of(labels: Labels) -> float | None:
    """The photographer's rating a taste is learned from: stars 0-5, a reject 0; None when unrated or
    when the rating is one this tool proposed (``cull --xmp``), which is no one's taste."""
    if labels.machine:
        return None
    if labels.rejected:
        return 0.0
    return float(labels.rating) if labels.rating and labels.rating > 0 else None


def read_ratings_csv(path: str | os.PathLike) -> dict[str, float]:
    """``path`` -> stars from a CSV with ``path`` and ``rating`` (or ``stars``) columns.

    Relative paths are taken from the CSV's folder; keys are real paths.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        column = "rating" if "rating" in fields else "stars" if "stars" in fields else None
        if "path" not in fields or column is None:
            raise ValueError(f"{path}: ratings CSV needs a 'path' and a 'rating' column")
        ratings = {}
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row[column])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: rating {row[column]!r} is not a number") from None
            if not math.isfinite(value) or not -1 <= value <= 5:
                raise ValueError(f"{path}:{line}: rating {row[column]!r} is not 0-5 stars (or -1, a reject)")
            ratings[os.path.realpath(path.parent / row["path"])] = max(value, 0.0)  # a reject is 0 stars
    return ratings


def _ridge_path(z: np.ndarray, g: np.ndarray, y: np.ndarray):
    """A function alpha -> (intercept, slope, weight), ridge on ``z`` with ``[1, g]`` unpenalised."""
    base = np.column_stack([np.ones(len(g)), g])
    q, _ = np.linalg.qr(base)
    resid = lambda a: a - q @ (q.T @ a)  # noqa: E731  (remove the span of [1, g])
    u, s, vt = np.linalg.svd(resid(z), full_matrices=False)
    uy = u.T @ resid(y)
    scale = float(np.mean(s**2)) if len(s) and np.mean(s**2) > 0 else 1.0

    def solve(alpha: float) -> tuple[float, float, np.ndarray]:
        weight = vt.T @ (s / (s**2 + alpha * scale) * uy)
        coef, *_ = np.linalg.lstsq(base, y - z @ weight, rcond=None)
        return float(coef[0]), float(coef[1]), weight

    return solve


def _folds(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), min(k, n))


def _choose_alpha(z: np.ndarray, g: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    """The grid penalty with the lowest K-fold cross-validated squared error."""
    errors = np.zeros(len(ALPHA_GRID))
    for test in _folds(len(y), FOLDS, rng):
        train = np.setdiff1d(np.arange(len(y)), test)
        solve = _ridge_path(z[train], g[train], y[train])
        for k, alpha in enumerate(ALPHA_GRID):
            a, b, w = solve(alpha)
            errors[k] += np.sum((a + b * g[test] + z[test] @ w - y[test]) ** 2)
    return float(ALPHA_GRID[int(np.argmin(errors))])


def fit_taste(features: np.ndarray, generic: np.ndarray, ratings: np.ndarray) -> TasteFit:
    """Fit the head on (N, D) embeddings, the generic scores (N,) and the stars (N,)."""
    y = np.asarray(ratings, dtype=np.float64)
    g = np.asarray(generic, dtype=np.float64)
    if len(y) < MIN_RATINGS or len(np.unique(y)) < 2:
        raise ValueError(
            f"learning a taste needs at least {MIN_RATINGS} rated photos with different ratings; "
            f"found {len(y)} with {len(np.unique(y))} distinct value(s)"
        )
    z = np.asarray(features, dtype=np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(SEED)
    predictions = np.zeros(len(y))
    for test in _folds(len(y), FOLDS, rng):
        train = np.setdiff1d(np.arange(len(y)), test)
        alpha = _choose_alpha(z[train], g[train], y[train], rng)
        a, b, w = _ridge_path(z[train], g[train], y[train])(alpha)
        predictions[test] = a + b * g[test] + z[test] @ w
    alpha = _choose_alpha(z, g, y, rng)
    a, b, w = _ridge_path(z, g, y)(alpha)
    return TasteFit(w, a, b, alpha, len(y), _nan_to_zero(srcc(predictions, y)), _nan_to_zero(srcc(g, y)))


def _nan_to_zero(value: float) -> float:
    return 0.0 if np.isnan(value) else float(value)


def taste_scorer(prior, fit: TasteFit):
    """The :class:`TasteScorer` of ``fit`` on the backbone of ``prior`` (a zero-shot scorer)."""
    import torch

    from ..scorers.taste import TasteScorer

    if getattr(prior, "method", None) != "zeroshot" or prior.strategy != "ensemble":
        raise ValueError(
            "the generic score behind a taste head must be a zero-shot scorer (ensemble prompts)"
        )
    tensors = {
        "prior_positive": prior.positive.float().cpu(),
        "prior_negative": prior.negative.float().cpu(),
        "weight": torch.from_numpy(fit.weight).float(),
        "coef": torch.tensor([fit.intercept, fit.prior_slope], dtype=torch.float32),
    }
    return TasteScorer(prior.backbone, tensors, fit.summary(), prior.prompts.to_dict()).eval()


def ratings_for(
    photos: list, csv_ratings: dict[str, float] | None = None
) -> tuple[list[float | None], list[str], Counter]:
    """Each photo's stars from the photographer: from the CSV when it names the photo, else from its
    sidecar, else embedded in the photo; the sidecars that could not be read (those photos count as
    unrated); and how many ratings came from where (``csv``, ``sidecar``, ``embedded``, and ``machine``:
    ratings ``cull --xmp`` proposed, left out).

    ``photos``: paths, or (sidecar owner, photo) pairs for RAW+JPEG pairs.
    """
    csv_ratings = csv_ratings or {}
    stars, problems, sources = [], [], Counter()
    for item in photos:
        target, photo = item if isinstance(item, tuple) else (item, item)
        real = os.path.realpath(photo)
        if real in csv_ratings or os.path.realpath(target) in csv_ratings:
            stars.append(csv_ratings.get(real, csv_ratings.get(os.path.realpath(target))))
            sources["csv"] += 1
            continue
        try:
            labels = read_labels(target, photo=photo)
        except XmpError as exc:
            stars.append(None)
            problems.append(str(exc))
            continue
        stars.append(stars_of(labels))
        if labels.machine:
            sources["machine"] += 1
        elif stars[-1] is not None:
            sources[labels.source or "sidecar"] += 1
    return stars, problems, sources
