"""Train/val/test splits of parsed records, kept separate from parsing.

Two kinds:
- **official**: the dataset's own split. For AVA, test = the ids of ``generic_test.jpgl`` that are among the
  (present) records, train = the rest; datasets with split files or columns (AADB, PARA, KonIQ-10k, TAD66K)
  carry it in ``Record.split``. When a dataset has no validation set, ``val_fraction`` of train is carved out
  with a seed (pyiqa's convention for AVA: 5%, seed 123).
- **random**: a seeded split with given (train, val, test) fractions, as in the paper's own study (its test
  set of 25,551 images is 10% of AVA; :data:`AUTHORS_FRACTIONS` and :data:`AUTHORS_SEED` are its proportions).
- **file** (``file:PATH``): the authors' split files (:func:`read_split_file`): a folder holding
  ``AVA_test.csv`` and ``AVA_train_split.csv``/``AVA_val_split.csv`` (or only ``AVA_train.csv``, validation
  then carved out of it as the authors did: 20%, seed 42), or one file listing the test ids.

Both are reproducible and independent of record order: records are sorted by id before the seeded
permutation, and each split keeps the records' input order. :class:`SplitInfo` describes a split for metrics
files, including a short digest of each split's ids so two runs can confirm they used the same images.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import open_text
from .ava import TEST_LIST, read_id_list, resolve_ava_root
from .records import ParsedDataset, ParseError, Record

SPLIT_NAMES = ("train", "val", "test")
Splits = dict[str, list[Record]]

# The authors' split (shiemn/CLIP-knows-IA): test = 10% of AVA (25,551 images), validation = 20% of the rest,
# seed 42. Without their files, a random split with these proportions is the closest one can get.
AUTHORS_SEED = 42
AUTHORS_VAL_OF_TRAIN = 0.2
AUTHORS_FRACTIONS = (0.72, 0.18, 0.1)
# Their split files, in a folder: test, the whole training file, and its train/validation parts.
AUTHORS_FILES = {
    "test": "AVA_test.csv",
    "train_all": "AVA_train.csv",
    "train": "AVA_train_split.csv",
    "val": "AVA_val_split.csv",
}
FILE_KIND = "file:"


@dataclass
class SplitInfo:
    """How a split was made; ``to_dict``/``to_json`` give a form for metrics files.

    Attributes:
        kind: "official", "random" or "file:PATH".
        seed: Seed of the permutation (random split, or the val carve-out of an official split).
        fractions: Requested fractions: train/val/test for random; {"val": f} when val was carved from train.
        counts: Number of records per split.
        digests: First 16 hex digits of the SHA-256 of each split's sorted ids, newline-joined.
        note: One human-readable sentence on where the split came from.
    """

    kind: str
    seed: int
    fractions: dict[str, float]
    counts: dict[str, int]
    digests: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    def to_json(self) -> str:
        """Compact JSON text."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def _ids_digest(records: Sequence[Record]) -> str:
    joined = "\n".join(sorted(r.id for r in records)).encode("utf-8")
    return hashlib.sha256(joined).hexdigest()[:16]


def _seeded_order(records: Sequence[Record], seed: int) -> np.ndarray:
    """Indices of ``records`` in a seeded random order that depends only on the ids, not on input order."""
    by_id = np.array(sorted(range(len(records)), key=lambda i: records[i].id), dtype=np.int64)
    return by_id[np.random.default_rng(seed).permutation(len(records))]


def _take(records: Sequence[Record], chosen: set[int]) -> list[Record]:
    return [r for i, r in enumerate(records) if i in chosen]


def _carve_val(train: Sequence[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = _seeded_order(train, seed)
    val_idx = set(order[: round(val_fraction * len(train))].tolist())
    return _take(train, set(range(len(train))) - val_idx), _take(train, val_idx)


def official_split(
    records: Sequence[Record], root: Path | str, val_fraction: float = 0.05, seed: int = 123
) -> Splits:
    """AVA's official split: test = ids of ``generic_test.jpgl`` among ``records``; val carved from the rest.

    Args:
        records: Parsed (and already filtered) records; listed ids absent from them are simply not in test.
        root: The ``AVA_dataset`` folder (or its parent), or the ``.jpgl`` file itself.
        val_fraction: Fraction of the non-test records moved to val.
        seed: Seed of the val carve-out.
    """
    root = Path(root)
    jpgl = root if root.is_file() else resolve_ava_root(root) / TEST_LIST
    test_ids = set(read_id_list(jpgl))
    test = [r for r in records if r.id in test_ids]
    train, val = _carve_val([r for r in records if r.id not in test_ids], val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def random_split(
    records: Sequence[Record], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Splits:
    """A seeded random split into disjoint train/val/test lists that together hold every record.

    Val and test get ``round(fraction * n)`` records each, train the remainder.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    n = len(records)
    n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
    if n_val + n_test > n:  # both rounded up on a tiny set
        n_val = n - n_test
    order = _seeded_order(records, seed).tolist()
    test_idx, val_idx = set(order[:n_test]), set(order[n_test : n_test + n_val])
    train_idx = set(range(n)) - test_idx - val_idx
    return {
        "train": _take(records, train_idx),
        "val": _take(records, val_idx),
        "test": _take(records, test_idx),
    }


def _from_record_splits(records: Sequence[Record], val_fraction: float, seed: int) -> tuple[Splits, bool]:
    missing = [r for r in records if r.split not in SPLIT_NAMES]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(records)} records have no official split (e.g. id {missing[0].id!r}); "
            "this dataset defines none, use kind='random'"
        )
    splits = {name: [r for r in records if r.split == name] for name in SPLIT_NAMES}
    carve = not splits["val"]
    if carve:
        splits["train"], splits["val"] = _carve_val(splits["train"], val_fraction, seed)
    return splits, carve


def split_kind(kind: str, split_file: str | Path | None = None) -> str:
    """The split kind commands pass on: ``--split-kind file --split-file PATH`` becomes ``file:PATH``."""
    if kind == "file":
        if split_file is None:
            raise ValueError(
                "--split-kind file needs --split-file PATH (a folder of the authors' CSVs or a file)"
            )
        return FILE_KIND + str(Path(split_file).expanduser().resolve())
    if split_file is not None:
        raise ValueError(f"--split-file is read with --split-kind file, not {kind!r}")
    return kind


def _split_file_ids(path: Path) -> list[str]:
    """Image ids of one of the authors' split files: an id, then ten normalised vote fractions, per line.

    Separators may be commas or whitespace and a header line is skipped; an id may carry ``.jpg``. A line
    that is neither is an error naming the file and line: a wrong file must not silently shrink a split.
    """
    ids: list[str] = []
    first = True
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = [f.strip("\"'") for f in re.split(r"[,\s]+", line.strip()) if f]
            if not fields:
                continue
            header = first and not all(_is_number(f) for f in fields)  # e.g. "image_id,1,...,10"
            first = False
            reason = _fractions_problem(fields[1:])
            if reason is None:
                ids.append(re.sub(r"\.jpe?g$", "", fields[0], flags=re.IGNORECASE))
            elif not header:
                raise ParseError(path, line_no, f"expected an image id and ten vote fractions: {reason}")
    if not ids:
        raise ValueError(f"{path}: no image ids (expected lines of an id and ten vote fractions)")
    return ids


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fractions_problem(fields: list[str]) -> str | None:
    if len(fields) != 10:
        return f"{len(fields)} values after the id, not 10"
    if not all(_is_number(f) for f in fields):
        return "a value is not a number"
    values = np.array([float(f) for f in fields])
    if not np.isfinite(values).all() or (values < 0).any() or abs(values.sum() - 1.0) > 1e-3:
        return f"the fractions sum to {values.sum():.4g}, not 1"
    return None


def read_split_file(path: str | Path) -> tuple[dict[str, list[str]], str]:
    """Ids per split from the authors' files, and a note on where they came from.

    ``path`` is a folder with ``AVA_test.csv`` and ``AVA_train_split.csv`` + ``AVA_val_split.csv`` (their
    exact split), or with ``AVA_test.csv`` + ``AVA_train.csv`` (validation to be carved out of train), or
    a single file listing the test ids (train: every other record). The ids of
    each file must not overlap another's.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file not found: {path}")
    if path.is_file():
        return {"test": _split_file_ids(path)}, f"test ids from {path.name}; train: every other record"
    files = {name: path / file for name, file in AUTHORS_FILES.items()}
    if not files["test"].is_file():
        raise FileNotFoundError(f"{path} has no {AUTHORS_FILES['test']} (the authors' test split)")
    ids = {"test": _split_file_ids(files["test"])}
    if files["train"].is_file() and files["val"].is_file():
        ids.update(train=_split_file_ids(files["train"]), val=_split_file_ids(files["val"]))
        note = f"the authors' split files in {path}"
    elif files["train_all"].is_file():
        ids["train_all"] = _split_file_ids(files["train_all"])
        note = f"the authors' train/test files in {path}; val carved out of train"
    else:
        raise FileNotFoundError(
            f"{path} has {AUTHORS_FILES['test']} but neither {AUTHORS_FILES['train']} + "
            f"{AUTHORS_FILES['val']} nor {AUTHORS_FILES['train_all']}"
        )
    _check_disjoint(ids, path)
    return ids, note


def _check_disjoint(ids: dict[str, list[str]], path: Path) -> None:
    seen: dict[str, str] = {}
    for name, members in ids.items():
        for image_id in members:
            if seen.setdefault(image_id, name) != name:
                raise ValueError(
                    f"{path}: image {image_id!r} is in both the {seen[image_id]} and {name} files"
                )


def file_split(
    records: Sequence[Record], path: str | Path, seed: int | None = None
) -> tuple[Splits, dict[str, float], int, str]:
    """Split records by the authors' files; returns the splits, carved fractions, the seed and a note.

    Listed ids absent from ``records`` (missing or broken images) are left out and counted in the note;
    records listed in no file belong to no split.
    """
    ids, note = read_split_file(path)
    seed = AUTHORS_SEED if seed is None else seed
    by_id = {r.id: r for r in records}
    listed = {name: [by_id[i] for i in members if i in by_id] for name, members in ids.items()}
    missing = sum(len(members) for members in ids.values()) - sum(len(m) for m in listed.values())
    test = listed["test"]
    if "val" in listed:
        splits, fractions = {"train": listed["train"], "val": listed["val"], "test": test}, {}
    else:
        test_ids = {r.id for r in test}
        listed_train = listed.get("train_all")
        train = [r for r in records if r.id not in test_ids] if listed_train is None else listed_train
        train, val = _carve_val(train, AUTHORS_VAL_OF_TRAIN, seed)
        splits, fractions = {"train": train, "val": val, "test": test}, {"val": AUTHORS_VAL_OF_TRAIN}
        note += f" ({AUTHORS_VAL_OF_TRAIN:g} of train, seed {seed})"
    if missing:
        note += f"; {missing} listed ids are not among the dataset's records"
    return splits, fractions, seed, note


def split_records(
    source: ParsedDataset | Sequence[Record],
    kind: str = "official",
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    val_fraction: float = 0.05,
    seed: int | None = None,
) -> tuple[Splits, SplitInfo]:
    """Split parsed records and describe the split.

    Args:
        source: A parsed dataset or its records.
        kind: "official" uses ``Record.split`` set by the parser (val carved out of train when the dataset
            has none); "random" uses :func:`random_split` with ``fractions``; "file:PATH" the authors' split
            files (:func:`file_split`).
        fractions: (train, val, test) fractions for the random split.
        val_fraction: Fraction of train carved out as val for official splits without a val set.
        seed: Defaults to 123 for official (pyiqa's AVA convention), 0 for random splits and 42 (the
            authors') for the validation carved out of a split file's train part.

    Returns:
        The splits {"train", "val", "test"} and a :class:`SplitInfo`.
    """
    records = source.records if isinstance(source, ParsedDataset) else source
    if kind == "official":
        seed = 123 if seed is None else seed
        splits, carved = _from_record_splits(records, val_fraction, seed)
        fracs = {"val": val_fraction} if carved else {}
        note = "dataset's own split" + (f"; val = {val_fraction:g} of train, seed {seed}" if carved else "")
    elif kind == "random":
        seed = 0 if seed is None else seed
        splits = random_split(records, fractions, seed)
        fracs = dict(zip(SPLIT_NAMES, map(float, fractions), strict=True))
        note = f"random split {fractions}, seed {seed}"
    elif kind.startswith(FILE_KIND):
        splits, fracs, seed, note = file_split(records, kind.removeprefix(FILE_KIND), seed)
    else:
        raise ValueError(f"unknown split kind {kind!r}; use 'official', 'random' or 'file' (--split-file)")
    info = SplitInfo(
        kind=kind,
        seed=seed,
        fractions=fracs,
        counts={k: len(v) for k, v in splits.items()},
        digests={k: _ids_digest(v) for k, v in splits.items()},
        note=note,
    )
    return splits, info
