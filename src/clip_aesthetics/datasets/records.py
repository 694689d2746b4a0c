"""The record type every dataset parser produces, parse reports, and the plain image-folder source.

A :class:`Record` is one image: an id, where its file is, and optionally its label (10 vote counts and/or a
mean on the AVA 1-10 scale). Parsers return a :class:`ParsedDataset`: the records plus a
:class:`ParseReport` saying how many lines were read, which were skipped as malformed (lenient mode) and
which records were dropped (listed as broken, or image file missing). Splitting is separate
(:mod:`clip_aesthetics.datasets.splits`); parsers only note a dataset's own official split in
``Record.split``.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..constants import DEFAULT_MANIFEST, IMAGE_EXTENSIONS, N_BINS
from ..fileio import atomic_write_text, read_text

_SCORES = np.arange(1, N_BINS + 1)
# No image anywhere has a billion ratings (AVA's busiest has about 550): a larger count is a corrupt file, and
# counts near 2**63 would overflow the int64 sums behind every mean.
MAX_VOTES = 10**9


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a parser builds many small objects.

    Parsing AVA creates ~10 container objects per line, none of them cyclic; the collector would rescan the
    growing heap over and over: ~45% of the parse time (5.3 s -> 2.9 s for 255k lines, 2-core build box).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_votes(votes: Sequence[float]) -> None:
    """Raise ValueError (with the reason) unless ``votes`` are 10 whole, non-negative, plausible counts."""
    if len(votes) != N_BINS:
        raise ValueError(f"expected {N_BINS} vote counts, got {len(votes)}")
    if min(votes) < 0:
        raise ValueError(f"negative vote count in {list(votes)}")
    total = sum(votes)
    if total > MAX_VOTES:
        raise ValueError(
            f"implausible vote counts {list(votes)}: more than {MAX_VOTES:,} votes for one image"
        )
    if total == 0:
        raise ValueError("zero total votes")
    if not isinstance(total, int) and not all(float(v).is_integer() for v in votes):  # ints need no check
        raise ValueError(f"vote counts must be whole numbers, got {list(votes)}")


class ParseError(ValueError):
    """A malformed line in a label file; the message names the file and the 1-based line number."""

    def __init__(self, path: Path | str, line_no: int, reason: str):
        super().__init__(f"{path}:{line_no}: {reason}")
        self.path = Path(path)
        self.line_no = line_no
        self.reason = reason


# eq=False: the votes array would make the generated __eq__ ambiguous; records compare by identity.
@dataclass(frozen=True, eq=False)
class Record:
    """One image of a dataset.

    Attributes:
        id: Dataset-unique image id (AVA: the numeric id as a string; folders: the relative path).
        path: Image file, or None when the record only carries a label.
        votes: 10 non-negative vote counts for the scores 1..10 (read-only int64 array), if known.
        mean: Mean score on the 1-10 scale; computed from ``votes`` when not given.
        tags: Free-form tags (AVA: semantic tag names).
        split: The dataset's own split ("train", "val" or "test") when it defines one.
    """

    id: str
    path: Path | None
    votes: np.ndarray | None = None
    mean: float | None = None
    tags: tuple[str, ...] = ()
    split: str | None = None

    def __post_init__(self) -> None:
        if self.votes is None:
            return
        votes = self.votes
        # A read-only int64 array is kept as is (parsers pass rows of one frozen array: no per-record copy);
        # anything else is copied so callers cannot mutate a record through their own reference.
        if not (isinstance(votes, np.ndarray) and votes.dtype == np.int64 and not votes.flags.writeable):
            votes = np.array(votes, dtype=np.int64)
            votes.setflags(write=False)
            object.__setattr__(self, "votes", votes)
        if votes.shape != (N_BINS,):
            raise ValueError(f"record {self.id}: votes must have {N_BINS} counts, got shape {votes.shape}")
        total = int(votes.sum())
        if total <= 0 or votes.min() < 0 or votes.max() > MAX_VOTES or total > MAX_VOTES:
            raise ValueError(
                f"record {self.id}: votes must be non-negative with a positive total of at most {MAX_VOTES:,}"
            )
        if self.mean is None:
            object.__setattr__(self, "mean", float(votes @ _SCORES) / total)

    @property
    def distribution(self) -> np.ndarray | None:
        """Votes normalised to probabilities, or None without votes."""
        if self.votes is None:
            return None
        return self.votes / self.votes.sum()

    @property
    def has_label(self) -> bool:
        """Whether the record carries a ground-truth mean score."""
        return self.mean is not None


class SkippedLine(NamedTuple):
    """A malformed line skipped in lenient mode."""

    path: str
    line_no: int
    reason: str


class DroppedRecord(NamedTuple):
    """A well-formed record left out because its image is known broken or missing."""

    id: str
    reason: str


@dataclass
class ParseReport:
    """What a parser read and what it left out.

    Attributes:
        n_lines: Data lines read (headers and blank lines not counted).
        n_records: Records returned.
        skipped: Malformed lines skipped (lenient mode only; strict mode raises instead).
        dropped: Records dropped because they are listed as broken or their image file is missing.
    """

    n_lines: int = 0
    n_records: int = 0
    skipped: list[SkippedLine] = field(default_factory=list)
    dropped: list[DroppedRecord] = field(default_factory=list)

    def reject(self, path: Path | str, line_no: int, reason: str, lenient: bool) -> None:
        """Record a malformed line: raise :class:`ParseError` when strict, remember it when lenient."""
        if not lenient:
            raise ParseError(path, line_no, reason)
        self.skipped.append(SkippedLine(str(path), line_no, reason))

    def summary(self) -> str:
        """One line for logs and CLI output."""
        return (
            f"{self.n_records} records from {self.n_lines} lines; "
            f"{len(self.skipped)} malformed lines skipped, {len(self.dropped)} records dropped"
        )


@dataclass
class ParsedDataset:
    """The result of parsing a dataset: records, the report, and where it came from."""

    name: str
    root: Path
    records: list[Record]
    report: ParseReport

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labelled(self) -> bool:
        """True when every record has a ground-truth mean (and there is at least one record)."""
        return bool(self.records) and all(r.has_label for r in self.records)


def load_broken_manifest(path: Path | str) -> dict[str, str]:
    """Read a manifest of unreadable or missing images as ``{id: reason}``.

    Accepts the JSON form written by :func:`write_broken_manifest` (``{"broken": {id: reason}}``) and, for
    hand-made lists, plain text with one id per line optionally followed by a reason.
    """
    text = read_text(path)
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        broken = data.get("broken")
        if not isinstance(broken, dict):
            raise ValueError(f"{path}: expected a JSON object with a 'broken' mapping of id to reason")
        return {str(k): str(v) for k, v in broken.items()}
    manifest: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(maxsplit=1)
        if parts and not parts[0].startswith("#"):
            manifest[parts[0]] = parts[1].strip() if len(parts) > 1 else "listed as broken"
    return manifest


def write_broken_manifest(path: Path | str, broken: Mapping[str, str]) -> None:
    """Write ``{"broken": {id: reason}}`` as JSON (sorted ids), atomically: readers never see half a file."""
    path = Path(path)
    atomic_write_text(path, json.dumps({"broken": dict(sorted(broken.items()))}, indent=1) + "\n")


def resolve_manifest(root: Path, manifest: Path | str | None) -> dict[str, str]:
    """The broken-image manifest of a dataset: ``manifest`` if given (must exist), else
    ``root/broken_images.json`` when present, else empty."""
    if manifest is not None:
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"broken-image manifest not found: {manifest}")
        return load_broken_manifest(manifest)
    default = root / DEFAULT_MANIFEST
    return load_broken_manifest(default) if default.is_file() else {}


def _file_exists(path: Path, listings: dict[str, frozenset[str]]) -> bool:
    """Whether ``path`` exists, answered from one cached ``os.scandir`` listing per directory."""
    # Plain string slicing and keys: Path.parent and Path hashing cost more than the check itself.
    text = os.fspath(path)
    cut = text.rfind(os.sep)
    directory, name = (text[:cut] or os.sep, text[cut + 1 :]) if cut >= 0 else (".", text)
    names = listings.get(directory)
    if names is None:
        try:
            with os.scandir(directory) as it:
                names = frozenset(entry.name for entry in it)
        except (FileNotFoundError, NotADirectoryError):
            names = frozenset()
        listings[directory] = names
    return name in names


def filter_available(
    records: Iterable[Record],
    report: ParseReport,
    broken: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> list[Record]:
    """Drop records listed as broken or (with ``check_files``) whose image file does not exist.

    Dropped records are appended to ``report.dropped`` with the reason; nothing is substituted. File checks
    list each image directory once with ``os.scandir`` rather than calling ``stat`` per image, which keeps a
    check of AVA's 255k images well under a second on a local disk.
    """
    broken = broken or {}
    listings: dict[str, frozenset[str]] = {}
    kept: list[Record] = []
    with bulk_allocation():
        for rec in records:
            if rec.id in broken:
                report.dropped.append(DroppedRecord(rec.id, f"broken: {broken[rec.id]}"))
            elif check_files and rec.path is not None and not _file_exists(rec.path, listings):
                report.dropped.append(DroppedRecord(rec.id, f"missing file: {rec.path}"))
            else:
                kept.append(rec)
    return kept


def _walk_images(root: Path, extensions: frozenset[str]) -> list[Path]:
    """All image files under ``root``, following directory symlinks but never into a loop."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # reached the same directory again through a symlink: do not descend
            dirnames.clear()
            continue
        seen_dirs.add(key)
        found.extend(Path(dirpath, f) for f in filenames if Path(f).suffix.lower() in extensions)
    return found


def scan_folder(root: Path | str, extensions: Sequence[str] | None = None) -> ParsedDataset:
    """Unlabelled records for every image file found recursively under ``root``.

    The id is the path relative to ``root`` (POSIX separators); records are sorted by id so the order does
    not depend on the file system.

    Args:
        root: Folder to scan.
        extensions: File suffixes to accept (case-insensitive); defaults to :data:`IMAGE_EXTENSIONS`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    exts = frozenset(
        e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions or IMAGE_EXTENSIONS
    )
    paths = _walk_images(root, exts)
    records = sorted((Record(id=p.relative_to(root).as_posix(), path=p) for p in paths), key=lambda r: r.id)
    report = ParseReport(n_lines=len(records), n_records=len(records))
    return ParsedDataset(name="folder", root=root, records=records, report=report)
