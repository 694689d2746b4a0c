"""`clip-aesthetics synth-ava` and `datasets verify`: make a test dataset, find a dataset's broken images."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import typer

from ..backbones import PreprocessConfig
from ..datasets import ParsedDataset, load_dataset, make_synthetic_ava, write_broken_manifest
from ..datasets.ava import TEST_LIST, read_id_list
from ..datasets.records import DEFAULT_MANIFEST
from ..evaluation import EVAL_DATASETS
from ..fileio import check_writable
from ..images import DEFAULT_MAX_PIXELS, iter_batches
from .app import app, console, err_console, user_errors, warn

datasets_app = typer.Typer(no_args_is_help=True, help="Dataset tools: check that every image can be read.")
app.add_typer(datasets_app, name="datasets")

# Only readability matters: a tiny target lets JPEGs decode at 1/8 scale (PIL draft), which still reads
# the whole entropy-coded stream, so truncated and corrupt files fail exactly as at full size.
VERIFY_PREPROCESS = PreprocessConfig(size=16, resize_size=16, interpolation="nearest")
SHOW_BROKEN = 10


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
        dataset: One of :data:`~clip_aesthetics.evaluation.EVAL_DATASETS`.
        root: The dataset folder (``csv``: the CSV file).
        manifest: Where to write the manifest; default ``broken_images.json`` in the dataset folder.
        batch_size, workers, max_pixels, progress: see :func:`~clip_aesthetics.images.iter_batches`.
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


@datasets_app.command("verify")
@user_errors
def verify(
    root: Path = typer.Argument(..., help="Dataset folder (for --dataset csv: the CSV file)."),
    dataset: str = typer.Option("ava", "--dataset", "-d", help=f"One of {', '.join(EVAL_DATASETS)}."),
    manifest: Path = typer.Option(
        None, help=f"Where to write the manifest (default: {DEFAULT_MANIFEST} in the dataset folder)."
    ),
    workers: int = typer.Option(None, min=0, help="Decoding processes (default: one per core, at most 16)."),
    batch_size: int = typer.Option(256, min=1, help="Images per decoding batch."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, min=1, help="Larger images count as unreadable."),
) -> None:
    """Open every image of a dataset and write the missing and unreadable ones to a manifest.

    Parsers drop the ids in the manifest (counted in their report), so evaluation and training skip them.
    """
    result = verify_dataset(
        dataset, root, batch_size=batch_size, workers=workers, max_pixels=max_pixels, manifest=manifest
    )
    for image_id, reason in list(sorted(result.broken.items()))[:SHOW_BROKEN]:
        warn("broken", f"{image_id}: {reason}")
    if len(result.broken) > SHOW_BROKEN:
        err_console.print(
            f"... and {len(result.broken) - SHOW_BROKEN} more (see the manifest)", highlight=False
        )
    console.print(
        f"checked {result.n_checked} images: {result.n_checked - len(result.broken)} ok, "
        f"{result.n_missing} missing, {result.n_unreadable} unreadable; "
        f"wrote {len(result.broken)} ids to {result.manifest}",
        highlight=False,
    )


@app.command("synth-ava")
@user_errors
def synth_ava(
    out: Path = typer.Argument(..., help="Folder to create; it plays the role of AVA_dataset."),
    n: int = typer.Option(200, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, help="Seed of everything random."),
    size: int = typer.Option(128, min=16, help="Longer image side in pixels."),
    raters: int = typer.Option(200, min=1, help="Mean number of voters per image."),
    test_fraction: float = typer.Option(0.1, min=0.0, max=1.0, help="Fraction of ids in generic_test.jpgl."),
    n_missing: int = typer.Option(2, min=0, help="Test ids whose image is not written (as in real copies)."),
    n_corrupt: int = typer.Option(0, min=0, help="Train images written as truncated JPEGs."),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Write into a non-empty folder."),
) -> None:
    """Write a synthetic AVA-format dataset with planted aesthetic signal (for tests and demos)."""
    try:
        root = make_synthetic_ava(
            out,
            n,
            seed,
            size,
            raters,
            test_fraction=test_fraction,
            n_missing=n_missing,
            n_corrupt=n_corrupt,
            exist_ok=exist_ok,
        )
    except FileExistsError as exc:  # not a FileNotFoundError, so user_errors would not catch it
        raise ValueError(str(exc)) from None
    n_test = len(read_id_list(root / TEST_LIST))
    missing = min(n_missing, n_test)
    console.print(
        f"wrote a synthetic AVA dataset to {root}: {n} images in AVA.txt ({n - missing} image files, "
        f"{missing} missing, {n_corrupt} corrupt), {n_test} test ids in generic_test.jpgl, "
        f"planted properties in planted.csv",
        highlight=False,
    )
