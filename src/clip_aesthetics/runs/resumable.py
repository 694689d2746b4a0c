"""A streaming, resumable scoring run: results go to part files as batches finish; the ranked file at the end.

Beside the output (``ranked.csv``) a hidden work folder ``.ranked.csv.parts/`` holds::

    state.json          what the parts were made with: the scorer's config, a digest of the input list,
                        and every option that changes a score (batch size, precision, decoding, ...)
    part-000000.parquet the results of inputs [0, P): position, path (bytes), score, raw, distribution,
                        error, and the embedding with --embeddings
    part-000001.parquet inputs [P, 2P), ...

Each row of an image run also records its file as it was just before it was read (size, mtime, inode,
and the content hash of a file modified moments before, see :func:`~clip_aesthetics.fileio.file_fingerprint`).
A rerun checks the finished parts against the files: the batches holding an input that changed since it was
scored are scored again (whole batches, so every image keeps its batch), and the rerun says how many.

A part file is written atomically once all its inputs are done, so memory holds at most one part of rows
and a kill loses at most the parts in progress. The part size is a multiple of the batch size and a
resumed run processes whole missing parts in order, so every image lands in the same batch as in an
uninterrupted run: the final rows are identical. At the end the parts are ranked (one Arrow table of the
scalar columns), the ranked file, the errors file and the embeddings file are replaced together (all or
none; a previous run's errors or embeddings file that this run has no counterpart for is removed), and
the work folder is removed. A killed run therefore never leaves a ranked file that looks finished, and
the previous one stays intact until the new one replaces it. One run at a time owns an output: a second
one is refused at once, naming the first one's pid (``.ranked.csv.lock``, see ``fileio.OutputLock``).
"""

from __future__ import annotations

import functools
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

from .. import __version__
from ..fileio import (
    OutputLock,
    atomic_path,
    atomic_write_json,
    check_outputs,
    file_fingerprint,
    replace_together,
    sibling_path,
    text_name,
    unchanged_since,
)
from .score import (
    BASE_COLUMNS,
    NON_FINITE,
    ScoredBatch,
    check_output_format,
    embeddings_path_for,
    errors_path_for,
    write_table_to,
)

PARTS_FORMAT = "clip-aesthetics-score-parts"
EMBEDDINGS_FORMAT = "clip-aesthetics-embeddings"
METADATA_KEY = b"clip_aesthetics"
STATE = "state.json"
DEFAULT_PART_ROWS = 1024  # about a minute of CPU scoring: what a kill can lose
FINGERPRINT = ("size", "mtime_ns", "inode", "sha256")  # an input file as it was scored


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
    return sibling_path(output, ".", ".parts")


def setting_difference(old, new, where: str = "") -> str | None:
    """The first setting that differs, in a line a person reads: long lists are summarised by how many
    items differ (1,000 prompts are not printed), long values are cut."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            found = setting_difference(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if old == new:
        return None
    if isinstance(old, list) and isinstance(new, list):
        differ = sum(a != b for a, b in zip(old, new, strict=False)) + abs(len(old) - len(new))
        first = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))
        )
        return (
            f"{where}: {differ} of {max(len(old), len(new))} items differ (the parts have {len(old)}, "
            f"first differing at {first}: {_short(old[first] if first < len(old) else None)} "
            f"-> {_short(new[first] if first < len(new) else None)})"
        )
    return f"{where}: the parts have {_short(old)}, this run {_short(new)}"


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    removed: list[Path] = field(default_factory=list)  # a previous run's errors/embeddings file, now stale
    n_changed: int = 0  # inputs of the interrupted run that changed since they were scored (rescored)
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
            diff = setting_difference(existing, self.state) or "another setup"
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

    def changed_inputs(self, names: Sequence[str]) -> list[int]:
        """Positions in finished parts whose file is no longer what was scored (or was never recorded)."""
        changed = []
        for k in sorted(self.done):
            if not set(FINGERPRINT) <= set(pq.read_schema(self.part_path(k)).names):
                changed.extend(self.part_range(k))
                continue
            wanted = ("position", *FINGERPRINT)  # not the scores nor the embeddings: a rerun reads every part
            table = pq.read_table(self.part_path(k), columns=list(wanted))
            columns = [table[c].to_pylist() for c in wanted]
            for position, *recorded in zip(*columns, strict=True):
                if not unchanged_since(names[position], tuple(recorded)):
                    changed.append(position)
        return changed

    def rows(self, k: int) -> dict[int, dict]:
        """The rows of finished part ``k`` by position, as :class:`PartWriter` collects them."""
        table = pq.read_table(self.part_path(k))
        names = [c for c in table.column_names if c not in ("position", "path")]
        data = {c: table[c].to_pylist() if c != "embedding" else _embedding_rows(table[c]) for c in names}
        return {
            position: {c: data[c][i] for c in names}
            for i, position in enumerate(table["position"].to_pylist())
        }


class PartWriter:
    """Collects batch results per part (by position) and writes each part once all its inputs are in.

    ``fingerprints`` (image runs) maps each position of ``order`` to its file's fingerprint, taken before
    the file was read; a finished part that is being partly rescored is ``reopen``-ed with its other rows.
    """

    def __init__(
        self,
        store: PartStore,
        names: Sequence[str],
        order: Sequence[int],
        feature_dim: int | None,
        fingerprints: dict[int, tuple] | None = None,
    ):
        self.store, self.names, self.order, self.feature_dim = store, names, order, feature_dim
        self.fingerprints = fingerprints
        self.open: dict[int, dict[int, dict]] = {}

    def reopen(self, k: int, keep: set[int]) -> None:
        """Start part ``k`` from its finished rows at the positions in ``keep`` (the others are redone)."""
        self.open[k] = {i: row for i, row in self.store.rows(k).items() if i in keep}

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
        if self.fingerprints is not None:
            row.update(zip(FINGERPRINT, self.fingerprints[index], strict=True))
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
        if self.fingerprints is not None:
            types = (pa.int64(), pa.int64(), pa.uint64(), pa.string())
            columns.update(
                {c: pa.array([r[c] for r in rows], t) for c, t in zip(FINGERPRINT, types, strict=True)}
            )
        return pa.table(columns)


def _embedding_rows(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """An embedding column back to one float32 vector (or None) per row."""
    return [None if v is None else np.asarray(v, np.float32) for v in column.to_pylist()]


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
    ``names``), batch by batch; e.g. :func:`~clip_aesthetics.runs.score.iter_scored` over those files.
    ``order`` is always made of whole batches of ``batch_size`` (default: whole parts). With
    ``files=True`` the names are files, fingerprinted before they are read and checked on a rerun.
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
        batch_size: int | None = None,
        files: bool = False,
        keep_file: Path | None = None,
    ) -> None:
        outputs.validate()
        self.names, self.outputs, self.threshold = names, outputs, label_threshold
        self.feature_dim = feature_dim if outputs.embeddings else None
        self.embedding_info = embedding_info or {}
        self.batch_size, self.files, self.keep_file = batch_size or part_rows, files, keep_file
        self.changed: list[int] = []
        self.removed: list[Path] = []
        if part_rows % self.batch_size:
            raise ValueError(f"part size {part_rows} is not a multiple of the batch size {self.batch_size}")
        state = run_state(scorer_config, names, {**options, "embeddings": outputs.embeddings}, part_rows)
        folder = outputs.parts_folder()
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory(prefix="clip-aesthetics-")
        self.folder = folder if folder is not None else Path(self._tmp.name) / "parts"
        anchor = outputs.output or outputs.html
        if anchor is not None:
            anchor.parent.mkdir(exist_ok=True)  # validate() allowed one missing folder level, no more
        self._lock = OutputLock(anchor).acquire() if anchor is not None else None
        try:
            self.store = PartStore(self.folder, state, len(names), overwrite=overwrite)
            self.changed = self.store.changed_inputs(names) if files else []
        except BaseException:
            self.close()
            raise

    @property
    def n_done(self) -> int:
        """Inputs already scored by an earlier, interrupted run with the same settings (and unchanged)."""
        return self.store.n_done - len(self.changed)

    def _order(self) -> tuple[list[int], dict[int, set[int]]]:
        """Positions to score (the missing parts, and whole batches holding a changed input), and for each
        finished part that is partly redone, the positions it keeps."""
        redo: set[int] = set()
        for batch in sorted({i // self.batch_size for i in self.changed}):
            redo.update(range(batch * self.batch_size, min(len(self.names), (batch + 1) * self.batch_size)))
        kept = {}
        for i in redo:
            k = i // self.store.part_rows
            kept.setdefault(k, set(self.store.part_range(k)))
            kept[k].discard(i)
        return sorted(redo.union(self.store.pending_positions)), kept

    def run(self, batches, *, top: int = 10, keep_rows: bool = False) -> RunResult:
        """Score the pending inputs, then write the outputs.

        Raises:
            ScoreInterrupted: on KeyboardInterrupt (SIGINT), saying how many results the parts keep.
        """
        start, resumed = time.perf_counter(), self.n_done
        order, kept = self._order()
        # each file as it is before it is read: a change while it is being scored shows on the next run
        fingerprints = {i: file_fingerprint(self.names[i]) for i in order} if self.files else None
        writer = PartWriter(self.store, self.names, order, self.feature_dim, fingerprints)
        for k, keep in kept.items():
            writer.reopen(k, keep)
        try:
            for batch in batches(order):
                writer.add(batch)
            result = self._finish(top, keep_rows)
        except KeyboardInterrupt:
            kept_rows = self.store.n_done
            self.close()
            raise ScoreInterrupted(
                kept_rows, len(self.names), self.folder if self._tmp is None else None
            ) from None
        finally:
            self.close()
        result.n_resumed, result.seconds = resumed, time.perf_counter() - start
        result.n_changed = len(self.changed)
        return result

    def close(self) -> None:
        """Give the output up to other runs (parts stay for a rerun); remove a temporary work folder."""
        if self._tmp is not None:
            self._tmp.cleanup()
        if self._lock is not None:
            self._lock.release()

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
        return RunResult(
            n_inputs=len(self.names),
            n_scored=ranked.num_rows,
            n_resumed=0,
            seconds=0.0,
            top_rows=ranked.slice(0, top).to_pylist(),
            errors=errors,
            written=written,
            removed=self.removed,
            rows=ranked.to_pylist() if keep_rows else None,
        )

    def _write_outputs(self, ranked: pa.Table, errors: list[dict]) -> list[Path]:
        """The ranked, errors and embeddings files, replaced together; a previous run's companions that
        this run has none of are removed (they would describe other results)."""
        output = self.outputs.output
        if output is None:
            return []
        writes = {output: functools.partial(write_table_to, ranked, suffix=output.suffix)}
        stale = []
        errors_file, embeddings_file = errors_path_for(output), embeddings_path_for(output)
        if errors:
            writes[errors_file] = functools.partial(
                write_table_to, pa.Table.from_pylist(errors), suffix=errors_file.suffix
            )
        else:
            stale.append(errors_file)
        if self.outputs.embeddings:
            writes[embeddings_file] = self._write_embeddings
        elif self.keep_file is None or not _same_path(self.keep_file, embeddings_file):
            stale.append(embeddings_file)  # never the embeddings file this run is scoring
        self.removed = [p for p in stale if p.is_file()]
        return replace_together(writes, remove=self.removed)

    def _write_embeddings(self, tmp: Path) -> None:
        """Scored inputs' embeddings in input order, one part at a time: ``path`` (text) + ``embedding``."""
        schema = pa.schema(
            [("path", pa.string()), ("embedding", pa.list_(pa.float32(), self.feature_dim))],
            metadata={METADATA_KEY: json.dumps({"format": EMBEDDINGS_FORMAT, **self.embedding_info})},
        )
        with pq.ParquetWriter(tmp, schema) as parquet:
            for part in self.store.tables(["path", "embedding", "error"]):
                part = part.filter(pc.is_null(part["error"]))
                names = [text_name(os.fsdecode(p)) for p in part["path"].to_pylist()]
                parquet.write_table(
                    pa.table(
                        {"path": pa.array(names, pa.string()), "embedding": part["embedding"]}, schema=schema
                    )
                )


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


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
    """Best first (equal scores by raw, then input order): path, score, rank, label, raw, pred_1..pred_10.

    raw breaks ties of a saturated 1-10 score (the authors' zero-shot raw is large enough to saturate it).
    """
    keys = [("score", "descending"), ("raw", "descending"), ("position", "ascending")]
    order = pc.sort_indices(scored, sort_keys=keys)
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
