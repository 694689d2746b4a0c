"""Shard mode of `clip-aesthetics score` (WebDataset / Parquet shards -> a score folder) and `filter`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import typer

from .main import EXIT_INTERRUPTED, EXIT_NOTHING_DONE, app, console, fail, user_errors, warn


def is_folder_output(output: str | None) -> bool:
    """``--output scores/`` (a trailing slash, an existing folder, a URL ending in /): a score folder."""
    return output is not None and (output.endswith(("/", os.sep)) or Path(output).is_dir())


def wants_shard_mode(paths: list[str], output: str | None) -> bool:
    """Shard inputs (.tar, .parquet, brace patterns, URLs) or a folder output switch `score` to shards."""
    from ..shards.readers import is_shard_input

    return is_folder_output(output) or any(is_shard_input(p) for p in paths)


def score_shards_command(paths: list[str], output: str | None, recipe, options, overwrite: bool) -> None:
    """Run shard scoring for `score` and print its summary; exit 1 when shards failed or were torn, or
    nothing was read; 130 when interrupted (Ctrl-C or SIGTERM), saying how many shards were kept."""
    from ..shards import score_shards
    from ..shards.readers import is_shard_input
    from ..shards.run import ShardRunInterrupted

    if output is None or not is_folder_output(output):
        raise ValueError("shard inputs are scored into a folder: give --output FOLDER/ (with a trailing /)")
    others = [p for p in paths if not is_shard_input(p)]
    if others:
        raise ValueError(f"a score folder takes shards (.tar, .parquet, URLs), not {others[0]}")
    try:
        with _sigterm_as_interrupt():  # a stopped job ends like Ctrl-C: finished shards are kept
            report = score_shards(paths, output, recipe, options, overwrite=overwrite)
    except ShardRunInterrupted as exc:
        kept = len(exc.report.written) + exc.report.skipped
        raise fail(
            f"interrupted: {len(exc.report.written)} shards written this run, {kept} done in {output}; "
            "rerun the same command to score the rest",
            EXIT_INTERRUPTED,
        ) from None
    _report(report)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(report) -> None:
    manifest = report.manifest
    for failure in report.failed:
        warn("failed shard", f"{failure['shard']}: {failure['error']}")
    for torn in manifest["shards"]["torn"]:
        warn("torn shard", f"{torn['shard']}: {torn['error']}")
    for url in report.changed:
        warn("rescored", f"{url} changed since it was scored")
    keys = manifest["keys"]
    if keys["null"] or keys["duplicate"]:
        warn("keys", f"{keys['null']} samples without a key, {keys['duplicate']} repeated keys (see pos)")
    console.print(
        f"shards: {len(report.written)} written, {report.skipped} already done, {len(report.failed)} failed; "
        f"samples: {manifest['scored']} scored, {manifest['unreadable']} unreadable; "
        f"{report.seconds:.1f} s, {report.images_per_second:.1f} images/s this run; "
        f"wrote {report.manifest_path}",
        highlight=False,
        soft_wrap=True,
    )
    if report.failed:
        raise fail(f"{len(report.failed)} shards could not be read; rerun to retry them", EXIT_NOTHING_DONE)
    if manifest["shards"]["torn"]:
        raise fail(
            f"{len(manifest['shards']['torn'])} shards are torn (rows up to the tear kept); fetch them again "
            "and rerun",
            EXIT_NOTHING_DONE,
        )
    if manifest["samples"] and not manifest["scored"]:
        raise fail(f"none of the {manifest['samples']} samples could be read", EXIT_NOTHING_DONE)


@app.command("filter")
@user_errors
def filter_command(
    scores: str = typer.Argument(..., help="A score folder written by `score ... --output DIR/`."),
    output: str = typer.Option(
        ...,
        "--output",
        "-o",
        help="Selected keys: .parquet, .csv, .jsonl, .txt; or a FOLDER/ for new shards (replaced whole).",
    ),
    min_score: float = typer.Option(None, help="Keep samples scoring at least this."),
    top_percent: float = typer.Option(None, help="Keep the best X percent (0 < X <= 100)."),
) -> None:
    """Select the best samples of a score folder: their keys, or new shards holding exactly those samples."""
    from ..shards.filter import filter_scores

    result = filter_scores(scores, output, min_score=min_score, top_percent=top_percent)
    for problem in result.problems:
        warn("not copied", problem)
    console.print(
        f"kept {result.kept} of {result.scored} scored samples (score >= {result.threshold:.4f}); "
        f"wrote {result.output}",
        highlight=False,
        soft_wrap=True,
    )
    if result.problems:
        raise fail(f"{len(result.problems)} selected samples could not be copied exactly", EXIT_NOTHING_DONE)
