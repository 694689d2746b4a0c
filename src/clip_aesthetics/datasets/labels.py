"""Parsers for label files other than AVA: a generic CSV, AADB, TAD66K, PARA and KonIQ-10k.

Every score is mapped linearly from the dataset's stated range onto AVA's 1-10 scale, so one scorer and one
set of metrics serve all datasets (``SCALE_MAPPINGS``; ``1 + 9 * (s - lo) / (hi - lo)``):

========  ==================================  ======  ==========================
dataset   label used                          range   on 1-10
========  ==================================  ======  ==========================
aadb      ``imgList*Regression_score.txt``    0-1     ``1 + 9 * s``
tad66k    ``score`` column                    0-10    ``1 + 0.9 * s``
para      ``aestheticScore_mean``             1-5     ``1 + 2.25 * (s - 1)``
koniq     ``MOS`` (technical quality)         1-5     ``1 + 2.25 * (s - 1)``
========  ==================================  ======  ==========================

The maps are linear, so SRCC is unchanged; PLCC is unchanged too, only MSE/MAE are in 1-10 units. The binary
threshold 5 on 1-10 is AVA's convention; it corresponds to s > 0.444 on AADB and s > 2.78 on PARA, not to
those datasets' own habits (0.5 and 3), so pass ``threshold=5.5`` to reproduce them. Scores outside the
stated range are malformed lines. Each parser records the dataset's official split in ``Record.split``.

Image folders: AADB train/val/test images are usually distributed warped to 256x256 in
``datasetImages_warp256/`` (used when present), with originals in ``datasetImages_originalSize/``; the
"new test" set (``AADB_newtest``) is not parsed. TAD66K images sit in ``TAD66K/`` (or ``images/``, ``imgs/``)
with labels in ``labels/merge/{train,test}.csv``. PARA images are ``imgs/<sessionId>/<imageName>``;
KonIQ-10k images are in ``1024x768/``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import VOTE_COLUMNS
from ..fileio import open_text
from .records import (
    ParsedDataset,
    ParseError,
    ParseReport,
    Record,
    bulk_allocation,
    check_votes,
    filter_available,
    resolve_manifest,
)

DEFAULT_VOTE_COLUMNS = VOTE_COLUMNS
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class ScaleMapping:
    """A dataset's stated score range and its linear map onto AVA's 1-10 scale."""

    lo: float
    hi: float
    note: str

    def to_ava(self, score: float) -> float:
        """Map a score from [lo, hi] onto [1, 10]."""
        return 1.0 + 9.0 * (score - self.lo) / (self.hi - self.lo)


SCALE_MAPPINGS: dict[str, ScaleMapping] = {
    "ava": ScaleMapping(1, 10, "AVA means are on 1-10 already"),
    "aadb": ScaleMapping(0, 1, "AADB score in [0, 1] -> 1 + 9 s"),
    "tad66k": ScaleMapping(0, 10, "TAD66K score in [0, 10] (loaders divide by 10) -> 1 + 0.9 s"),
    "para": ScaleMapping(1, 5, "PARA aestheticScore_mean in [1, 5] -> 1 + 2.25 (s - 1)"),
    "koniq": ScaleMapping(
        1, 5, "KonIQ-10k MOS in [1, 5] -> 1 + 2.25 (s - 1); technical quality, not aesthetics"
    ),
}

Row = dict[str, str]
RecordBuilder = Callable[[Row], Record]


def _number(row: Row, column: str) -> float:
    try:
        value = float(row[column])
    except ValueError:
        raise ValueError(f"non-numeric value {row[column]!r} in column {column!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"non-finite value {row[column]!r} in column {column!r}")
    return value


def _scaled(row: Row, column: str, mapping: ScaleMapping) -> float:
    score = _number(row, column)
    if not mapping.lo <= score <= mapping.hi:
        raise ValueError(f"score {score:g} in column {column!r} outside [{mapping.lo:g}, {mapping.hi:g}]")
    return mapping.to_ava(score)


def _split(value: str) -> str:
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise ValueError(f"unknown split {value!r}; expected one of {sorted(SPLIT_ALIASES)}")
    return split


def _read_rows(path: Path, delimiter: str | None) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, stripped fields) of non-blank lines; ``delimiter=None`` splits on whitespace."""
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    with open_text(path, newline="") as f:  # spreadsheet exports start with a BOM: dropped
        if delimiter is None:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    yield line_no, line.split()
            return
        reader = csv.reader(f, delimiter=delimiter)
        for fields in reader:
            if any(field.strip() for field in fields):
                yield reader.line_num, [field.strip() for field in fields]


def _table(path: Path, delimiter: str | None = ",") -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header and data rows of a delimited file with a header line."""
    rows = _read_rows(path, delimiter)
    first = next(rows, None)
    if first is None:
        raise ParseError(path, 1, "empty file, expected a header row")
    return first[1], rows


def _require(path: Path, header: Sequence[str], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ParseError(path, 1, f"missing column(s) {missing}; header has {list(header)}")


def _collect(
    path: Path,
    header: Sequence[str],
    rows: Iterator[tuple[int, list[str]]],
    build: RecordBuilder,
    report: ParseReport,
    lenient: bool,
    seen: dict[str, str],
) -> list[Record]:
    """Rows to records with ``build``; malformed rows and duplicate ids go through ``report.reject``."""
    records: list[Record] = []
    with bulk_allocation():
        for line_no, fields in rows:
            report.n_lines += 1
            if len(fields) != len(header):
                report.reject(path, line_no, f"expected {len(header)} columns, got {len(fields)}", lenient)
                continue
            try:
                rec = build(dict(zip(header, fields, strict=True)))
            except ValueError as e:
                report.reject(path, line_no, str(e), lenient)
                continue
            if rec.id in seen:
                report.reject(path, line_no, f"duplicate id {rec.id!r} (first at {seen[rec.id]})", lenient)
                continue
            seen[rec.id] = f"{path.name}:{line_no}"
            records.append(rec)
    return records


def _finish(
    name: str,
    root: Path,
    records: list[Record],
    report: ParseReport,
    manifest: Path | str | None,
    check_files: bool,
) -> ParsedDataset:
    """Drop broken/missing images and wrap up the parsed dataset."""
    records = filter_available(records, report, resolve_manifest(root, manifest), check_files)
    report.n_records = len(records)
    return ParsedDataset(name=name, root=root, records=records, report=report)


def _first_dir(root: Path, names: Sequence[str]) -> Path:
    """The first of ``root/name`` that exists, else the first candidate (missing files are then reported)."""
    return next((root / n for n in names if (root / n).is_dir()), root / names[0])


def _label_columns(
    path: Path, header: Sequence[str], score_column: str | None, vote_columns: Sequence[str] | None
) -> tuple[str | None, Sequence[str] | None]:
    """Which column(s) hold the label: explicit choices must exist; otherwise detect common names."""
    if vote_columns is not None:
        if len(vote_columns) != 10:
            raise ValueError(f"vote_columns needs 10 names (scores 1..10), got {len(vote_columns)}")
        _require(path, header, vote_columns)
        return None, vote_columns
    if score_column is not None:
        _require(path, header, [score_column])
        return score_column, None
    detected = next((c for c in ("score", "mean", "mos") if c in header), None)
    if detected is not None:
        return detected, None
    if all(c in header for c in DEFAULT_VOTE_COLUMNS):
        return None, DEFAULT_VOTE_COLUMNS
    return None, None  # unlabelled: records for scoring only


def parse_csv(
    path: Path | str,
    *,
    image_dir: Path | str | None = None,
    path_column: str = "path",
    id_column: str = "id",
    suffix: str = "",
    score_column: str | None = None,
    score_range: tuple[float, float] = (1.0, 10.0),
    vote_columns: Sequence[str] | None = None,
    split_column: str = "split",
    delimiter: str = ",",
    lenient: bool = False,
    check_files: bool = True,
    manifest: Path | str | None = None,
) -> ParsedDataset:
    """Parse a generic CSV with a header row.

    Images come from ``path_column`` (relative paths resolve against ``image_dir``) or, when that column is
    absent, from ``id_column`` as ``image_dir / (id + suffix)``. The label is ``vote_columns`` (10 counts),
    else ``score_column`` mapped from ``score_range`` onto 1-10; left as None, a ``score``/``mean``/``mos``
    column or ``votes_1``..``votes_10`` are used when present, else the records are unlabelled. A
    ``split_column`` present in the header (train/val/test, or training/validation/testing) sets
    ``Record.split``.

    Args:
        path: The CSV file.
        image_dir: Base folder of the images; defaults to the CSV's folder.
    """
    path = Path(path)
    base = Path(image_dir) if image_dir is not None else path.parent
    header, rows = _table(path, None if delimiter == " " else delimiter)
    if path_column not in header and id_column not in header:
        raise ParseError(path, 1, f"needs a {path_column!r} or {id_column!r} column; header has {header}")
    score_col, vote_cols = _label_columns(path, header, score_column, vote_columns)
    if not score_range[0] < score_range[1]:
        raise ValueError(f"score_range must be (low, high) with low < high, got {score_range}")
    mapping = ScaleMapping(*score_range, note="csv")
    has_split = split_column in header

    def build(row: Row) -> Record:
        if path_column in row:
            image = base / row[path_column]  # an absolute path in the file stays absolute
            image_id = row.get(id_column) or row[path_column]
        else:
            image_id = row[id_column]
            image = base / f"{image_id}{suffix}"
        if not image_id:
            raise ValueError("empty id/path")
        split = _split(row[split_column]) if has_split else None
        if vote_cols is not None:
            votes = [_number(row, c) for c in vote_cols]
            check_votes(votes)
            return Record(image_id, image, votes=np.array(votes, dtype=np.int64), split=split)
        mean = _scaled(row, score_col, mapping) if score_col is not None else None
        return Record(image_id, image, mean=mean, split=split)

    report = ParseReport()
    records = _collect(path, header, rows, build, report, lenient, {})
    return _finish("csv", path.parent, records, report, manifest, check_files)


def _score_files(
    files: Sequence[tuple[Path, str]],
    build_for: Callable[[str], RecordBuilder],
    required: Sequence[str],
    report: ParseReport,
    lenient: bool,
    fixed_header: Sequence[str] | None = None,
) -> list[Record]:
    """Parse a dataset's label files (one per official split) with duplicate ids checked across files.

    ``fixed_header`` names the columns of header-less, whitespace-separated files (AADB).
    """
    seen: dict[str, str] = {}
    records: list[Record] = []
    for path, split in files:
        if fixed_header is None:
            header, rows = _table(path)
        else:
            header, rows = list(fixed_header), _read_rows(path, None)
        _require(path, header, required)
        records += _collect(path, header, rows, build_for(split), report, lenient, seen)
    return records


def _file_score_builder(
    file_column: str, score_column: str, mapping: ScaleMapping, images: Path
) -> Callable[[str], RecordBuilder]:
    """Builders for files whose rows name an image file (also its id) and give its score."""

    def build_for(split: str) -> RecordBuilder:
        def build(row: Row) -> Record:
            name = row[file_column]
            return Record(name, images / name, mean=_scaled(row, score_column, mapping), split=split)

        return build

    return build_for


def parse_aadb(
    root: Path | str,
    *,
    image_dir: Path | str | None = None,
    lenient: bool = False,
    check_files: bool = True,
    manifest: Path | str | None = None,
) -> ParsedDataset:
    """AADB (Kong et al., 2016): ``imgListFiles_label/imgList{Train,Validation,Test}Regression_score.txt``.

    Lines are ``<file> <score>`` with score in [0, 1], mapped to ``1 + 9 * s``. Images default to
    ``datasetImages_warp256/`` (else ``datasetImages_originalSize/``) under ``root``.
    """
    root = Path(root)
    label_dir = root / "imgListFiles_label" if (root / "imgListFiles_label").is_dir() else root
    images = (
        Path(image_dir)
        if image_dir
        else _first_dir(root, ["datasetImages_warp256", "datasetImages_originalSize"])
    )
    files = [
        (label_dir / f"imgList{part}Regression_score.txt", split)
        for part, split in (("Train", "train"), ("Validation", "val"), ("Test", "test"))
    ]

    report = ParseReport()
    build_for = _file_score_builder("file", "score", SCALE_MAPPINGS["aadb"], images)
    records = _score_files(
        files, build_for, ["file", "score"], report, lenient, fixed_header=("file", "score")
    )
    return _finish("aadb", root, records, report, manifest, check_files)


def parse_tad66k(
    root: Path | str,
    *,
    image_dir: Path | str | None = None,
    lenient: bool = False,
    check_files: bool = True,
    manifest: Path | str | None = None,
) -> ParsedDataset:
    """TAD66K (He et al., IJCAI 2022): ``labels/merge/{train,test}.csv`` (or in root), ``image,score``.

    Score in [0, 10] mapped to ``1 + 0.9 * s``; a ``val.csv`` next to them is used when present.
    """
    root = Path(root)
    label_dir = root / "labels" / "merge" if (root / "labels" / "merge").is_dir() else root
    images = Path(image_dir) if image_dir else _first_dir(root, ["TAD66K", "images", "imgs"])
    files = [(label_dir / f"{split}.csv", split) for split in ("train", "val", "test")]
    files = [(p, s) for p, s in files if p.is_file() or s != "val"]

    report = ParseReport()
    build_for = _file_score_builder("image", "score", SCALE_MAPPINGS["tad66k"], images)
    records = _score_files(files, build_for, ["image", "score"], report, lenient)
    return _finish("tad66k", root, records, report, manifest, check_files)


def parse_para(
    root: Path | str,
    *,
    image_dir: Path | str | None = None,
    lenient: bool = False,
    check_files: bool = True,
    manifest: Path | str | None = None,
) -> ParsedDataset:
    """PARA (Yang et al., CVPR 2022): ``annotation/PARA-Giaa{Train,Test}.csv``, generic (GIAA) labels.

    Uses ``aestheticScore_mean`` in [1, 5] mapped to ``1 + 2.25 * (s - 1)``; the id is
    ``<sessionId>/<imageName>`` and the image ``imgs/<sessionId>/<imageName>``.
    """
    root = Path(root)
    images = Path(image_dir) if image_dir else root / "imgs"
    mapping = SCALE_MAPPINGS["para"]
    files = [
        (root / "annotation" / f"PARA-Giaa{part}.csv", split)
        for part, split in (("Train", "train"), ("Test", "test"))
    ]

    def build_for(split: str) -> RecordBuilder:
        def build(row: Row) -> Record:
            rel = f"{row['sessionId']}/{row['imageName']}"
            return Record(rel, images / rel, mean=_scaled(row, "aestheticScore_mean", mapping), split=split)

        return build

    report = ParseReport()
    records = _score_files(
        files, build_for, ["sessionId", "imageName", "aestheticScore_mean"], report, lenient
    )
    return _finish("para", root, records, report, manifest, check_files)


def parse_koniq(
    root: Path | str,
    *,
    image_dir: Path | str | None = None,
    lenient: bool = False,
    check_files: bool = True,
    manifest: Path | str | None = None,
) -> ParsedDataset:
    """KonIQ-10k (Hosu et al., 2020): ``koniq10k_distributions_sets.csv`` (``image_name``, ``MOS``, ``set``).

    MOS in [1, 5] mapped to ``1 + 2.25 * (s - 1)``; ``set`` (training/validation/test) gives the split. The
    5-bin rating histogram is not kept: ``Record.votes`` is AVA's 10-bin form. Images are in ``1024x768/``.
    """
    root = Path(root)
    images = Path(image_dir) if image_dir else root / "1024x768"
    path = root / "koniq10k_distributions_sets.csv"
    header, rows = _table(path)
    _require(path, header, ["image_name", "MOS", "set"])
    mapping = SCALE_MAPPINGS["koniq"]

    def build(row: Row) -> Record:
        name = row["image_name"]
        return Record(name, images / name, mean=_scaled(row, "MOS", mapping), split=_split(row["set"]))

    report = ParseReport()
    records = _collect(path, header, rows, build, report, lenient, {})
    return _finish("koniq", root, records, report, manifest, check_files)
