"""The steps both engines share, on column batches.

read (:func:`shard_rows`) -> decode (:func:`decode_row`: uint8 at model size) -> score (:class:`BatchScorer`)
-> reassemble per shard (:class:`ShardAssembler`) -> write. Besides one row per sample, a shard's stream ends
in a marker row: ``pos == END`` with the number of samples in ``count``, or ``pos == FAILED`` with the reason
in ``error`` when the shard could not be read. Rows may arrive in any order (and, after a lost Ray node, more
than once); a shard is complete when its end marker and each of its positions are in, so no sample is written
twice or lost.

Scored batches are Arrow tables of one schema fixed before the first batch (:func:`scored_schema`): whichever
mix of good and broken samples a batch holds, on whichever engine, every column keeps its type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..encoders.backbones import PreprocessConfig
from ..encoders.compute import resolve_precision
from ..pipeline.images import load_prepared
from ..runs.score import NON_FINITE
from ..scorers.base import Scorer
from .readers import Shard, ShardReadError, iter_shard
from .writer import ShardResult

END, FAILED = -1, -2
NOT_BYTES = "image data is not bytes"


def shard_rows(
    index: int,
    shard: Shard,
    image_column: str | None = None,
    key_column: str | None = None,
    metadata: Sequence[str] = (),
) -> Iterator[dict]:
    """One row per sample of shard ``index`` (key, encoded bytes, error, digest, metadata as JSON), then its
    end or failure marker."""
    count = 0
    try:
        for sample in iter_shard(shard, image_column, key_column, metadata):
            yield {"shard": index, "pos": count, "key": sample.key, "data": sample.data,
                   "error": sample.error, "count": 0, "digest": sample.digest,
                   "meta": None if sample.meta is None else json.dumps(sample.meta, default=str)}  # fmt: skip
            count += 1
    except ShardReadError as exc:
        yield _marker(index, FAILED, str(exc))
        return
    yield _marker(index, END, None, count)


def _marker(index: int, pos: int, error: str | None, count: int = 0) -> dict:
    return {"shard": index, "pos": pos, "key": None, "data": None, "error": error, "count": count,
            "digest": None, "meta": None}  # fmt: skip


def decode_row(row: dict, cfg: PreprocessConfig, max_pixels: int, draft_size: int | None) -> dict:
    """Decode one row's bytes to uint8 (3, S, S) at model size; zeros and the reason when unreadable."""
    pixels, error = None, row["error"]
    if row["pos"] >= 0 and error is None:
        if isinstance(row["data"], bytes):  # never a path: shards carry their images
            pixels, error = load_prepared(row["data"], cfg, max_pixels, draft_size)
        else:
            error = NOT_BYTES
    if pixels is None:
        pixels = torch.zeros(3, cfg.size, cfg.size, dtype=torch.uint8)
    decoded = {name: row[name] for name in ("shard", "pos", "key", "count", "digest", "meta")}
    decoded.update(error=error, ok=row["pos"] >= 0 and error is None, pixels=pixels.numpy())
    return decoded


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


_PASSED = ("shard", "pos", "key", "error", "count", "digest", "meta")  # bookkeeping, carried through scoring


def scored_schema(distribution: bool, embedding_dim: int | None):
    """The Arrow schema of every scored batch of a run: fixed by the scorer and options, never by the data."""
    import pyarrow as pa

    fields = [
        pa.field("shard", pa.int64()),
        pa.field("pos", pa.int64()),
        pa.field("key", pa.string()),
        pa.field("error", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("digest", pa.string()),
        pa.field("meta", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("raw", pa.float32()),
    ]
    if distribution:
        fields.append(pa.field("distribution", pa.list_(pa.float32(), 10)))
    if embedding_dim:
        fields.append(pa.field("embedding", pa.list_(pa.float16(), embedding_dim)))
    return pa.schema(fields)


def _text(values) -> list[str | None]:
    """Optional text cells: a string, or None for anything else (None, NaN from a pandas round trip)."""
    return [value if isinstance(value, str) else None for value in values]


def to_table(columns: dict[str, np.ndarray], schema):
    """A scored column batch as an Arrow table of ``schema`` (every column typed explicitly)."""
    import pyarrow as pa

    arrays = []
    for field in schema:
        values = columns[field.name]
        if pa.types.is_fixed_size_list(field.type):
            flat = pa.array(np.ascontiguousarray(values).reshape(-1), field.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
        elif pa.types.is_string(field.type):
            arrays.append(pa.array(_text(values), field.type))
        else:
            arrays.append(pa.array(np.asarray(values), field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class BatchScorer:
    """Scores the decoded rows of a batch into a table of :func:`scored_schema`; the pixels are dropped."""

    def __init__(self, scorer: Scorer, precision: str = "auto", embeddings: bool = False):
        if embeddings and not scorer.scores_features:
            raise ValueError(
                "--embeddings needs a scorer on frozen features (zeroshot, probe, laion), "
                f"not {scorer.method}"
            )
        # auto: bf16 on CUDA and on CPUs with native bf16, as `score` on files does
        self.precision = resolve_precision(scorer.device, precision, cpu_bf16=True)
        self.scorer, self.embeddings = scorer, embeddings
        dim = scorer.backbone.feature_dim if embeddings else None
        self.schema = scored_schema(scorer.has_distribution, dim)

    def __call__(self, batch: dict[str, np.ndarray]):
        ok = np.asarray(batch["ok"], dtype=bool)
        n = len(ok)
        out = {k: batch[k] for k in _PASSED}
        out["error"] = np.array(_text(batch["error"]), dtype=object)
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
        out["error"][non_finite] = NON_FINITE  # a row with no usable score says why, as `score` on files does
        out["score"][non_finite] = np.nan
        return to_table(out, self.schema)

    def _score(self, images: torch.Tensor):
        if not self.embeddings:
            return self.scorer.score_images(images, self.precision), None
        features = self.scorer.encode_images(images, self.precision)  # one encoder pass for both
        return self.scorer.score_features(features).to_cpu(), features.float().cpu().to(torch.float16)


def _fixed_lists(column) -> np.ndarray:
    """A fixed-size-list column as a 2-D numpy array."""
    size = column.type.list_size
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, size)


class ShardAssembler:
    """Collects scored rows per shard and hands back each shard once it is complete (or has failed).

    Rows are kept by position: a row delivered twice (an engine retrying lost work) counts once.
    """

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        self.parts: dict[int, dict[int, dict]] = {}
        self.expected: dict[int, int] = {}
        self.closed: set[int] = set()

    def add(self, table) -> Iterator[tuple[Shard, ShardResult | None, str | None]]:
        """Take a scored batch (a table of :func:`scored_schema`); yield ``(shard, result, None)`` per
        completed shard, ``(shard, None, why)`` per failed one."""
        columns = {name: table.column(name) for name in table.column_names}
        rows = {name: _fixed_lists(c) if name in ("distribution", "embedding") else c.to_pylist()
                for name, c in columns.items()}  # fmt: skip
        touched = set()
        for i in range(table.num_rows):
            index, pos = rows["shard"][i], rows["pos"][i]
            if index in self.closed:
                continue
            touched.add(index)
            if pos == END:
                self.expected[index] = rows["count"][i]
            elif pos == FAILED:
                self.closed.add(index)
                self.parts.pop(index, None)
                yield self.shards[index], None, rows["error"][i]
            else:
                self.parts.setdefault(index, {})[pos] = {name: rows[name][i] for name in rows}
        for index in sorted(touched - self.closed):
            if self.expected.get(index) == len(self.parts.get(index, {})):
                self.closed.add(index)
                yield self.shards[index], self._result(index), None

    def _result(self, index: int) -> ShardResult:
        rows = [row for _, row in sorted(self.parts.pop(index, {}).items())]

        def stack(name: str):
            return np.stack([row[name] for row in rows]) if rows and name in rows[0] else None

        return ShardResult(
            shard=self.shards[index],
            keys=[row["key"] for row in rows],
            errors=[row["error"] for row in rows],
            score=np.array([row["score"] for row in rows], dtype=np.float32).reshape(-1),
            raw=np.array([row["raw"] for row in rows], dtype=np.float32).reshape(-1),
            distribution=stack("distribution"),
            embedding=stack("embedding"),
            digests=[row["digest"] for row in rows],
            metas=[None if row["meta"] is None else json.loads(row["meta"]) for row in rows],
        )

    @property
    def open_shards(self) -> list[Shard]:
        return [self.shards[i] for i in sorted(set(self.parts) | set(self.expected)) if i not in self.closed]
