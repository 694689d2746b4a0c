"""`clip-aesthetics synth-ava` and `datasets verify`: make a test dataset, find a dataset's broken images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MANIFEST, DEFAULT_MAX_PIXELS
from .main import app, console, err_console, on_interrupt, user_errors, warn
from .options import Dataset, DatasetRoot, MaxPixels

datasets_app = typer.Typer(no_args_is_help=True, help="Dataset tools: check that every image can be read.")
app.add_typer(datasets_app, name="datasets")

SHOW_BROKEN = 10


@datasets_app.command("verify")
@on_interrupt("nothing was written (the manifest is written at the end)")
@user_errors
def verify(
    root: DatasetRoot,
    dataset: Dataset = "ava",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help=f"Manifest to write (default: {DEFAULT_MANIFEST} in the dataset folder)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Decoding processes (default: one per core, at most 16).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per decoding batch.")] = 256,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
) -> None:
    """Open every image of a dataset and write the missing and unreadable ones to a manifest.

    Parsers drop the ids in the manifest (counted in their report), so evaluation and training skip them.
    """
    from ..datasets.verify import verify_dataset

    result = verify_dataset(
        dataset, root, batch_size=batch_size, workers=workers, max_pixels=max_pixels, manifest=output
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
    test_fraction: float = typer.Option(
        0.1,
        min=0.0,
        max=1.0,
        help="Fraction of ids in generic_test.jpgl (more on a small set: 5 test images exist besides the "
        "missing ones, so that it can be evaluated).",
    ),
    n_missing: int = typer.Option(2, min=0, help="Test ids whose image is not written (as in real copies)."),
    n_corrupt: int = typer.Option(0, min=0, help="Train images written as truncated JPEGs."),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Write into a non-empty folder."),
) -> None:
    """Write a synthetic AVA-format dataset with planted aesthetic signal (for tests and demos)."""
    from ..datasets import make_synthetic_ava
    from ..datasets.ava import TEST_LIST, read_id_list
    from ..datasets.synthetic import DEMO_READABLE_TEST
    from ..fileio import check_output_folder

    check_output_folder(out)
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
            min_readable_test=DEMO_READABLE_TEST,
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
