"""Dataset sources: parsers that turn label files or folders into :class:`Record` lists, and splits.

``load_dataset(name, root, **options)`` is the one way in; ``DATASETS`` maps each name to its parser:

- ``ava``: an ``AVA_dataset`` folder (:func:`parse_ava`)
- ``csv``: a CSV file with paths or ids and optional scores/votes (:func:`parse_csv`; ``root`` is the file)
- ``aadb``, ``tad66k``, ``para``, ``koniq``: those datasets' folders (:mod:`.labels`)
- ``folder``: every image under a folder, unlabelled (:func:`scan_folder`)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .ava import parse_ava, resolve_ava_root
from .labels import SCALE_MAPPINGS, parse_aadb, parse_csv, parse_koniq, parse_para, parse_tad66k
from .records import (
    IMAGE_EXTENSIONS,
    DroppedRecord,
    ParsedDataset,
    ParseError,
    ParseReport,
    Record,
    SkippedLine,
    filter_available,
    load_broken_manifest,
    scan_folder,
    write_broken_manifest,
)
from .splits import (
    AUTHORS_FRACTIONS,
    AUTHORS_SEED,
    SplitInfo,
    Splits,
    file_split,
    official_split,
    random_split,
    read_split_file,
    split_kind,
    split_records,
)
from .synthetic import make_synthetic_ava

DATASETS: dict[str, Callable[..., ParsedDataset]] = {
    "ava": parse_ava,
    "csv": parse_csv,
    "aadb": parse_aadb,
    "tad66k": parse_tad66k,
    "para": parse_para,
    "koniq": parse_koniq,
    "folder": scan_folder,
}


def load_dataset(name: str, root: Path | str, **options: Any) -> ParsedDataset:
    """Parse a dataset by registry name.

    Args:
        name: One of :data:`DATASETS`.
        root: The dataset folder (for ``csv``: the CSV file).
        **options: Keyword options of that parser, e.g. ``lenient=True`` or ``check_files=False``.
    """
    try:
        parser = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None
    return parser(root, **options)


def load_and_split(
    name: str,
    root: Path | str,
    kind: str = "official",
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    val_fraction: float = 0.05,
    seed: int | None = None,
    manifest: Path | str | None = None,
) -> tuple[ParsedDataset, Splits, SplitInfo]:
    """Parse a dataset (dropping broken and missing images) and split it: how every command reads one.

    Args:
        name, root: see :func:`load_dataset`.
        kind, fractions, val_fraction, seed: see :func:`split_records` (``--split-kind``, ``--split-seed``;
            ``file:PATH`` for the authors' split files, see :func:`split_kind`).
        manifest: Broken-image manifest; by default ``broken_images.json`` in the dataset folder if present.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    if not Path(root).exists():
        raise FileNotFoundError(f"dataset not found: {root}")
    parsed = load_dataset(name, root, **({} if manifest is None else {"manifest": manifest}))
    splits, info = split_records(parsed, kind, fractions=fractions, val_fraction=val_fraction, seed=seed)
    return parsed, splits, info


__all__ = [
    "AUTHORS_FRACTIONS",
    "AUTHORS_SEED",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "SCALE_MAPPINGS",
    "DroppedRecord",
    "ParseError",
    "ParseReport",
    "ParsedDataset",
    "Record",
    "SkippedLine",
    "SplitInfo",
    "file_split",
    "filter_available",
    "load_and_split",
    "load_broken_manifest",
    "load_dataset",
    "make_synthetic_ava",
    "official_split",
    "parse_aadb",
    "parse_ava",
    "parse_csv",
    "parse_koniq",
    "parse_para",
    "parse_tad66k",
    "random_split",
    "read_split_file",
    "resolve_ava_root",
    "scan_folder",
    "split_kind",
    "split_records",
    "write_broken_manifest",
]
