"""Parquet out: one file per input shard, each written whole or not at all, plus ``_manifest.json``.

Every shard file carries, in its Parquet key-value metadata, the identity of the scorer that made it and
a histogram of its scores. Resume reads only those footers: a shard whose file exists with the same
scorer identity is done; one made by another scorer stops the run (never mixed silently); the manifest's
counts and percentiles are sums of the per-shard histograms, so they cost nothing at 10^9 rows.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_path, atomic_write_json
from .readers import TORN, Shard, is_url

META_KEY = b"clip_aesthetics"
MANIFEST = "_manifest.json"
HIST_BINS = 1200  # 0.01-wide bins over [0, 12): scores are on 1-10; outliers are clamped into the ends
HIST_WIDTH = 0.01
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
THRESHOLDS = (4.5, 5.0, 5.5, 6.0, 6.25, 6.5, 7.0)  # LAION-Aesthetics' subsets were cut at such scores


def scorer_identity(scorer, embeddings: bool = False) -> str:
    """What makes shard outputs comparable: the scorer's config, its head's tensors, the columns asked for.

    The config names the backbone's weights (``weights_id``) and, for zero-shot, the prompts; the tensors
    (probe, LAION and fine-tuned heads) are hashed byte for byte, so a refitted head is a new scorer.
    """
    text = json.dumps({"config": scorer.config(), "embeddings": embeddings}, sort_keys=True, default=str)
    sha = hashlib.sha256(text.encode())
    tensors = getattr(scorer, "tensors", None)
    for name, tensor in sorted(tensors().items()) if callable(tensors) else ():
        sha.update(name.encode() + b"\0")
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + sha.hexdigest()[:32]


INT_METADATA = frozenset({"width", "height", "original_width", "original_height"})  # img2dataset's ints
RESERVED = frozenset({"key", "shard", "pos", "score", "label", "raw", "error", "digest", "embedding"})


def check_metadata_fields(fields: tuple[str, ...]) -> None:
    """Refuse metadata fields that would collide with a score column."""
    clashes = sorted(set(fields) & RESERVED | {f for f in fields if f.startswith("pred_")})
    if clashes:
        raise ValueError(f"--metadata {clashes[0]!r} would replace a score column; name other fields")


def _metadata_column(name: str, metas: list[dict | None]):
    """One metadata field of every row, typed by name (widths and heights are integers, the rest text)."""
    import pyarrow as pa

    values = [None if meta is None else meta.get(name) for meta in metas]
    if name in INT_METADATA:
        return pa.array([_as_int(v) for v in values], pa.int64())
    return pa.array([v if isinstance(v, str) or v is None else json.dumps(v) for v in values], pa.string())


def _as_int(value) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


@dataclass
class ShardResult:
    """A scored shard, rows in the shard's order; NaN scores where ``errors`` has a reason."""

    shard: Shard
    keys: list[str | None]
    errors: list[str | None]
    score: np.ndarray
    raw: np.ndarray | None = None
    distribution: np.ndarray | None = None
    embedding: np.ndarray | None = None
    digests: list[str | None] | None = None
    metas: list[dict | None] | None = None

    def table(self, label_threshold: float, metadata: tuple[str, ...] = ()):
        import pyarrow as pa

        n = len(self.keys)
        bad = np.array([e is not None for e in self.errors], dtype=bool)
        columns = {
            "key": pa.array(self.keys, pa.string()),
            "shard": pa.array([self.shard.url] * n, pa.string()),
            "pos": pa.array(np.arange(n, dtype=np.int64), pa.int64()),
            "score": _floats(self.score, bad),
            "label": pa.array(
                [
                    None if b else ("good" if s > label_threshold else "bad")
                    for s, b in zip(self.score, bad, strict=True)
                ],
                pa.string(),
            ),
            "raw": _floats(self.raw if self.raw is not None else np.full(len(bad), np.nan), bad),
        }
        if self.distribution is not None:
            for k in range(self.distribution.shape[1]):
                columns[f"pred_{k + 1}"] = _floats(self.distribution[:, k], bad)
        columns["error"] = pa.array(self.errors, pa.string())
        columns["digest"] = pa.array(self.digests or [None] * n, pa.string())
        for name in metadata:
            columns[name] = _metadata_column(name, self.metas or [None] * n)
        if self.embedding is not None:
            values = pa.array(self.embedding.astype(np.float16).reshape(-1), pa.float16())
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(
                values, self.embedding.shape[1], mask=pa.array(bad)
            )
        return pa.table(columns)

    def summary(self) -> dict:
        """Counts, exact min/max/sum, the 0.01-wide histogram of this shard's scores, key problems, tears."""
        good = self.score[~np.isnan(self.score)].astype(np.float64)
        bins = np.clip(np.floor(good / HIST_WIDTH).astype(np.int64), 0, HIST_BINS - 1)
        histogram = np.bincount(bins, minlength=HIST_BINS)
        nonzero = np.flatnonzero(histogram)
        keys = [k for k, e in zip(self.keys, self.errors, strict=True) if k is not None or not _is_tear(e)]
        present = [k for k in keys if k is not None]
        return {
            "rows": len(self.keys),
            "scored": int(good.size),
            "errors": len(self.keys) - int(good.size),
            "sum": float(good.sum()),
            "min": float(good.min()) if good.size else None,
            "max": float(good.max()) if good.size else None,
            "histogram": {int(i): int(histogram[i]) for i in nonzero},
            "null_keys": len(keys) - len(present),
            "duplicate_keys": len(present) - len(set(present)),
            "torn": next((e for e in self.errors if _is_tear(e)), None),
        }


def _is_tear(error: str | None) -> bool:
    return error is not None and error.startswith(TORN)


def _floats(values: np.ndarray, bad: np.ndarray):
    import pyarrow as pa

    values = np.asarray(values, dtype=np.float32)
    return pa.array(values, pa.float32(), mask=bad | np.isnan(values))


class OutputFolder:
    """The score folder: a local path (atomic renames) or an fsspec URL (one put per object)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        if is_url(self.root):
            import fsspec

            self.fs, self.path = fsspec.core.url_to_fs(self.root)
            self.fs.makedirs(self.path, exist_ok=True)
        else:
            self.fs, self.path = None, self.root
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def shard_path(self, shard: Shard) -> str:
        return f"{self.path}/{shard.name}.parquet"

    def exists(self, path: str) -> bool:
        return self.fs.exists(path) if self.fs else Path(path).is_file()

    def shard_meta(self, shard: Shard) -> dict | None:
        """The metadata of a shard's output file; None when there is none (or it is unreadable)."""
        import pyarrow.parquet as pq

        path = self.shard_path(shard)
        if not self.exists(path):
            return None
        try:
            if self.fs:
                with self.fs.open(path, "rb") as handle:
                    schema = pq.read_schema(handle)
            else:
                schema = pq.read_schema(path)
            return json.loads((schema.metadata or {})[META_KEY])
        except (OSError, KeyError, ValueError):
            return None

    def write_shard(
        self, result: ShardResult, run: RunIdentity, scorer_config: dict, threshold: float, source_id
    ) -> dict:
        """Write a shard's file whole (atomic rename or a single put); returns its metadata."""
        import pyarrow.parquet as pq

        backbone = scorer_config.get("backbone") or {}
        named = {
            "method": scorer_config.get("method"),
            "model": backbone.get("model"),
            "pretrained": backbone.get("pretrained"),
        }  # fmt: skip  (the full config is in the manifest)
        meta = {"scorer_id": run.scorer_id, "settings": run.settings, "scorer": named,
                "source": result.shard.url, "source_id": source_id, **result.summary()}  # fmt: skip
        table = result.table(threshold, tuple(run.settings.get("metadata") or ()))
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        path = self.shard_path(result.shard)
        if self.fs:
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            self.fs.pipe_file(path, buffer.getvalue())
        else:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        return meta

    def read_manifest(self) -> dict | None:
        path = f"{self.path}/{MANIFEST}"
        if not self.exists(path):
            return None
        if self.fs:
            return json.loads(self.fs.cat_file(path))
        return json.loads(Path(path).read_text())

    def write_manifest(self, manifest: dict) -> str:
        path = f"{self.path}/{MANIFEST}"
        if self.fs:
            self.fs.pipe_file(path, (json.dumps(manifest, indent=2) + "\n").encode())
        else:
            atomic_write_json(path, manifest)
        return path


@dataclass(frozen=True)
class RunIdentity:
    """What makes a shard's rows what they are: the scorer, and the settings that change rows (precision,
    pixel limit, decoding, columns read, metadata carried, embeddings). Shards of another identity are never
    mixed into a folder."""

    scorer_id: str
    settings: dict

    def differences(self, meta: dict) -> str | None:
        """Why a file's or manifest's metadata was made by another run; None when it was made by this one."""
        if meta.get("scorer_id") != self.scorer_id:
            return "another scorer"
        theirs = meta.get("settings") or {}
        changed = [
            f"{name}={theirs.get(name)!r} (this run: {value!r})"
            for name, value in sorted(self.settings.items())
            if theirs.get(name) != value
        ]
        return f"other settings: {', '.join(changed)}" if changed else None


def finished_shards(
    folder: OutputFolder,
    shards: list[Shard],
    run: RunIdentity,
    sources: dict[str, dict | None],
    overwrite: bool = False,
) -> tuple[dict[str, dict], list[str]]:
    """Footer metadata of the shards already done, by URL; and the URLs whose source changed since (rescored).

    A shard is done when its file was made by this run identity from a source of the same size, mtime and
    sampled content (``sources``, from :func:`readers.source_identity`). Footers are read in parallel threads:
    on an object store each read is a round trip.

    Raises:
        ValueError: a shard file or the manifest was made by a different scorer or settings.
    """
    if overwrite:
        return {}, []
    manifest = folder.read_manifest()
    why = manifest and run.differences(manifest)
    if why:
        raise ValueError(
            f"{folder.root} holds scores made by {why} ({MANIFEST}); use a new --output folder or --overwrite"
        )
    with ThreadPoolExecutor(max_workers=16) as pool:
        metas = dict(zip((s.url for s in shards), pool.map(folder.shard_meta, shards), strict=True))
    done, changed = {}, []
    for shard in shards:
        meta = metas[shard.url]
        if meta is None:
            continue
        why = run.differences(meta)
        if why:
            raise ValueError(
                f"{folder.shard_path(shard)} was made by {why}; use a new --output folder or --overwrite"
            )
        if sources.get(shard.url) is not None and meta.get("source_id") != sources[shard.url]:
            changed.append(shard.url)  # the input changed since it was scored: its scores are stale
        else:
            done[shard.url] = meta
    return done, changed


def build_manifest(metas: list[dict], failed: list[dict], identity: str, config: dict, run: dict) -> dict:
    """The run's summary from the per-shard metadata: counts, mean, percentiles, LAION-style buckets."""
    histogram = np.zeros(HIST_BINS, dtype=np.int64)
    for meta in metas:
        for index, count in meta["histogram"].items():
            histogram[int(index)] += count
    scored = int(histogram.sum())
    cumulative = np.cumsum(histogram)
    mins = [m["min"] for m in metas if m["min"] is not None]
    maxs = [m["max"] for m in metas if m["max"] is not None]
    return {
        "scorer_id": identity,
        "scorer": config,
        "run": run,
        "shards": {
            "total": len(metas) + len(failed),
            "written": len(metas),
            "failed": failed,
            "torn": [{"shard": m["source"], "error": m["torn"]} for m in metas if m.get("torn")],
        },
        "samples": sum(m["rows"] for m in metas),
        "keys": {
            "null": sum(m.get("null_keys", 0) for m in metas),
            "duplicate": sum(m.get("duplicate_keys", 0) for m in metas),
        },
        "scored": scored,
        "unreadable": sum(m["errors"] for m in metas),
        "score": {
            "mean": sum(m["sum"] for m in metas) / scored if scored else None,
            "min": min(mins) if mins else None,
            "max": max(maxs) if maxs else None,
            "percentiles": {  # lower edge of the 0.01-wide bin holding the percentile
                f"p{p}": round(int(np.searchsorted(cumulative, p / 100 * scored)) * HIST_WIDTH, 2)
                for p in PERCENTILES
            }
            if scored
            else {},
            "at_least": {f"{t:g}": int(histogram[round(t / HIST_WIDTH) :].sum()) for t in THRESHOLDS},
        },
    }
