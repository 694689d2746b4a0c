"""The steps both engines share, on column batches (dicts of numpy arrays, Ray Data's ``numpy`` format).

read (:func:`shard_rows`) -> decode (:func:`decode_rows`: uint8 at model size) -> score (:class:`BatchScorer`)
-> reassemble per shard (:class:`ShardAssembler`) -> write. Besides one row per sample, a shard's stream ends
in a marker row: ``pos == END`` with the number of samples in ``count``, or ``pos == FAILED`` with the reason
in ``error`` when the shard could not be read. Rows may arrive in any order; a shard is complete when its
end marker and all its samples are in, so no sample is written twice or lost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import torch

from ..backbones import PreprocessConfig
from ..images import load_prepared
from ..scorers.base import Scorer, resolve_precision
from ..scoring import NON_FINITE
from .readers import Shard, ShardReadError, iter_shard
from .writer import ShardResult

END, FAILED = -1, -2


def shard_rows(
    index: int, shard: Shard, image_column: str | None = None, key_column: str | None = None
) -> Iterator[dict]:
    """One row per sample of shard ``index`` (key, encoded bytes, error), then its end or failure marker."""
    count = 0
    try:
        for sample in iter_shard(shard, image_column, key_column):
            yield {"shard": index, "pos": count, "key": sample.key, "data": sample.data,
                   "error": sample.error, "count": 0}  # fmt: skip
            count += 1
    except ShardReadError as exc:
        yield {"shard": index, "pos": FAILED, "key": "", "data": None, "error": str(exc), "count": 0}
        return
    yield {"shard": index, "pos": END, "key": "", "data": None, "error": None, "count": count}


def decode_row(row: dict, cfg: PreprocessConfig, max_pixels: int, draft_size: int | None) -> dict:
    """Decode one row's bytes to uint8 (3, S, S) at model size; zeros and the reason when unreadable."""
    pixels, error = None, row["error"]
    if row["pos"] >= 0 and error is None:
        pixels, error = load_prepared(row["data"], cfg, max_pixels, draft_size)
    if pixels is None:
        pixels = torch.zeros(3, cfg.size, cfg.size, dtype=torch.uint8)
    return {
        "shard": row["shard"],
        "pos": row["pos"],
        "key": row["key"],
        "error": error,
        "count": row["count"],
        "ok": row["pos"] >= 0 and error is None,
        "pixels": pixels.numpy(),
    }


def collate_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows -> one column batch."""
    batch = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        batch[name] = np.stack(values) if name == "pixels" else np.array(values, dtype=object)
    for name in ("shard", "pos", "count"):
        batch[name] = batch[name].astype(np.int64)
    batch["ok"] = batch["ok"].astype(bool)
    return batch


class BatchScorer:
    """Scores the decoded rows of a batch; keeps the bookkeeping columns, drops the pixels."""

    def __init__(self, scorer: Scorer, precision: str = "auto", embeddings: bool = False):
        if embeddings and not scorer.scores_features:
            raise ValueError(
                "--embeddings needs a scorer on frozen features (zeroshot, probe, laion), "
                f"not {scorer.method}"
            )
        # auto: bf16 on CUDA and on CPUs with native bf16, as `score` on files does
        self.precision = resolve_precision(scorer.device, precision, cpu_bf16=True)
        self.scorer, self.embeddings = scorer, embeddings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        n = len(ok)
        out = {k: batch[k] for k in ("shard", "pos", "key", "error", "count")}
        out["score"] = np.full(n, np.nan, dtype=np.float32)
        out["raw"] = np.full(n, np.nan, dtype=np.float32)
        if self.scorer.has_distribution:
            out["distribution"] = np.full((n, 10), np.nan, dtype=np.float32)
        if self.embeddings:
            out["embedding"] = np.zeros((n, self.scorer.backbone.feature_dim), dtype=np.float16)
        if ok.any():
            images = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            output, features = self._score(images)
            out["score"][ok] = output.score.numpy()
            if output.raw is not None:
                out["raw"][ok] = output.raw.numpy()
            if output.distribution is not None:
                out["distribution"][ok] = output.distribution.numpy()
            if features is not None:
                out["embedding"][ok] = features.numpy()
        non_finite = ok & ~np.isfinite(out["score"])
        if non_finite.any():  # a row with no usable score says why, as `score` on files does
            out["error"] = np.array(out["error"], dtype=object)
            out["error"][non_finite] = NON_FINITE
            out["score"][non_finite] = np.nan
        return out

    def _score(self, images: torch.Tensor):
        if not self.embeddings:
            return self.scorer.score_images(images, self.precision), None
        features = self.scorer.encode_images(images, self.precision)  # one encoder pass for both
        return self.scorer.score_features(features).to_cpu(), features.float().cpu().to(torch.float16)


class ShardAssembler:
    """Collects scored rows per shard and hands back each shard once it is complete (or has failed)."""

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        self.parts: dict[int, list[dict]] = defaultdict(list)
        self.received: dict[int, int] = defaultdict(int)
        self.expected: dict[int, int] = {}
        self.closed: set[int] = set()

    def add(self, batch: dict[str, np.ndarray]) -> Iterator[tuple[Shard, ShardResult | None, str | None]]:
        """Take a scored batch; yield ``(shard, result, None)`` per completed shard, ``(shard, None, why)``
        per failed one."""
        touched = set()
        for i in range(len(batch["pos"])):
            index, pos = int(batch["shard"][i]), int(batch["pos"][i])
            if index in self.closed:
                continue
            touched.add(index)
            if pos == END:
                self.expected[index] = int(batch["count"][i])
            elif pos == FAILED:
                self.closed.add(index)
                self.parts.pop(index, None)
                yield self.shards[index], None, str(batch["error"][i])
            else:
                self.parts[index].append({k: v[i] for k, v in batch.items()})
                self.received[index] += 1
        for index in sorted(touched - self.closed):
            if self.expected.get(index) == self.received[index]:
                self.closed.add(index)
                yield self.shards[index], self._result(index), None

    def _result(self, index: int) -> ShardResult:
        rows = sorted(self.parts.pop(index, []), key=lambda row: int(row["pos"]))

        def stack(name: str):
            return np.stack([row[name] for row in rows]) if rows and name in rows[0] else None

        return ShardResult(
            shard=self.shards[index],
            keys=[str(row["key"]) for row in rows],
            errors=[row["error"] if isinstance(row["error"], str) else None for row in rows],  # Ray: NaN
            score=np.array([row["score"] for row in rows], dtype=np.float32),
            raw=stack("raw"),
            distribution=stack("distribution"),
            embedding=stack("embedding"),
        )

    @property
    def open_shards(self) -> list[Shard]:
        return [self.shards[i] for i in sorted(set(self.parts) | set(self.expected)) if i not in self.closed]
