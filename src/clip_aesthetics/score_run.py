"""A streaming, resumable scoring run: results go to part files as batches finish; the ranked file at the end.

Beside the output (``ranked.csv``) a hidden work folder ``.ranked.csv.parts/`` holds::

    state.json          what the parts were made with: the scorer's config, a digest of the input list,
                        and every option that changes a score (batch size, precision, decoding, ...)
    part-000000.parquet the results of inputs [0, P): position, path (bytes), score, raw, distribution,
                        error, and the embedding with --embeddings
    part-000001.parquet inputs [P, 2P), ...

A part file is written atomically once all its inputs are done, so memory holds at most one part of rows
and a kill loses at most the parts in progress. The part size is a multiple of the batch size and a
resumed run processes whole missing parts in order, so every image lands in the same batch as in an
uninterrupted run: the final rows are identical. At the end the parts are ranked (one Arrow table of the
scalar columns), the ranked file, the errors file and the embeddings file are written atomically, and the
work folder is removed. A killed run therefore never leaves a ranked file that looks finished, and the
previous one stays intact until the new one replaces it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .features.cache import _first_difference
from .fileio import atomic_path, atomic_write_json, check_outputs, text_name
from .scoring import (
    BASE_COLUMNS,
    NON_FINITE,
    ScoredBatch,
    check_output_format,
    embeddings_path_for,
    errors_path_for,
    write_table,
)

PARTS_FORMAT = "clip-aesthetics-score-parts"
EMBEDDINGS_FORMAT = "clip-aesthetics-embeddings"
METADATA_KEY = b"clip_aesthetics"
STATE = "state.json"
DEFAULT_PART_ROWS = 1024  # about a minute of CPU scoring: what a kill can lose


class ScoreInterrupted(Exception):
    """The run was interrupted (SIGINT); ``n_kept`` results are kept in ``parts`` for a rerun."""

    def __init__(self, n_kept: int, n_total: int, parts: Path | None) -> None:
        self.n_kept, self.n_total, self.parts = n_kept, n_total, parts
        where = (
            f"{n_kept} of {n_total} results are kept in {text_name(parts)}: run the same command again "
            "to continue"
            if parts is not None
            else "nothing was kept (no --output or --html to keep parts beside)"
        )
        super().__init__(f"interrupted: {where}")


def parts_folder_for(output: str | os.PathLike) -> Path:
    """``ranked.csv`` -> ``.ranked.csv.parts``: the hidden work folder beside the output."""
    output = Path(output)
    return output.with_name(f".{output.name}.parts")


def default_part_rows(batch_size: int) -> int:
    """The multiple of ``batch_size`` nearest :data:`DEFAULT_PART_ROWS` (at least one batch)."""
    return batch_size * max(1, round(DEFAULT_PART_ROWS / batch_size))


def inputs_digest(names: Iterable[str]) -> str:
    """sha256 of the input names in order (as the bytes the file system holds)."""
    sha = hashlib.sha256()
    for name in names:
        sha.update(os.fsencode(name) + b"\0")
    return "sha256:" + sha.hexdigest()


@dataclass
class RunResult:
    """What a run did: counts over all inputs, this run's time, the best rows and the files written."""

    n_inputs: int
    n_scored: int
    n_resumed: int
    seconds: float
    top_rows: list[dict]
    errors: list[dict]
    written: list[Path] = field(default_factory=list)
    rows: list[dict] | None = None  # every ranked row, only when asked (the HTML report)

    @property
    def n_unreadable(self) -> int:
        return sum(e["error"] != NON_FINITE for e in self.errors)

    @property
    def n_non_finite(self) -> int:
        return sum(e["error"] == NON_FINITE for e in self.errors)

    @property
    def images_per_second(self) -> float:
        done = self.n_inputs - self.n_resumed
        return done / self.seconds if self.seconds > 0 else float("nan")


class PartStore:
    """The work folder of one run: its state, the finished parts, and writing a part atomically."""

    def __init__(self, folder: Path, state: dict, n_inputs: int, *, overwrite: bool = False) -> None:
        self.folder, self.state, self.n_inputs = folder, state, n_inputs
        self.part_rows = int(state["part_rows"])
        self.n_parts = -(-n_inputs // self.part_rows)
        self._open(overwrite)
        self.done = self._finished_parts()

    def _open(self, overwrite: bool) -> None:
        existing = self._read_state()
        if existing is not None and existing != self.state and not overwrite:
            diff = (_first_difference(existing, self.state) or "another setup").replace("cached", "parts")
            raise ValueError(
                f"{text_name(self.folder)} holds an unfinished run with other settings ({diff}); "
                "rerun with those settings to continue it, or pass --overwrite to start over"
            )
        if existing != self.state or overwrite:
            self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)  # also proves the place is writable, before any work
        if not (self.folder / STATE).is_file():
            atomic_write_json(self.folder / STATE, self.state)

    def _read_state(self) -> dict | None:
        try:
            state = json.loads((self.folder / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("format") == PARTS_FORMAT else None

    def clear(self) -> None:
        """Remove the work folder (only files this module writes are ever in it)."""
        if self.folder.is_dir():
            shutil.rmtree(self.folder)

    def part_path(self, k: int) -> Path:
        return self.folder / f"part-{k:06d}.parquet"

    def part_range(self, k: int) -> range:
        return range(k * self.part_rows, min(self.n_inputs, (k + 1) * self.part_rows))

    def _finished_parts(self) -> set[int]:
        done = set()
        for k in range(self.n_parts):
            try:  # a part counts only when whole: written atomically, and with the rows it should have
                if pq.read_metadata(self.part_path(k)).num_rows == len(self.part_range(k)):
                    done.add(k)
            except (OSError, pa.ArrowException):
                continue
        return done

    @property
    def pending_positions(self) -> list[int]:
        return [i for k in range(self.n_parts) if k not in self.done for i in self.part_range(k)]

    @property
    def n_done(self) -> int:
        return sum(len(self.part_range(k)) for k in self.done)

    def write_part(self, k: int, table: pa.Table) -> None:
        with atomic_path(self.part_path(k)) as tmp:
            pq.write_table(table, tmp)
        self.done.add(k)

    def tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for k in range(self.n_parts):
            yield pq.read_table(self.part_path(k), columns=columns)


class PartWriter:
    """Collects batch results per part (by position) and writes each part once all its inputs are in."""

    def __init__(self, store: PartStore, names: Sequence[str], order: Sequence[int], feature_dim: int | None):
        self.store, self.names, self.order, self.feature_dim = store, names, order, feature_dim
        self.open: dict[int, dict[int, dict]] = {}

    def add(self, batch: ScoredBatch) -> None:
        """Record a batch whose positions index ``order`` (the pending inputs of this run)."""
        output = batch.output
        for j, position in enumerate(batch.positions):
            row = {
                "score": float(output.score[j]),
                "raw": None if output.raw is None else float(output.raw[j]),
                "distribution": None if output.distribution is None else output.distribution[j].tolist(),
                "error": None,
            }
            if self.feature_dim is not None:
                row["embedding"] = batch.features[j]
            self._put(self.order[position], row)
        for position, reason in batch.errors:
            self._put(
                self.order[position], {"score": None, "raw": None, "distribution": None, "error": reason}
            )

    def _put(self, index: int, row: dict) -> None:
        k = index // self.store.part_rows
        part = self.open.setdefault(k, {})
        part[index] = row
        if len(part) == len(self.store.part_range(k)):
            self.store.write_part(k, self._table(self.open.pop(k)))

    def _table(self, part: dict[int, dict]) -> pa.Table:
        positions = sorted(part)
        rows = [part[i] for i in positions]
        columns = {
            "position": pa.array(positions, pa.int64()),
            "path": pa.array([os.fsencode(self.names[i]) for i in positions], pa.binary()),
            "score": pa.array([r["score"] for r in rows], pa.float64()),
            "raw": pa.array([r["raw"] for r in rows], pa.float64()),
            "distribution": pa.array([r["distribution"] for r in rows], pa.list_(pa.float64())),
            "error": pa.array([r["error"] for r in rows], pa.string()),
        }
        if self.feature_dim is not None:
            columns["embedding"] = _embedding_array([r.get("embedding") for r in rows], self.feature_dim)
        return pa.table(columns)


def _embedding_array(vectors: list[np.ndarray | None], dim: int) -> pa.Array:
    flat = np.zeros((len(vectors), dim), np.float32)
    valid = np.array([v is not None for v in vectors], dtype=bool)
    for i, v in enumerate(vectors):
        if v is not None:
            flat[i] = v
    values = pa.array(flat.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~valid))


@dataclass
class Outputs:
    """Where a run writes: the ranked file, the HTML report, and whether embeddings are kept."""

    output: Path | None = None
    html: Path | None = None
    embeddings: bool = False

    def validate(self) -> None:
        """Refuse, before any work, outputs that could only fail after it."""
        if self.output is not None:
            check_output_format(self.output)
        if self.embeddings and self.output is None:
            raise ValueError("--embeddings needs --output: they are written beside it")
        files = [self.output, self.html]
        if self.output is not None:
            files += [
                errors_path_for(self.output),
                embeddings_path_for(self.output) if self.embeddings else None,
            ]
        check_outputs(*files)

    def parts_folder(self) -> Path | None:
        anchor = self.output or self.html
        return None if anchor is None else parts_folder_for(anchor)


def run_state(scorer_config: dict, names: Sequence[str], options: dict, part_rows: int) -> dict:
    """The identity of a run's parts: a rerun continues them only when all of it matches."""
    state = {
        "format": PARTS_FORMAT,
        "package_version": __version__,
        "scorer": scorer_config,
        "inputs": {"count": len(names), "digest": inputs_digest(names)},
        "options": options,
        "part_rows": part_rows,
    }
    return json.loads(json.dumps(state))  # tuples -> lists, as read back from the file


class ScoreRun:
    """Score many inputs into part files, then write the ranked outputs (see the module docstring).

    ``batches(order)`` produces the :class:`ScoredBatch` results of the inputs at ``order`` (positions into
    ``names``), batch by batch; e.g. :func:`~clip_aesthetics.scoring.iter_scored` over those files.
    """

    def __init__(
        self,
        names: Sequence[str],
        scorer_config: dict,
        outputs: Outputs,
        *,
        options: dict,
        part_rows: int,
        label_threshold: float,
        feature_dim: int | None = None,
        embedding_info: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        outputs.validate()
        self.names, self.outputs, self.threshold = names, outputs, label_threshold
        self.feature_dim = feature_dim if outputs.embeddings else None
        self.embedding_info = embedding_info or {}
        state = run_state(scorer_config, names, {**options, "embeddings": outputs.embeddings}, part_rows)
        folder = outputs.parts_folder()
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory(prefix="clip-aesthetics-")
        self.folder = folder if folder is not None else Path(self._tmp.name) / "parts"
        self.store = PartStore(self.folder, state, len(names), overwrite=overwrite)

    @property
    def n_done(self) -> int:
        """Inputs already scored by an earlier, interrupted run with the same settings."""
        return self.store.n_done

    def run(self, batches, *, top: int = 10, keep_rows: bool = False) -> RunResult:
        """Score the pending inputs, then write the outputs.

        Raises:
            ScoreInterrupted: on KeyboardInterrupt (SIGINT), saying how many results the parts keep.
        """
        start, resumed = time.perf_counter(), self.n_done
        order = self.store.pending_positions
        writer = PartWriter(self.store, self.names, order, self.feature_dim)
        try:
            for batch in batches(order):
                writer.add(batch)
            result = self._finish(top, keep_rows)
        except KeyboardInterrupt:
            kept = self.store.n_done
            self.close()
            raise ScoreInterrupted(
                kept, len(self.names), self.folder if self._tmp is None else None
            ) from None
        result.n_resumed, result.seconds = resumed, time.perf_counter() - start
        return result

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def _finish(self, top: int, keep_rows: bool) -> RunResult:
        missing = self.store.n_parts - len(self.store.done)
        if missing:  # a batch source that skipped inputs: keep the parts, write nothing that looks finished
            raise RuntimeError(
                f"{missing} part(s) of {text_name(self.folder)} were not produced; rerun to finish"
            )
        scalar = ["position", "path", "score", "raw", "distribution", "error"]
        table = pa.concat_tables(self.store.tables(scalar)) if self.store.n_parts else _empty_parts()
        failed = table.filter(pc.is_valid(table["error"]))
        ranked = with_text_paths(ranked_table(table.filter(pc.is_null(table["error"])), self.threshold))
        errors = [
            {"path": text_name(os.fsdecode(p)), "error": e}
            for p, e in zip(failed["path"].to_pylist(), failed["error"].to_pylist(), strict=True)
        ]
        written = self._write_outputs(ranked, errors)
        self.store.clear()
        self.close()
        return RunResult(
            n_inputs=len(self.names),
            n_scored=ranked.num_rows,
            n_resumed=0,
            seconds=0.0,
            top_rows=ranked.slice(0, top).to_pylist(),
            errors=errors,
            written=written,
            rows=ranked.to_pylist() if keep_rows else None,
        )

    def _write_outputs(self, ranked: pa.Table, errors: list[dict]) -> list[Path]:
        output, written = self.outputs.output, []
        if output is None:
            return written
        written.append(write_table(ranked, output))
        errors_file = errors_path_for(output)
        if errors:
            written.append(write_table(pa.Table.from_pylist(errors), errors_file))
        else:
            errors_file.unlink(missing_ok=True)  # a previous run's list would now be wrong
        if self.outputs.embeddings:
            written.append(self._write_embeddings(embeddings_path_for(output)))
        return written

    def _write_embeddings(self, path: Path) -> Path:
        """Scored inputs' embeddings in input order, one part at a time: ``path`` (text) + ``embedding``."""
        schema = pa.schema(
            [("path", pa.string()), ("embedding", pa.list_(pa.float32(), self.feature_dim))],
            metadata={METADATA_KEY: json.dumps({"format": EMBEDDINGS_FORMAT, **self.embedding_info})},
        )
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as parquet:
            for part in self.store.tables(["path", "embedding", "error"]):
                part = part.filter(pc.is_null(part["error"]))
                names = [text_name(os.fsdecode(p)) for p in part["path"].to_pylist()]
                parquet.write_table(
                    pa.table(
                        {"path": pa.array(names, pa.string()), "embedding": part["embedding"]}, schema=schema
                    )
                )
        return path


def _empty_parts() -> pa.Table:
    return pa.table(
        {
            "position": pa.array([], pa.int64()),
            "path": pa.array([], pa.binary()),
            "score": pa.array([], pa.float64()),
            "raw": pa.array([], pa.float64()),
            "distribution": pa.array([], pa.list_(pa.float64())),
            "error": pa.array([], pa.string()),
        }
    )


def ranked_table(scored: pa.Table, threshold: float) -> pa.Table:
    """Best first (ties keep input order): path, score, rank, label, then raw and pred_1..pred_10 if any."""
    order = pc.sort_indices(scored, sort_keys=[("score", "descending"), ("position", "ascending")])
    scored = scored.take(order)
    score = scored["score"]
    columns = {
        "path": scored["path"],
        "score": score,
        "rank": pa.array(np.arange(1, scored.num_rows + 1, dtype=np.int64)),
        "label": pc.if_else(pc.greater(score, threshold), "good", "bad"),
    }
    if scored.num_rows and scored["raw"].null_count < scored.num_rows:
        columns["raw"] = scored["raw"]
    if scored.num_rows and scored["distribution"].null_count < scored.num_rows:
        flat = scored["distribution"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        bins = flat.reshape(scored.num_rows, -1)  # columnar: no Python object per value
        columns.update({f"pred_{k}": pa.array(bins[:, k - 1]) for k in range(1, bins.shape[1] + 1)})
    return pa.table(columns) if scored.num_rows else pa.table({c: columns[c] for c in BASE_COLUMNS})


def with_text_paths(ranked: pa.Table) -> pa.Table:
    """The ranked table with its paths as text (:func:`~clip_aesthetics.fileio.text_name`), as written."""
    try:  # every name valid UTF-8 (the usual case): one columnar cast
        return ranked.set_column(0, "path", pc.cast(ranked["path"], pa.string()))
    except pa.ArrowInvalid:
        names = [text_name(os.fsdecode(p)) for p in ranked["path"].to_pylist()]
        return ranked.set_column(0, "path", pa.array(names, pa.string()))
