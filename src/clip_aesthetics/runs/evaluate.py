"""Evaluate scorers on labelled datasets: stream a split through the image pipeline, keep only the scores.

:func:`load_split` parses a dataset and picks one split (with its :class:`SplitInfo`); :func:`evaluate_scorer`
scores those records in batches and computes the metrics; :func:`write_predictions`,
:func:`metrics_document` and :func:`plot_evaluation` turn the result into files.

Memory stays at the records plus a few floats per image (mean, raw value, 10-bin distribution): decoded
images live only as long as their batch, and no features are kept.

Accuracy compares two binary labels: the truth is "good" when its mean exceeds ``threshold`` (AVA: 5), the
prediction when its score exceeds ``pred_threshold``, by default the scorer's own decision rule
(:attr:`Scorer.label_threshold`: 5 for regressors and calibrated scorers, 5.5 for uncalibrated zero-shot, i.e.
the closer prompt group as in the paper). Both thresholds are written next to the metrics.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..constants import DEFAULT_MAX_PIXELS, EVAL_DATASETS, N_BINS, SPLITS, TABLE_METRICS
from ..datasets import ParsedDataset, Record, SplitInfo, load_and_split
from ..features.hub import CachedFeatures, score_records
from ..fileio import atomic_savefig, atomic_write, atomic_write_text, text_name
from ..metrics import bootstrap_ci, check_threshold, compute_metrics, emd, mae, mse, plcc, srcc
from ..scorers.base import Scorer
from .tables import format_interval, format_metric, markdown_table


@dataclass
class EvaluationSet:
    """The records of one split of a parsed dataset, and how they were chosen."""

    dataset: ParsedDataset
    split: str
    records: list[Record]
    info: SplitInfo

    def describe(self) -> dict[str, Any]:
        """Dataset and split for metrics files: what was read, what was dropped and why."""
        report = self.dataset.report
        return {
            "dataset": {
                "name": self.dataset.name,
                "root": str(self.dataset.root),
                "n_records": len(self.dataset.records),
                "n_skipped_lines": len(report.skipped),
                "n_dropped": len(report.dropped),
                "dropped": [{"id": d.id, "reason": d.reason} for d in report.dropped],
            },
            "split": {"name": self.split, **self.info.to_dict()},
        }


def load_split(
    dataset: str,
    root: Path | str,
    split: str = "test",
    kind: str = "official",
    *,
    seed: int | None = None,
    manifest: Path | str | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> EvaluationSet:
    """Parse a dataset (dropping broken and missing images) and select one split.

    Args:
        dataset: One of :data:`EVAL_DATASETS`.
        root: The dataset folder (``csv``: the CSV file).
        split: ``train``, ``val``, ``test``, or ``all`` for every record (no split).
        kind: ``official``, ``random`` or ``file:PATH`` (see :func:`split_records`).
        seed: Seed of the random split or of the val carve-out.
        fractions: (train, val, test) of a random split.
        manifest: Broken-image manifest; by default ``broken_images.json`` in the dataset folder if present.
    """
    if dataset not in EVAL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(EVAL_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "all":
        # A random split with everything in "test" yields the id digest without a second implementation.
        parsed, splits, info = load_and_split(dataset, root, "random", fractions=(0, 0, 1), manifest=manifest)
        n, digest = len(parsed.records), info.digests["test"]
        info = SplitInfo("all", 0, {}, {"all": n}, {"all": digest}, "every record of the dataset, no split")
        return EvaluationSet(parsed, split, splits["test"], info)
    parsed, splits, info = load_and_split(
        dataset, root, kind, fractions=fractions, seed=seed, manifest=manifest
    )
    return EvaluationSet(parsed, split, splits[split], info)


@dataclass
class EvaluationResult:
    """Predictions for the evaluated records, in their order, and the metrics computed from them.

    ``pred``/``raw`` are NaN and ``pred_dist`` rows NaN where a record failed; ``failed`` says why.
    """

    records: Sequence[Record]
    pred: np.ndarray
    raw: np.ndarray | None
    pred_dist: np.ndarray | None
    failed: list[dict[str, str]]
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    thresholds: dict[str, float]
    seconds: float  # of the image pass, shared by every head on the same encoder
    scorer_config: dict = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    n_from_cache: int = 0  # records scored from a feature cache instead of pixels
    feature_cache: dict | None = None  # that cache: path, precision, decoder

    @property
    def scored(self) -> np.ndarray:
        """Indices of the records that were scored."""
        return np.flatnonzero(~np.isnan(self.pred))

    @property
    def true(self) -> np.ndarray:
        """Ground-truth means of all records (float64)."""
        return np.array([r.mean for r in self.records], dtype=np.float64)

    @property
    def n_scored(self) -> int:
        return int(self.scored.size)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def images_per_second(self) -> float:
        return len(self.records) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Metrics, intervals, counts and timing as a JSON-ready dict (NaN written as null)."""
        return _json_safe(
            {
                "metrics": self.metrics,
                "intervals": {k: list(v) for k, v in self.intervals.items()},
                "bootstrap": self.bootstrap,
                "thresholds": self.thresholds,
                "n_scored": self.n_scored,
                "n_failed": self.n_failed,
                "n_from_cache": self.n_from_cache,
                "feature_cache": self.feature_cache,
                "failed": self.failed,
                "seconds": self.seconds,
                "images_per_second": self.images_per_second,
            }
        )


def _accuracy_fn(pred_threshold: float, threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    def accuracy(p: np.ndarray, t: np.ndarray) -> float:
        return float(np.mean((p > pred_threshold) == (t > threshold)))

    return accuracy


def _metrics(
    records: Sequence[Record],
    pred: np.ndarray,
    dist: np.ndarray | None,
    thresholds: dict[str, float],
    bootstrap: dict[str, Any],
    raw: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Metrics of the scored images and, when ``bootstrap`` is set, their percentile intervals.

    With ``raw`` (zero-shot), SRCC and PLCC are those of ``raw`` in float64, as the authors computed them:
    the 1-10 score ``1 + 9 * sigmoid(raw)`` saturates in float32 for large ``|raw|`` (ties) and bends the
    linear relation; its PLCC is kept as ``plcc_score``.
    """
    scored = np.flatnonzero(~np.isnan(pred))
    if scored.size < 2:
        return {"n": int(scored.size)}, {}
    p, t = pred[scored], np.array([records[i].mean for i in scored], dtype=np.float64)
    with_emd = dist is not None and all(records[i].votes is not None for i in scored)
    pred_dist = dist[scored].astype(np.float64) if with_emd else None
    votes = np.stack([records[i].votes for i in scored]) if with_emd else None
    metrics = compute_metrics(p, t, pred_dist, votes)
    correlated = p if raw is None else raw[scored].astype(np.float64)
    if raw is not None:
        metrics.update(plcc_score=metrics["plcc"], srcc=srcc(correlated, t), plcc=plcc(correlated, t))
    accuracy = _accuracy_fn(thresholds["pred"], thresholds["true"])
    metrics["accuracy"] = accuracy(p, t)
    metrics["true_good_fraction"] = float(np.mean(t > thresholds["true"]))
    if not bootstrap:
        return metrics, {}
    correlations = {"srcc": srcc, "plcc": plcc}
    intervals = {name: bootstrap_ci(fn, correlated, t, **bootstrap) for name, fn in correlations.items()}
    fns = {"accuracy": accuracy, "mse": mse, "mae": mae}
    intervals.update({name: bootstrap_ci(fn, p, t, **bootstrap) for name, fn in fns.items()})
    if with_emd:
        distances = emd(pred_dist, votes)  # resampling per-image distances bootstraps their mean
        zeros = np.zeros_like(distances)
        intervals["emd"] = bootstrap_ci(lambda d, _: float(d.mean()), distances, zeros, **bootstrap)
    return metrics, intervals


def evaluate_scorer(scorer: Scorer, records: Sequence[Record], **options: Any) -> EvaluationResult:
    """Score labelled records in batches and compute SRCC, PLCC, accuracy, MSE, MAE (+ EMD, + intervals).

    One scorer's :func:`evaluate_scorers`; the keyword options are the same.
    """
    return evaluate_scorers([scorer], records, **options)[0]


def evaluate_scorers(
    scorers: Sequence[Scorer],
    records: Sequence[Record],
    *,
    threshold: float = 5.0,
    pred_threshold: float | None = None,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    level: float = 0.95,
    batch_size: int = 64,
    workers: int | None = None,
    precision: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: str = "auto",
    progress: bool | None = None,
    caches: Sequence[CachedFeatures] = (),
) -> list[EvaluationResult]:
    """Evaluate several scorers on the same records, encoding each image once per encoder.

    Heads on one encoder share one pass of the image pipeline, and records held by a matching feature
    cache in ``caches`` are scored from their cached features (see :mod:`clip_aesthetics.features.hub`).
    Unreadable images are listed in ``failed`` and left out of the metrics. EMD is computed when the scorer
    gives distributions and every scored record has votes. With fewer than two scored images the metrics
    hold only ``n``.

    Args:
        scorers: Any scorers; their predictions are compared with ``Record.mean``.
        records: Records with a ground-truth mean (all of them; unlabelled records are an error).
        threshold: A true mean above it is "good".
        pred_threshold: A predicted score above it is "good"; default: each scorer's ``label_threshold``.
        bootstrap: Number of bootstrap resamples for confidence intervals (0: none).
        bootstrap_seed: Seed of the resampling.
        level: Confidence level of the intervals.
        batch_size, workers, precision, max_pixels, decode, progress: see
            :func:`~clip_aesthetics.pipeline.images.iter_batches` and :meth:`Scorer.score_images`.
        caches: complete ``embed`` caches to take features from instead of decoding images.
    """
    check_threshold(threshold, "--threshold")
    if pred_threshold is not None:
        check_threshold(pred_threshold, "--pred-threshold")
    unlabelled = sum(1 for r in records if not r.has_label)
    if unlabelled:
        raise ValueError(f"evaluation needs labelled records; {unlabelled} of {len(records)} have no score")
    pipeline = {"batch_size": batch_size, "workers": workers, "max_pixels": max_pixels, "progress": progress}
    scored = score_records(
        scorers,
        records,
        caches=caches,
        precision=precision,
        decode=decode,
        description="evaluating",
        **pipeline,
    )
    boot = {"n": bootstrap, "seed": bootstrap_seed, "level": level} if bootstrap else {}
    results = []
    for scorer, out in zip(scorers, scored, strict=True):
        thresholds = {"true": float(threshold), "pred": float(scorer.label_threshold)}
        if pred_threshold is not None:
            thresholds["pred"] = float(pred_threshold)
        raw = out.raw if scorer.method == "zeroshot" and out.raw is not None else None
        metrics, intervals = _metrics(records, out.pred, out.dist, thresholds, boot, raw)
        result = EvaluationResult(
            records, out.pred, out.raw, out.dist, out.failed, metrics, intervals, thresholds, out.seconds,
            scorer.config(), boot, out.from_cache, out.feature_cache,
        )  # fmt: skip
        results.append(result)
    return results


def write_predictions(result: EvaluationResult, path: Path | str) -> Path:
    """One CSV row per scored image: id, path, true_mean, score (+ raw, pred_1..pred_10).

    ``score``, ``raw`` and ``pred_k`` are named as in `clip-aesthetics score` output files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["id", "path", "true_mean", "score"]
    header += ["raw"] if result.raw is not None else []
    header += [f"pred_{k}" for k in range(1, N_BINS + 1)] if result.pred_dist is not None else []

    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in result.scored:  # rows are written as they are formed: nothing per image is held here
            rec = result.records[i]
            row = [text_name(rec.id), text_name(rec.path), repr(float(rec.mean)), repr(float(result.pred[i]))]
            row += [repr(float(result.raw[i]))] if result.raw is not None else []
            row += [repr(float(x)) for x in result.pred_dist[i]] if result.pred_dist is not None else []
            writer.writerow(row)

    return atomic_write(path, write)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    import open_clip
    import timm
    import torch

    return {
        "clip_aesthetics": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


def metrics_document(result: EvaluationResult, evaluation_set: EvaluationSet | None = None) -> dict[str, Any]:
    """Everything a metrics file records: the summary, the dataset and split, the scorer, versions."""
    document = result.summary()
    if evaluation_set is not None:
        document.update(evaluation_set.describe())
    document["scorer"] = result.scorer_config
    document["versions"] = package_versions()
    return document


def write_json(document: dict[str, Any], path: Path | str) -> Path:
    """Write a JSON document atomically (NaN/inf become null, so the file is strict JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def plot_evaluation(result: EvaluationResult, out_dir: Path | str, title: str = "") -> list[Path]:
    """Predicted-vs-true scatter and true/predicted score histograms as PNG files in ``out_dir``.

    Uses matplotlib's object API with the Agg canvas, so no display and no global pyplot state are needed.
    """
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    idx = result.scored
    true, pred = result.true[idx], result.pred[idx]
    srcc_text, plcc_text = (format_metric(result.metrics.get(k)) for k in ("srcc", "plcc"))
    heading = f"{title + ': ' if title else ''}SRCC {srcc_text}, PLCC {plcc_text} (n={idx.size})"

    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.add_subplot()
    ax.scatter(true, pred, s=4, alpha=min(1.0, max(0.05, 300 / max(idx.size, 1))), linewidths=0)
    ax.set(xlabel="true mean score", ylabel="predicted score", title=heading)
    scatter = out / "scatter.png"
    atomic_savefig(fig, scatter, bbox_inches="tight")

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    low = float(min(true.min(initial=1.0), pred.min(initial=1.0)))
    high = float(max(true.max(initial=10.0), pred.max(initial=10.0)))
    bins = np.linspace(low, high, 46)
    ax.hist(true, bins=bins, alpha=0.55, label="true mean")
    ax.hist(pred, bins=bins, alpha=0.55, label="predicted")
    ax.axvline(result.thresholds["true"], color="black", linewidth=0.8, linestyle="--")
    ax.set(xlabel="score", ylabel="images", title=heading)
    ax.legend()
    histogram = out / "histogram.png"
    atomic_savefig(fig, histogram, bbox_inches="tight")
    return [scatter, histogram]


def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Comparison rows (:func:`comparison_row`) as Markdown: intervals in brackets, '-' when absent."""
    metrics = [m for m in TABLE_METRICS if any(row.get(m) is not None for row in rows)]
    header = ["scorer", "method", "backbone", "n", *metrics, "failed", "images/s"]
    cells = []
    for row in rows:
        intervals = row.get("intervals") or {}
        values = [f"{format_metric(row.get(m))} {format_interval(intervals.get(m))}".strip() for m in metrics]
        identity = [row["name"], row.get("method") or "-", row.get("backbone") or "-", row.get("n", 0)]
        speed = [row.get("n_failed", 0), f"{row.get('images_per_second') or 0:.1f}"]
        cells.append([*identity, *values, *speed])
    return markdown_table(header, cells, right=header[3:])


def comparison_row(name: str, result: EvaluationResult) -> dict[str, Any]:
    """One scorer's line of a comparison table: identity, metrics, intervals, failures and speed."""
    backbone = result.scorer_config.get("backbone") or {}
    row: dict[str, Any] = {
        "name": name,
        "method": result.scorer_config.get("method"),
        "backbone": backbone.get("model"),
        **result.metrics,
        "pred_threshold": result.thresholds["pred"],
        "n_failed": result.n_failed,
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
    }
    if result.intervals:
        row["intervals"] = {k: list(v) for k, v in result.intervals.items()}
    return _json_safe(row)
