"""Check that every image of a dataset can be read: the missing and unreadable ones, with reasons.

`clip-aesthetics datasets verify` writes what :func:`verify_dataset` finds to a broken-image manifest, which
every parser then applies.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..constants import DEFAULT_MANIFEST, DEFAULT_MAX_PIXELS, EVAL_DATASETS
from ..encoders.backbones import PreprocessConfig
from ..fileio import check_writable
from ..pipeline.images import iter_batches
from . import ParsedDataset, load_dataset, write_broken_manifest

# Only readability matters: a tiny target lets JPEGs decode at 1/8 scale (PIL draft), which still reads
# the whole entropy-coded stream, so truncated and corrupt files fail exactly as at full size.
VERIFY_PREPROCESS = PreprocessConfig(size=16, resize_size=16, interpolation="nearest")


@dataclass
class VerifyResult:
    """What a verification found: every image of a dataset checked, the broken ones with reasons."""

    dataset: ParsedDataset
    n_checked: int
    n_missing: int
    broken: dict[str, str]
    manifest: Path

    @property
    def n_unreadable(self) -> int:
        return len(self.broken) - self.n_missing


def verify_dataset(
    dataset: str,
    root: Path | str,
    *,
    batch_size: int = 256,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    manifest: Path | str | None = None,
) -> VerifyResult:
    """Open every image of a dataset in parallel, collect the missing and unreadable ones, write the manifest.

    Any existing manifest is ignored, so a re-downloaded image leaves the list on the next run. Where the
    manifest goes is checked for writability first: a read-only dataset fails at once, not after every
    image was opened.

    Args:
        dataset: One of :data:`~clip_aesthetics.constants.EVAL_DATASETS`.
        root: The dataset folder (``csv``: the CSV file).
        manifest: Where to write the manifest; default ``broken_images.json`` in the dataset folder.
        batch_size, workers, max_pixels, progress: see :func:`~clip_aesthetics.pipeline.images.iter_batches`.
    """
    if dataset not in EVAL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(EVAL_DATASETS)}")
    if not Path(root).exists():
        raise FileNotFoundError(f"dataset not found: {root}")
    if workers is None:  # decoding is the whole job here, not a model's helper: use every core
        workers = min(16, os.cpu_count() or 1)
    # Parsers always apply a manifest found in the dataset folder; an explicit empty one overrides it.
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "none.json"
        write_broken_manifest(empty, {})
        parsed = load_dataset(dataset, root, manifest=empty)
    target = check_writable(manifest if manifest is not None else parsed.root / DEFAULT_MANIFEST)
    broken = {d.id: d.reason for d in parsed.report.dropped}  # missing files, found by the parser's scan
    n_missing = len(broken)
    records = [r for r in parsed.records if r.path is not None]
    for batch in iter_batches(
        [r.path for r in records],
        VERIFY_PREPROCESS,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        progress=progress,
        description="verifying",
    ):
        broken.update((records[i].id, reason) for i, reason in batch.errors)
    write_broken_manifest(target, broken)
    return VerifyResult(parsed, len(records) + n_missing, n_missing, broken, target)
