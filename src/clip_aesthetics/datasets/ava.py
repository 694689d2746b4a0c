"""AVA (Murray et al., CVPR 2012): parse ``AVA.txt`` into records, plus the broken-image manifest.

Layout of an ``AVA_dataset`` folder::

    AVA.txt                 15 space-separated columns: row index, image id, 10 vote counts for scores 1..10,
                            2 semantic tag ids (0 = none), challenge id
    tags.txt                "<tag id> <name...>"
    challenges.txt          "<challenge id> <name...>"
    aesthetics_image_lists/generic_test.jpgl   the official test ids, one per line
    images/<id>.jpg

Every copy in circulation misses or corrupts a few dozen images. Missing files are dropped (and counted) when
``check_files`` is on; unreadable ones are listed by a verify step in a manifest (JSON
``{"broken": {"<id>": "<reason>"}}``, by default ``broken_images.json`` in the dataset folder) and
dropped too.
Dropped images are never substituted, so every reported number says which images it covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..constants import N_BINS
from ..fileio import open_text, read_text
from .records import (
    ParsedDataset,
    ParseReport,
    Record,
    bulk_allocation,
    check_votes,
    filter_available,
    load_broken_manifest,
    resolve_manifest,
    write_broken_manifest,
)

__all__ = [  # the manifest helpers live in records.py and are re-exported here, next to their main user
    "TEST_LIST",
    "load_broken_manifest",
    "load_names",
    "parse_ava",
    "read_id_list",
    "resolve_ava_root",
    "write_broken_manifest",
]

AVA_TXT = "AVA.txt"
TAGS_TXT = "tags.txt"
TEST_LIST = Path("aesthetics_image_lists") / "generic_test.jpgl"
IMAGES_DIR = "images"
N_COLUMNS = 15


def resolve_ava_root(root: Path | str) -> Path:
    """The ``AVA_dataset`` folder: ``root`` itself if it holds ``AVA.txt``, else ``root/AVA_dataset``."""
    root = Path(root)
    for candidate in (root, root / "AVA_dataset"):
        if (candidate / AVA_TXT).is_file():
            return candidate
    raise FileNotFoundError(f"no {AVA_TXT} in {root} or {root / 'AVA_dataset'}; pass the AVA_dataset folder")


def load_names(path: Path) -> dict[int, str]:
    """Read an id-to-name file such as ``tags.txt`` (lines ``<id> <name...>``); {} when absent."""
    names: dict[int, str] = {}
    if not path.is_file():
        return names
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        head, _, name = line.strip().partition(" ")
        if head.isdigit():
            names[int(head)] = name.strip()
    return names


def read_id_list(path: Path) -> list[str]:
    """Ids from a ``.jpgl`` list (one id per line, blank lines ignored)."""
    return [s for s in (line.strip() for line in read_text(path).splitlines()) if s]


def _parse_line(fields: list[str], tag_names: Mapping[int, str]) -> tuple[str, list[int], tuple[str, ...]]:
    """Image id, votes and tag names of one AVA.txt line; raises ValueError with the reason."""
    if len(fields) != N_COLUMNS:
        raise ValueError(f"expected {N_COLUMNS} columns, got {len(fields)}")
    try:
        numbers = [int(x) for x in fields[2:]]
    except ValueError:
        raise ValueError(f"non-integer vote, tag or challenge column in {fields[2:]}") from None
    votes = numbers[:10]
    check_votes(votes)
    tag1, tag2 = numbers[10], numbers[11]
    tags = tuple(tag_names.get(t) or str(t) for t in (tag1, tag2) if t) if tag1 or tag2 else ()
    return fields[1], votes, tags


def _read_ava_txt(
    txt: Path, tag_names: Mapping[int, str], report: ParseReport, lenient: bool
) -> tuple[list[tuple[str, tuple[str, ...]]], np.ndarray]:
    """(id, tags) of each valid line and their votes as one read-only (N, 10) int64 array."""
    rows: list[tuple[str, tuple[str, ...]]] = []
    all_votes: list[list[int]] = []
    first_line: dict[str, int] = {}
    with open_text(txt) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            report.n_lines += 1
            try:
                image_id, votes, tags = _parse_line(line.split(), tag_names)
            except ValueError as e:
                report.reject(txt, line_no, str(e), lenient)
                continue
            if image_id in first_line:
                reason = f"duplicate image id {image_id} (first on line {first_line[image_id]})"
                report.reject(txt, line_no, reason, lenient)
                continue
            first_line[image_id] = line_no
            rows.append((image_id, tags))
            all_votes.append(votes)
    # One frozen array for all votes: records hold read-only row views instead of 255k small arrays.
    vote_array = np.array(all_votes, dtype=np.int64).reshape(-1, 10)
    vote_array.setflags(write=False)
    return rows, vote_array


def parse_ava(
    root: Path | str,
    *,
    lenient: bool = False,
    check_files: bool = True,
    manifest: Path | str | None = None,
    images_dir: Path | str | None = None,
) -> ParsedDataset:
    """Parse an AVA folder into labelled records.

    ``Record.split`` is "test" for ids in ``generic_test.jpgl`` and "train" for the rest when that list
    exists (None otherwise), so :func:`~clip_aesthetics.datasets.splits.split_records` can use the official
    split without knowing about AVA.

    Args:
        root: The ``AVA_dataset`` folder or its parent.
        lenient: Skip malformed lines (counted in the report) instead of raising :class:`ParseError`.
        check_files: Drop records whose image file is missing.
        manifest: Broken-image manifest; defaults to ``broken_images.json`` in the folder when present.
        images_dir: Image folder; defaults to ``<root>/images``.
    """
    root = resolve_ava_root(root)
    image_root = Path(images_dir) if images_dir is not None else root / IMAGES_DIR
    tag_names = load_names(root / TAGS_TXT)
    test_path = root / TEST_LIST
    test_ids = set(read_id_list(test_path)) if test_path.is_file() else None
    broken = resolve_manifest(root, manifest)

    report = ParseReport()
    txt = root / AVA_TXT
    with bulk_allocation():
        rows, vote_array = _read_ava_txt(txt, tag_names, report, lenient)
        means = (vote_array @ np.arange(1, N_BINS + 1)) / vote_array.sum(axis=1)
        records = [
            Record(
                image_id,
                image_root / f"{image_id}.jpg",
                vote_array[i],
                mean=float(means[i]),
                tags=tags,
                split=None if test_ids is None else ("test" if image_id in test_ids else "train"),
            )
            for i, (image_id, tags) in enumerate(rows)
        ]
    records = filter_available(records, report, broken, check_files)
    report.n_records = len(records)
    return ParsedDataset(name="ava", root=root, records=records, report=report)
