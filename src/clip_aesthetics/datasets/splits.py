"""Train/val/test splits of parsed records, kept separate from parsing.

Two kinds:
- **official**: the dataset's own split. For AVA, test = the ids of ``generic_test.jpgl`` that are among the
  (present) records, train = the rest; datasets with split files or columns (AADB, PARA, KonIQ-10k, TAD66K)
  carry it in ``Record.split``. When a dataset has no validation set, ``val_fraction`` of train is carved out
  with a seed (pyiqa's convention for AVA: 5%, seed 123).
- **random**: a seeded split with given (train, val, test) fractions, as in the paper's own study (its test
  set of 25,551 images is 10% of AVA).

Both are reproducible and independent of record order: records are sorted by id before the seeded
permutation, and each split keeps the records' input order. :class:`SplitInfo` describes a split for metrics
files, including a short digest of each split's ids so two runs can confirm they used the same images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ava import TEST_LIST, read_id_list, resolve_ava_root
from .records import ParsedDataset, Record

SPLIT_NAMES = ("train", "val", "test")
Splits = dict[str, list[Record]]


@dataclass
class SplitInfo:
    """How a split was made; ``to_dict``/``to_json`` give a form for metrics files.

    Attributes:
        kind: "official" or "random".
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
            has none); "random" uses :func:`random_split` with ``fractions``.
        fractions: (train, val, test) fractions for the random split.
        val_fraction: Fraction of train carved out as val for official splits without a val set.
        seed: Defaults to 123 for official (pyiqa's AVA convention) and 0 for random splits.

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
    else:
        raise ValueError(f"unknown split kind {kind!r}; use 'official' or 'random'")
    info = SplitInfo(
        kind=kind,
        seed=seed,
        fractions=fracs,
        counts={k: len(v) for k, v in splits.items()},
        digests={k: _ids_digest(v) for k, v in splits.items()},
        note=note,
    )
    return splits, info
