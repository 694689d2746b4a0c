"""Select the best samples of a score folder, as LAION-Aesthetics subsets were cut from LAION-5B.

The selection is every scored sample at or above a score: ``--min-score``, or the score of the sample at
the top-X-percent mark (ties there are kept, so slightly more than X percent may pass). It is written as a
key list (.parquet, .csv, .jsonl, .txt; each row names its shard and position) or as new shards holding
exactly the selected samples. Samples are selected by (shard, position), never by key alone: each copied
sample is checked against the key and the image digest recorded when it was scored, so a source that changed
since is detected and named, never copied in its place. New shards are written into a fresh folder that then
replaces the output folder whole (no shard of a previous cut survives).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_path, atomic_write_json, atomic_write_text
from .readers import (
    Shard,
    ShardReadError,
    content_digest,
    find_image_column,
    image_bytes,
    image_of,
    tar_groups,
)
from .run import check_output_apart
from .writer import META_KEY

KEY_FORMATS = (".parquet", ".csv", ".jsonl", ".txt")
KEYS_MARKER = b"clip_aesthetics_keys"  # in a key list's footer: never read back as a score file
FILTER_RECORD = "_filter.json"  # in a folder of new shards: what made it (and that `filter` may replace it)


@dataclass
class FilterResult:
    scored: int
    kept: int
    threshold: float
    output: str
    problems: list[str] = field(default_factory=list)


def filter_scores(
    scores: str, output: str, *, min_score: float | None = None, top_percent: float | None = None
) -> FilterResult:
    """Write the samples of score folder ``scores`` at or above the cut to ``output`` (keys or shards).

    Raises:
        ValueError: bad thresholds, an output that would overwrite an input or a foreign folder, a score
            folder mixing scorers, a file in it that is no score file.
        FileNotFoundError: no score files in ``scores``.
    """
    if (min_score is None) == (top_percent is None):
        raise ValueError("give exactly one of --min-score and --top-percent")
    if min_score is not None and not math.isfinite(min_score):
        raise ValueError(f"--min-score must be a number, not {min_score}")
    if top_percent is not None and not 0 < top_percent <= 100:
        raise ValueError(f"--top-percent must be above 0 and at most 100, not {top_percent:g}")
    table, files, settings = _read_scores(Path(scores))
    sources = sorted(set(table.column("shard").to_pylist()))
    as_shards = output.endswith(("/", os.sep)) or Path(output).is_dir()
    check_output_apart(output, [scores, *map(str, files), *sources], "filter")
    if as_shards:
        _check_replaceable(Path(output))
    values = table.column("score").to_numpy(zero_copy_only=False)
    scored = values[~np.isnan(values)]
    if not scored.size:
        raise ValueError(f"no scored samples in {scores}")
    threshold = min_score if min_score is not None else _top_cut(scored, top_percent)
    keep = table.filter(np.nan_to_num(values, nan=-np.inf) >= threshold)
    if as_shards:
        problems = _write_shards(keep, Path(output), settings, {"scores": os.path.abspath(scores),
                                                                  "threshold": float(threshold)})  # fmt: skip
    else:
        problems = _write_keys(keep, Path(output))
    return FilterResult(int(scored.size), keep.num_rows, float(threshold), output, problems)


def _top_cut(scored: np.ndarray, percent: float) -> float:
    count = max(1, math.ceil(percent / 100 * scored.size))
    return float(np.partition(scored, scored.size - count)[scored.size - count])


def _read_scores(folder: Path):
    """key, shard, pos, score and digest of every score file in ``folder``, the files, and the settings they
    were made with; refuses a folder mixing scorers or holding a Parquet file that is no score file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    metas, schemas = {}, {}
    for file in files:
        try:
            schemas[file] = pq.read_schema(file)
            footer = schemas[file].metadata or {}
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(
                f"{file} is not a readable Parquet file ({exc}); move it out of {folder}"
            ) from None
        if KEYS_MARKER in footer:
            continue  # a key list written here by an earlier `filter`
        if META_KEY not in footer:
            raise ValueError(
                f"{file} is not a score file of `score` (no scorer record); move it out of {folder}"
            )
        metas[file] = json.loads(footer[META_KEY])
    if not metas:
        raise FileNotFoundError(f"no score files in {folder} (expected the --output folder of `score`)")
    runs = {json.dumps([m.get("scorer_id"), m.get("settings")], sort_keys=True) for m in metas.values()}
    if len(runs) > 1:
        raise ValueError(f"{folder} mixes shards of {len(runs)} different scorers or settings")
    columns = ["key", "shard", "pos", "score", "digest"]
    tables = []
    for file in metas:
        if not set(columns) <= set(schemas[file].names):
            raise ValueError(
                f"{file} has no pos/digest columns (an older version wrote it): rescore the shards"
            )
        tables.append(pq.read_table(file, columns=columns))
    return pa.concat_tables(tables), list(metas), next(iter(metas.values())).get("settings") or {}


def _write_keys(keep, output: Path) -> list[str]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = output.suffix.lower()
    if suffix not in KEY_FORMATS:
        raise ValueError(
            f"--output must end in {', '.join(KEY_FORMATS)} or / (new shards), not {output.name!r}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    keep = keep.select(["key", "shard", "pos", "score"])
    problems = []
    if suffix == ".txt":  # keys alone: say what a bare key list cannot hold
        keys = [key for key in keep.column("key").to_pylist()]
        present = [key for key in keys if key is not None]
        if len(present) < len(keys):
            problems.append(
                f"{len(keys) - len(present)} selected samples have no key (write .parquet or .csv)"
            )
        if len(set(present)) < len(present):
            problems.append(f"{len(present) - len(set(present))} keys repeat (write .parquet: shard and pos)")
        atomic_write_text(output, "".join(f"{key}\n" for key in present))
    elif suffix == ".jsonl":
        atomic_write_text(output, "".join(json.dumps(row) + "\n" for row in keep.to_pylist()))
    elif suffix == ".parquet":
        keep = keep.replace_schema_metadata({KEYS_MARKER: b"{}"})
        with atomic_path(output) as tmp:
            pq.write_table(keep, tmp)
    else:
        with atomic_path(output) as tmp:
            pacsv.write_csv(keep, tmp)
    return problems


def _check_replaceable(folder: Path) -> None:
    """A folder of new shards may be replaced only when it is empty or an earlier `filter` wrote it."""
    if folder.is_dir() and any(folder.iterdir()) and not (folder / FILTER_RECORD).is_file():
        raise ValueError(
            f"--output {folder} holds files that `filter` did not write; give a new or empty folder"
        )


def _write_shards(keep, folder: Path, settings: dict, record: dict) -> list[str]:
    """New shards (one per source shard with selected samples, named like it) in a fresh folder that then
    replaces ``folder`` whole; returns the problems (samples not copied, and why)."""
    wanted: dict[str, dict[int, tuple]] = defaultdict(dict)
    for row in keep.select(["shard", "pos", "key", "digest"]).to_pylist():
        wanted[row["shard"]][row["pos"]] = (row["key"], row["digest"])
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = folder.parent / f".{folder.name}.new-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    problems: list[str] = []
    try:
        for url, positions in sorted(wanted.items()):
            target = fresh / url.rstrip("/").rsplit("/", 1)[-1]
            copy = _copy_parquet_rows if Shard(url).kind == "parquet" else _copy_tar_samples
            try:
                problems += [f"{url}: {p}" for p in copy(url, positions, target, settings)]
            except (ShardReadError, OSError) as exc:
                problems.append(f"{url}: cannot read the source ({exc}); {len(positions)} samples not copied")
        atomic_write_json(fresh / FILTER_RECORD, {**record, "kept": keep.num_rows, "problems": problems})
        _replace_folder(folder, fresh)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return problems


def _replace_folder(folder: Path, fresh: Path) -> None:
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _mismatch(pos: int, wanted: tuple, key, digest) -> str | None:
    if key != wanted[0]:
        return f"sample {pos}: key {key!r} where {wanted[0]!r} was scored (the source changed since)"
    if digest != wanted[1]:
        return f"sample {pos} ({key}): its image differs from the one scored (the source changed since)"
    return None


def _copy_tar_samples(url: str, wanted: dict[int, tuple], target: Path, settings: dict) -> list[str]:
    """Copy the members of exactly the samples at ``wanted`` positions, each checked against its record."""
    problems, seen = [], set()
    with tarfile.open(target, "w") as out:
        for pos, group in enumerate(tar_groups(url)):
            if pos not in wanted:
                continue
            seen.add(pos)
            image = image_of(group.by_ext)
            why = _mismatch(pos, wanted[pos], group.key, image and content_digest(image))
            if why:
                problems.append(why)
                continue
            for info, data in group.members:
                out.addfile(info, io.BytesIO(data))
    return problems + _missing(wanted, seen)


def _missing(wanted: dict[int, tuple], seen: set[int]) -> list[str]:
    gone = sorted(set(wanted) - seen)
    return [f"{len(gone)} scored samples are no longer in the source (from sample {gone[0]})"] if gone else []


def _copy_parquet_rows(url: str, wanted: dict[int, tuple], target: Path, settings: dict) -> list[str]:
    """Copy exactly the rows at ``wanted`` positions (all their columns), each checked against its record."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as source:
        table = pq.read_table(source)
    key_column = settings.get("key_column") or ("key" if "key" in table.column_names else None)
    images = table.column(find_image_column(table.schema, settings.get("image_column"), url)).combine_chunks()
    problems, rows = [], []
    for pos in sorted(p for p in wanted if p < table.num_rows):
        if key_column is None:
            key = f"{pos:09d}"
        else:
            value = table.column(key_column)[pos].as_py()
            key = None if value is None else str(value)
        data, _ = image_bytes(images.slice(pos, 1))
        why = _mismatch(pos, wanted[pos], key, data[0] and content_digest(data[0]))
        if why:
            problems.append(why)
        else:
            rows.append(pos)
    pq.write_table(table.take(rows), target)
    return problems + _missing(wanted, set(range(table.num_rows)))
