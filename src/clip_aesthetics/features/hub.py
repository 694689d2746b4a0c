"""Features as the hub: every image is encoded once per encoder, and every head on that encoder scores it.

:func:`score_records` takes any number of scorers, groups them by :meth:`Scorer.encoder_key` (backbone spec +
weights identity + preprocessing), and for each group runs the image pipeline once: each batch is encoded by
the group's encoder and scored by all of its heads. Records found in a matching feature cache (made by
``clip-aesthetics embed`` with the same encoder) are not decoded at all; their float16 features go to the
heads directly. A scorer without a separate head (it overrides ``forward``) or with its
own encoder (a fine-tuned tower) is a group of its own.

Only scores are kept per record (mean, raw value, 10-bin distribution): features live as long as their batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets import Record
from ..pipeline.images import iter_batches
from ..scorers.base import ScoreOutput, Scorer, encoder_identity
from .cache import load_features, read_manifest

N_BINS = 10


@dataclass
class RecordScores:
    """One scorer's scores of a list of records (NaN where a record failed; ``failed`` says why)."""

    pred: np.ndarray
    raw: np.ndarray | None = None
    dist: np.ndarray | None = None
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # of the pass this scorer shared with the other heads on its encoder
    from_cache: int = 0  # records scored from cached features rather than pixels
    feature_cache: dict | None = None  # the cache they came from (path, precision, decoder)

    def put(self, rows: np.ndarray, output: ScoreOutput, records: Sequence[Record]) -> None:
        """Store a batch's output for the records at ``rows``; non-finite scores count as failures."""
        scores = output.score.numpy()
        finite = np.isfinite(scores)  # a NaN/inf score would poison every metric
        self.failed += [failure(records[i], "non-finite score") for i in rows[~finite]]
        self.pred[rows] = np.where(finite, scores, np.nan)
        if output.raw is not None:
            self.raw = np.full(len(self.pred), np.nan) if self.raw is None else self.raw
            self.raw[rows] = output.raw.numpy()
        if output.distribution is not None:
            if self.dist is None:
                self.dist = np.full((len(self.pred), N_BINS), np.nan, dtype=np.float32)
            self.dist[rows] = output.distribution.numpy()


def _error(entry: dict) -> str:
    """The reason an image failed, from a cache manifest (caches made before the rename say ``reason``)."""
    return entry.get("error", entry.get("reason", ""))


def failure(record: Record, reason: str) -> dict[str, str]:
    return {"id": record.id, "path": "" if record.path is None else str(record.path), "error": reason}


def encoder_groups(scorers: Sequence[Scorer]) -> list[list[int]]:
    """Indices of ``scorers`` grouped by encoder, in first-appearance order; unshareable ones alone."""
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    order: list[list[int]] = []
    for i, scorer in enumerate(scorers):
        key = scorer.encoder_key()
        if key is None:
            alone.append([i])
            order.append(alone[-1])
        elif key in groups:
            groups[key].append(i)
        else:
            groups[key] = [i]
            order.append(groups[key])
    return order


@dataclass
class CachedFeatures:
    """Features of a complete ``embed`` cache by record id (only records whose path matches are used)."""

    path: Path
    manifest: dict
    rows: dict[str, int]
    paths: list[str | None]
    features: np.ndarray
    errors: dict[tuple[str, str], str]  # (id, absolute path) -> why it failed to decode when embedded

    @classmethod
    def open(cls, path: str | os.PathLike) -> CachedFeatures:
        """Load a complete cache (see :func:`~clip_aesthetics.features.load_features` for the errors)."""
        features = load_features(path)
        errors = {(e["id"], os.path.abspath(e["path"])): _error(e) for e in features.manifest["errors"]}
        rows = {record_id: i for i, record_id in enumerate(features.ids)}
        paths = [None if p is None else os.path.abspath(p) for p in features.paths]  # as relative or absolute
        return cls(Path(path), features.manifest, rows, paths, features.features, errors)

    def mismatch(self, scorer: Scorer) -> str | None:
        """Why this cache cannot stand in for ``scorer``'s encoder (None when it can).

        Only the encoder decides (spec, weights, preprocessing): a cache embedded in bf16 or with nvJPEG
        holds the same features up to rounding, and says so in :meth:`describe`.
        """
        key = scorer.encoder_key()
        if key is None:
            return "the scorer has its own encoder"
        if encoder_identity(self.manifest["backbone"]) != key:
            cached = self.manifest["backbone"]
            return f"it holds features of {cached.get('model')} ({cached.get('weights_id')})"
        return None

    def describe(self) -> dict:
        """Where features came from, for metrics files: the cache and how it was embedded."""
        made = self.manifest["feature"]
        return {"path": str(self.path), "precision": made.get("precision"), "decode": made.get("decode")}

    def lookup(self, record: Record) -> int | str | None:
        """The record's feature row, the reason it failed when embedded, or None when not cached."""
        path = os.path.abspath(record.path)
        if record.id in self.rows:
            i = self.rows[record.id]
            return i if self.paths[i] == path else None
        return self.errors.get((record.id, path))


def matching_cache(caches: Sequence[CachedFeatures], scorer: Scorer) -> CachedFeatures | None:
    return next((c for c in caches if c.mismatch(scorer) is None), None)


def _score_cached(
    scorers: Sequence[Scorer], records: Sequence[Record], cache: CachedFeatures, results: list[RecordScores]
) -> list[int]:
    """Score the records the cache holds; returns the indices still to be read from pixels."""
    todo, hits, rows = [], [], []
    for i, record in enumerate(records):
        found = None if record.path is None else cache.lookup(record)
        if found is None:
            todo.append(i)
        elif isinstance(found, str):  # it failed to decode when the cache was made: it would fail again
            for result in results:
                result.failed.append(failure(record, found))
        else:
            hits.append(i)
            rows.append(found)
    hits_array = np.array(hits, dtype=np.int64)
    for start in range(0, len(hits), 4096):
        part = torch.from_numpy(cache.features[rows[start : start + 4096]])
        for scorer, result in zip(scorers, results, strict=True):
            result.put(hits_array[start : start + 4096], scorer.score_features(part).to_cpu(), records)
    for result in results:
        result.from_cache = len(hits)
    return todo


def _score_pixels(
    scorers: Sequence[Scorer],
    records: Sequence[Record],
    todo: Sequence[int],
    results: list[RecordScores],
    precision: str,
    pipeline: dict[str, Any],
) -> None:
    """One image pass over ``records[todo]``: every batch encoded once, then scored by each head."""
    lead = scorers[0]
    usable = np.array([i for i in todo if records[i].path is not None], dtype=np.int64)
    missing = [failure(records[i], "no image path") for i in todo if records[i].path is None]
    for result in results:
        result.failed += missing
    sources = [records[i].path for i in usable]
    shared = all(s.scores_features for s in scorers)
    for batch in iter_batches(sources, lead.backbone.preprocess_cfg, **pipeline):
        for result in results:
            result.failed += [failure(records[usable[j]], reason) for j, reason in batch.errors]
        if not batch.indices:
            continue
        rows = usable[batch.indices]
        if shared:
            features = lead.encode_images(batch.images, precision)
            outputs = [scorer.score_features(features).to_cpu() for scorer in scorers]
        else:  # a scorer without a separate head is always a group of one
            outputs = [lead.score_images(batch.images, precision)]
        for result, output in zip(results, outputs, strict=True):
            result.put(rows, output, records)


def score_records(
    scorers: Sequence[Scorer],
    records: Sequence[Record],
    *,
    caches: Sequence[CachedFeatures] = (),
    precision: str = "auto",
    decode: str = "auto",
    description: str = "scoring",
    **pipeline: Any,
) -> list[RecordScores]:
    """Scores of ``records`` by each scorer, with one image pass per encoder (see the module docstring).

    Args:
        scorers: any scorers; heads with equal :meth:`~Scorer.encoder_key` share one pass.
        records: the records to score, in order (``path`` None counts as a failure).
        caches: complete feature caches; a group uses the first one that matches its encoder.
        precision, decode: see :meth:`Scorer.score_images` and
            :func:`~clip_aesthetics.pipeline.images.iter_batches`.
        pipeline: ``batch_size``, ``workers``, ``max_pixels``, ``progress`` for the image pipeline.
    """
    results = [RecordScores(np.full(len(records), np.nan)) for _ in scorers]
    for group in encoder_groups(scorers):
        start = time.perf_counter()
        members, member_results = [scorers[i] for i in group], [results[i] for i in group]
        device = members[0].device
        cache = matching_cache(caches, members[0])
        todo = list(range(len(records)))
        if cache is not None:
            todo = _score_cached(members, records, cache, member_results)
            for result in member_results:
                result.feature_cache = {**cache.describe(), "n_records": result.from_cache}
        if todo:
            options = {**pipeline, "pin_memory": device.type == "cuda", "device": device, "decode": decode}
            _score_pixels(
                members, records, todo, member_results, precision, {**options, "description": description}
            )
        for result in member_results:
            result.seconds = time.perf_counter() - start
    return results


def open_caches(paths: Sequence[str | os.PathLike]) -> list[CachedFeatures]:
    """Open feature caches given by the user (each must be a complete ``embed`` cache)."""
    caches = []
    for path in paths:
        if read_manifest(path) is None:
            raise FileNotFoundError(
                f"no feature cache at {path} (no manifest.json): run `clip-aesthetics embed`"
            )
        caches.append(CachedFeatures.open(path))
    return caches
