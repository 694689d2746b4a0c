"""The feature cache on disk: manifest, shard files, atomic writes, compatibility checks and loading.

A cache is a folder::

    manifest.json          what was embedded (backbone, preprocessing, feature kind, dtype, dataset and
                           split definition, package version), the completed shards, counts, and the images
                           that failed to decode (id, path, reason)
    shard-00000.npy        float16 features (n_embedded, D) of records [0, S), in record order
    shard-00000.parquet    one row per record of the shard: id, path, split, mean, votes_1..votes_10,
                           error (null when embedded) and row (its row in the .npy, -1 when it failed)

Shard ``k`` always covers records ``[k * S, (k + 1) * S)`` of the dataset's record order. Each shard file is
written under a temporary name, flushed and moved into place with ``os.replace``; a shard counts as done
only once the manifest (itself replaced atomically) lists it, so a run killed at any moment leaves nothing
that is read as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import __version__
from ..constants import VOTE_COLUMNS
from ..datasets import Record
from ..encoders.backbones import Backbone
from ..encoders.compute import resolve_precision
from ..fileio import atomic_path, atomic_write_text, name_from_text, text_name

CACHE_FORMAT = "clip-aesthetics-features"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FEATURE_DTYPE = np.float16


def feature_kind(backbone: Backbone) -> str:
    """``clip-image-embedding`` (projected, not normalised) or ``timm-pre-logits``."""
    return "clip-image-embedding" if backbone.kind == "clip" else "timm-pre-logits"


def _ids_digest(records: Sequence[Record]) -> str:
    """Digest of the ids in order: shards are defined by position, so the order matters."""
    return hashlib.sha256("\n".join(r.id for r in records).encode("utf-8", "surrogateescape")).hexdigest()[
        :16
    ]


def cache_plan(
    backbone: Backbone,
    records: Sequence[Record],
    source: dict,
    precision: str,
    shard_size: int,
    decode: str = "cpu",
) -> dict:
    """The part of a manifest a cache must match to be resumed or reused (JSON-normalised).

    Precision and decoder (``cpu``: PIL, ``gpu``: nvJPEG) are part of it: both change the features slightly.
    """
    plan = {
        "format": CACHE_FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone.describe(),
        "feature": {
            "kind": feature_kind(backbone),
            "dim": backbone.feature_dim,
            "dtype": np.dtype(FEATURE_DTYPE).name,
            "normalization": "none",
            "precision": resolve_precision(backbone.device, precision),
            "decode": decode,
        },
        "dataset": {**source, "n_records": len(records), "ids_digest": _ids_digest(records)},
        "shard_size": shard_size,
    }
    return json.loads(json.dumps(plan))  # tuples -> lists, as read back from the manifest


def _first_difference(old, new, where: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if old == new else f"{where}: cached {old!r}, requested {new!r}"


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The manifest of a cache folder, or None when there is none."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); rebuild the cache with --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a clip-aesthetics feature cache manifest")
    shapes = {"shards": list, "errors": list, "feature": dict}
    wrong = [key for key, kind in shapes.items() if not isinstance(manifest.get(key), kind)]
    if wrong or not isinstance(manifest["feature"].get("dim"), int):
        what = ", ".join(wrong) if wrong else "feature.dim"
        raise ValueError(f"{path} is damaged (no valid {what}); rebuild the cache with --overwrite")
    return manifest


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def _cache_files(out: Path) -> list[Path]:
    """Files a cache owns, including temporaries a killed run may have left."""
    prefixes = ("shard-", ".shard-", f".{MANIFEST}.")
    return [p for p in out.iterdir() if p.name == MANIFEST or p.name.startswith(prefixes)]


def open_for_writing(out: Path, plan: dict, overwrite: bool) -> dict:
    """The manifest to continue from: a matching one, or a fresh one (after clearing with ``overwrite``).

    Raises:
        ValueError: the folder holds a cache of another setup (without ``overwrite``), or other files.
    """
    out.mkdir(parents=True, exist_ok=True)
    existing = read_manifest(out)
    if existing is None and any(p for p in out.iterdir() if p not in _cache_files(out)):
        raise ValueError(f"{out} is not empty and holds no feature cache: choose a new or empty --output")
    if existing is not None:
        # a finished cache serves any batch size: the shard size only matters for resuming
        compared = [k for k in plan if not (k == "shard_size" and existing.get("complete"))]
        diff = _first_difference({k: existing.get(k) for k in compared}, {k: plan[k] for k in compared})
        if diff is None:
            return existing
        if not overwrite:
            raise ValueError(
                f"{out} holds features of another setup ({diff}); pass --overwrite to rebuild it"
            )
    for path in _cache_files(out):  # only our own files: --overwrite must never empty a user's folder
        path.unlink()
    manifest = {**plan, "package_version": __version__, "complete": False, "shards": [], "errors": []}
    _write_json(out / MANIFEST, manifest)
    return manifest


def shard_name(index: int, suffix: str) -> str:
    return f"shard-{index:05d}{suffix}"


def _shard_table(records: Sequence[Record], splits: Sequence[str | None], errors: dict[int, str]) -> pa.Table:
    rows, n_ok = [], 0
    for offset, (record, split) in enumerate(zip(records, splits, strict=True)):
        votes = record.votes.tolist() if record.votes is not None else [None] * 10
        ok = offset not in errors
        rows.append(
            {
                "id": text_name(record.id),  # names that are not UTF-8: \xNN escapes (fileio.text_name)
                "path": None if record.path is None else text_name(record.path),
                "split": split,
                "mean": record.mean,
                **dict(zip(VOTE_COLUMNS, votes, strict=True)),
                "error": errors.get(offset),
                "row": n_ok if ok else -1,
            }
        )
        n_ok += ok
    schema = pa.schema(
        [("id", pa.string()), ("path", pa.string()), ("split", pa.string()), ("mean", pa.float64())]
        + [(c, pa.int64()) for c in VOTE_COLUMNS]
        + [("error", pa.string()), ("row", pa.int64())]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _replace_into(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


@dataclass
class OpenShard:
    """A shard being filled: its features by offset and the offsets that failed."""

    index: int
    start: int
    features: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    seen: int = 0


def write_shard(
    out: Path, manifest: dict, shard: OpenShard, records: Sequence[Record], splits: Sequence, batch_size: int
) -> None:
    """Write a shard's files, then list it in the manifest: only then is it complete."""
    end = shard.start + len(shard.features)
    keep = np.array([i not in shard.errors for i in range(len(shard.features))], dtype=bool)
    features = np.ascontiguousarray(shard.features[keep])

    def save_npy(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, features)

    table = _shard_table(records[shard.start : end], splits[shard.start : end], shard.errors)
    _replace_into(out / shard_name(shard.index, ".npy"), save_npy)
    _replace_into(out / shard_name(shard.index, ".parquet"), lambda tmp: pq.write_table(table, tmp))
    entry = {
        "index": shard.index,
        "n_records": len(keep),
        "n_embedded": int(keep.sum()),
        "n_failed": len(shard.errors),
        "batch_size": batch_size,
    }
    manifest["shards"] = sorted([*manifest["shards"], entry], key=lambda s: s["index"])
    failed = [
        {"id": records[shard.start + i].id, "path": str(records[shard.start + i].path), "error": error}
        for i, error in sorted(shard.errors.items())
    ]
    manifest["errors"] = [e for e in manifest["errors"] if e.get("shard") != shard.index]
    manifest["errors"].extend({**e, "shard": shard.index} for e in failed)
    _write_json(out / MANIFEST, manifest)


def pending_shards(out: Path, manifest: dict, n_shards: int) -> list[int]:
    """Shards not listed as done, or listed but with a file gone (recomputed rather than trusted)."""
    done = {
        s["index"]
        for s in manifest["shards"]
        if all((out / shard_name(s["index"], suffix)).is_file() for suffix in (".npy", ".parquet"))
    }
    manifest["shards"] = [s for s in manifest["shards"] if s["index"] in done]
    return [k for k in range(n_shards) if k not in done]


def complete_manifest(out: Path, manifest: dict, n_records: int) -> dict:
    """Mark the cache complete with its counts, once every shard is listed."""
    n_embedded = sum(s["n_embedded"] for s in manifest["shards"])
    manifest["complete"] = True
    manifest["counts"] = {"records": n_records, "embedded": n_embedded, "failed": n_records - n_embedded}
    _write_json(out / MANIFEST, manifest)
    return manifest


@dataclass
class FeatureSet:
    """Cached features of the embedded records, row-aligned with their metadata.

    Attributes:
        features: (N, D) float16, the backbone's ``encode_image`` output.
        ids, paths: record ids and image paths.
        splits: (N,) object array of split names (None where the cache was built with ``--split-kind none``).
        means: (N,) float64 mean scores, NaN where unlabelled.
        votes: (N, 10) int64 vote counts, or None unless every record has them.
        manifest: the cache's manifest.
    """

    features: np.ndarray
    ids: list[str]
    paths: list[str | None]
    splits: np.ndarray
    means: np.ndarray
    votes: np.ndarray | None
    manifest: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, split: str, *more: str) -> FeatureSet:
        """The records of one part of the split (train, val or test), of several, or all of them."""
        every = split == "all"
        mask = np.ones(len(self.splits), dtype=bool) if every else np.isin(self.splits, [split, *more])
        keep = np.flatnonzero(mask)
        return FeatureSet(
            self.features[mask],
            [self.ids[i] for i in keep],
            [self.paths[i] for i in keep],
            self.splits[mask],
            self.means[mask],
            None if self.votes is None else self.votes[mask],
            self.manifest,
        )

    @property
    def distributions(self) -> np.ndarray | None:
        """Vote fractions (N, 10), or None without votes."""
        return None if self.votes is None else self.votes / self.votes.sum(axis=1, keepdims=True)


def _read_shard(cache: Path, entry: dict, dim: int) -> tuple[np.ndarray, pa.Table]:
    features = np.load(cache / shard_name(entry["index"], ".npy"))
    table = pq.read_table(cache / shard_name(entry["index"], ".parquet"))
    table = table.filter(pc.is_null(table["error"]))
    if features.shape != (entry["n_embedded"], dim) or table.num_rows != len(features):
        raise ValueError(f"{cache}: shard {entry['index']} does not match its manifest entry; re-run embed")
    return features, table


def load_features(cache: str | os.PathLike) -> FeatureSet:
    """Read a complete feature cache.

    Raises:
        FileNotFoundError: no manifest in ``cache``.
        ValueError: the cache is incomplete (an embed run was interrupted) or damaged.
    """
    cache = Path(cache)
    manifest = read_manifest(cache)
    if manifest is None:
        raise FileNotFoundError(f"no feature cache at {cache} (no {MANIFEST}): run `clip-aesthetics embed`")
    if not manifest.get("complete"):
        raise ValueError(
            f"{cache} is incomplete ({len(manifest['shards'])} shards done): "
            "run the same `clip-aesthetics embed` command again to finish it"
        )
    dim = manifest["feature"]["dim"]
    parts = [_read_shard(cache, entry, dim) for entry in manifest["shards"]]
    table = pa.concat_tables([t for _, t in parts]) if parts else None
    features = np.concatenate([f for f, _ in parts]) if parts else np.zeros((0, dim), FEATURE_DTYPE)
    column = (lambda name: table[name].to_pylist()) if table is not None else (lambda name: [])
    votes = np.array([column(c) for c in VOTE_COLUMNS], dtype=object).T.reshape(-1, 10)
    has_votes = len(votes) > 0 and not any(v is None for v in votes.ravel())
    means = np.array([np.nan if m is None else m for m in column("mean")], dtype=np.float64)
    return FeatureSet(
        features=features,
        ids=[name_from_text(i) for i in column("id")],
        paths=[None if p is None else name_from_text(p) for p in column("path")],
        splits=np.array(column("split"), dtype=object),
        means=means,
        votes=votes.astype(np.int64) if has_votes else None,
        manifest=manifest,
    )
