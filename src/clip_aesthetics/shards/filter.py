"""Select the best samples of a score folder, as LAION-Aesthetics subsets were cut from LAION-5B.

The selection is every scored sample at or above a score: ``--min-score``, or the score of the sample at
the top-X-percent mark (ties there are kept, so slightly more than X percent may pass). It is written as a
key list (.parquet, .csv, .jsonl, .txt) or as new shards holding only the selected samples, each built
from its source shard (tar members copied as they are; Parquet rows with all their columns).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_path, atomic_write_text
from .readers import Shard, split_member
from .writer import MANIFEST, META_KEY

KEY_FORMATS = (".parquet", ".csv", ".jsonl", ".txt")


@dataclass
class FilterResult:
    scored: int
    kept: int
    threshold: float
    output: str


def filter_scores(
    scores: str, output: str, *, min_score: float | None = None, top_percent: float | None = None
) -> FilterResult:
    """Write the samples of score folder ``scores`` at or above the cut to ``output`` (keys or shards)."""
    if (min_score is None) == (top_percent is None):
        raise ValueError("give exactly one of --min-score and --top-percent")
    table, manifest = _read_scores(Path(scores))
    values = table.column("score").to_numpy(zero_copy_only=False)
    scored = values[~np.isnan(values)]
    if not scored.size:
        raise ValueError(f"no scored samples in {scores}")
    threshold = min_score if min_score is not None else _top_cut(scored, top_percent)
    keep = table.filter(np.nan_to_num(values, nan=-np.inf) >= threshold)
    if output.endswith("/") or Path(output).is_dir():
        _write_shards(keep, Path(output), (manifest.get("run") or {}).get("key_column"))
    else:
        _write_keys(keep, Path(output))
    return FilterResult(int(scored.size), keep.num_rows, float(threshold), output)


def _top_cut(scored: np.ndarray, percent: float) -> float:
    count = max(1, math.ceil(percent / 100 * scored.size))
    return float(np.partition(scored, scored.size - count)[scored.size - count])


def _read_scores(folder: Path):
    """key, shard and score of every shard file in ``folder``; refuses a folder mixing scorers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"no score files in {folder} (expected the --output folder of `score`)")
    identities = {json.loads(pq.read_schema(f).metadata[META_KEY])["scorer_id"] for f in files}
    if len(identities) > 1:
        raise ValueError(f"{folder} mixes shards of {len(identities)} different scorers")
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    tables = [pq.read_table(f, columns=["key", "shard", "score"]) for f in files]
    return pa.concat_tables(tables), manifest


def _write_keys(keep, output: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = output.suffix.lower()
    if suffix not in KEY_FORMATS:
        raise ValueError(
            f"--output must end in {', '.join(KEY_FORMATS)} or / (new shards), not {output.name!r}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".txt":
        atomic_write_text(output, "".join(f"{key}\n" for key in keep.column("key").to_pylist()))
    elif suffix == ".jsonl":
        atomic_write_text(output, "".join(json.dumps(row) + "\n" for row in keep.to_pylist()))
    else:
        with atomic_path(output) as tmp:
            (pq.write_table if suffix == ".parquet" else pacsv.write_csv)(keep, tmp)


def _write_shards(keep, folder: Path, key_column: str | None) -> None:
    """One new shard per source shard with selected samples, named like the source."""
    folder.mkdir(parents=True, exist_ok=True)
    selected: dict[str, set[str]] = {}
    for key, url in zip(keep.column("key").to_pylist(), keep.column("shard").to_pylist(), strict=True):
        selected.setdefault(url, set()).add(key)
    for url, keys in selected.items():
        shard = Shard(url)
        target = folder / url.rstrip("/").rsplit("/", 1)[-1]
        if shard.kind == "parquet":
            _copy_parquet_rows(url, keys, target, key_column)
        else:
            _copy_tar_samples(url, keys, target)


def _copy_tar_samples(url: str, keys: set[str], target: Path) -> None:
    import fsspec

    with (
        fsspec.open(url, "rb") as source,
        tarfile.open(fileobj=source, mode="r|*") as archive,
        atomic_path(target) as tmp,
        tarfile.open(tmp, "w") as out,
    ):
        try:
            for info in archive:
                if info.isfile() and split_member(info.name)[0] in keys:
                    out.addfile(info, io.BytesIO(archive.extractfile(info).read()))
        except (tarfile.TarError, OSError, EOFError):
            pass  # a torn source: every sample before the tear was scored and is copied; the rest never was


def _copy_parquet_rows(url: str, keys: set[str], target: Path, key_column: str | None) -> None:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as source:
        table = pq.read_table(source)
    key_column = key_column or ("key" if "key" in table.column_names else None)
    if key_column is None:  # keys are row numbers
        rows = sorted(int(key) for key in keys)
    else:
        column = table.column(key_column).to_pylist()
        rows = [i for i, key in enumerate(column) if key is not None and str(key) in keys]
    with atomic_path(target) as tmp:
        pq.write_table(table.take(rows), tmp)
