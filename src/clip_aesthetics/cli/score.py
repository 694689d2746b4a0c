"""`clip-aesthetics score`: score and rank photos."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..constants import DEFAULT_MAX_PIXELS, DEFAULT_MAX_THUMBNAILS
from ..fileio import text_name
from .main import (
    EXIT_INTERRUPTED,
    EXIT_NOTHING_DONE,
    app,
    console,
    err_console,
    fail,
    on_interrupt,
    user_errors,
    warn,
)
from .options import BatchSize, CpuBf16Precision, ZeroShotScore, batch_size_for

if TYPE_CHECKING:  # the library is imported inside the commands, so that --help is instant
    from ..encoders.prompts import PromptGroups
    from ..runs.from_embeddings import StoredEmbeddings
from .shards import score_shards_command, wants_shard_mode


def prompt_groups(
    positive: list[str] | None, negative: list[str] | None, prompts: Path | None, contents: str | None = None
) -> PromptGroups | None:
    """Custom prompts from the command line or a file; None keeps the paper's defaults."""
    from ..encoders.prompts import PromptGroups, load_prompt_file

    if prompts is not None and (positive or negative):
        raise ValueError("use either --prompts FILE or --positive/--negative, not both")
    if contents is not None:
        if prompts is not None or positive or negative:
            raise ValueError("--contents changes the default prompts: drop --prompts/--positive/--negative")
        return default_prompts_over(contents)
    if prompts is not None:
        return load_prompt_file(prompts)
    if bool(positive) != bool(negative):
        raise ValueError("--positive and --negative go together: give at least one of each")
    return PromptGroups(tuple(positive), tuple(negative)) if positive else None


def default_prompts_over(contents: str) -> PromptGroups:
    """The paper's adjectives over other content words (a class-name list, a file or a,b)."""
    from ..encoders.prompts import PromptGroups, PromptRecipe, expand
    from ..study.prompt_search import contents_for

    words, recipe = contents_for(contents), PromptRecipe()
    return PromptGroups(expand(recipe.positive_adjectives, words), expand(recipe.negative_adjectives, words))


def check_zeroshot_score(scorer_file: str | None, zeroshot_score: str | None) -> None:
    """--zeroshot-score is a known formula and describes a zero-shot scorer, not a scorer file."""
    if zeroshot_score is None:
        return
    from ..scorers.zeroshot import check_formula

    check_formula(zeroshot_score)
    if scorer_file is not None:
        raise ValueError("a scorer file records its own zero-shot score: drop --zeroshot-score")


def check_scorer_file_options(
    scorer_file: str | None, model: str | None, pretrained: str | None, groups: PromptGroups | None
) -> None:
    """Refuse backbone and prompt options next to a scorer file (it names its own), before any work.

    A ``laion:`` checkpoint is the exception: an MLP over the embeddings of the backbone that --model and
    --pretrained name (default ViT-L-14, openai).
    """
    if scorer_file is not None and scorer_file.startswith("laion:") and not groups:
        return
    if scorer_file is not None and (model or pretrained or groups):
        raise ValueError(
            "a scorer file names its own backbone and prompts: drop --model/--pretrained/--positive/"
            "--negative/--prompts"
        )


@app.command()
@on_interrupt("nothing was written (no image had been scored yet)")  # once scoring runs, ScoreRun says more
@user_errors
def score(
    paths: list[str] = typer.Argument(
        None,
        help="Image files or folders (walked recursively); or shards: .tar / .parquet files, brace patterns "
        "(shards/{00000..00099}.tar), fsspec URLs (s3://, gs://, https://, hf://).",
    ),
    files_from: str = typer.Option(
        None,
        "--files-from",
        metavar="FILE|-",
        help="Also score the files listed in FILE, one per line, in that order (NUL-separated when it holds "
        "NUL bytes, as find -print0 writes); - reads the list from stdin. For lists of millions.",
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Backbone: ViT-B-32, hf-hub:org/repo, local-dir:PATH."
    ),
    pretrained: str = typer.Option(None, help="Weights: a tag (default openai), a file, or 'none'."),
    scorer_file: str = typer.Option(
        None, "--scorer", help="A saved scorer file instead of zero-shot prompts."
    ),
    positive: list[str] = typer.Option(
        None, "--positive", help="Positive prompt text (repeatable, verbatim)."
    ),
    negative: list[str] = typer.Option(
        None, "--negative", help="Negative prompt text (repeatable, verbatim)."
    ),
    prompts: Path = typer.Option(None, help="JSON or YAML file with 'positive' and 'negative' lists."),
    contents: str = typer.Option(
        None,
        help="Class names of the default prompts: imagenet (the authors' list, default), imagenet-curated "
        "(open_clip's), a file, or a,b.",
    ),
    zeroshot_score: ZeroShotScore = None,
    output: str = typer.Option(
        None, "--output", "-o", help="Ranked results: .csv, .jsonl or .parquet; a FOLDER/ for shard inputs."
    ),
    embeddings: bool = typer.Option(
        False,
        "--embeddings",
        help="Also keep each image's embedding: OUTPUT-STEM.embeddings.parquet (shards: a float16 column).",
    ),
    from_embeddings: Path = typer.Option(
        None, "--from-embeddings", help="Score a --embeddings file instead of images (no image is read)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start over, discarding the parts of an unfinished run (shards: rescore)."
    ),
    batch_size: BatchSize = None,
    part_size: int = typer.Option(
        None, min=1, help="Results per part file, a multiple of --batch-size (default: about 1024)."
    ),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ..."),
    precision: CpuBf16Precision = "auto",
    decode: str = typer.Option("auto", help="JPEG decoding: auto (nvJPEG on CUDA), cpu, gpu."),
    workers: int = typer.Option(None, min=0, help="Decoding processes (default: one per core, at most 8)."),
    top: int = typer.Option(10, min=0, help="How many of the best images to show."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, min=1, help="Refuse larger images (decompression bombs)."
    ),
    html: Path = typer.Option(None, "--html", help="Also write a self-contained HTML report (thumbnails)."),
    html_limit: int = typer.Option(
        DEFAULT_MAX_THUMBNAILS, min=0, help="Embed thumbnails for at most this many best images."
    ),
    engine: str = typer.Option("local", help="Shards: local (worker processes) or ray (Ray Data)."),
    ray_address: str = typer.Option(None, help="Shards, ray: cluster address (auto, ray://host:10001)."),
    ray_timeout: float = typer.Option(
        60.0, min=1.0, help="Shards, ray: seconds to wait for --ray-address before giving up."
    ),
    ray_stall_timeout: float = typer.Option(
        600.0, min=1.0, help="Shards, ray: stop (shards kept) when nothing is scored for this many seconds."
    ),
    actors: int = typer.Option(
        None, min=1, help="Shards, ray: scorer actors, one model copy each (default: from the cluster)."
    ),
    gpus_per_actor: float = typer.Option(0.0, min=0.0, help="Shards, ray: GPUs per scorer actor."),
    cpus_per_actor: float = typer.Option(
        None, min=0.0, help="Shards, ray: CPUs (= torch threads) per actor (default: from the cluster)."
    ),
    metadata: str = typer.Option(
        "url,caption,width,height",
        help="Shards: fields of each sample's .json (Parquet: columns) kept in the score rows; '' for none.",
    ),
    image_column: str = typer.Option(
        None, help="Shards, Parquet: the image-bytes column (default: jpg, ...)."
    ),
    key_column: str = typer.Option(
        None, help="Shards, Parquet: the key column (default: key, else row number)."
    ),
) -> None:
    """Score and rank photos by aesthetic quality (zero-shot by default: 'outstanding' vs 'horrible').

    Results are written in parts as batches finish (in .OUTPUT.parts/ beside the output); rerunning the
    same command after an interruption continues where it stopped.
    """
    from ..runs.html_report import render_score_report, write_html
    from ..runs.resumable import Outputs, ScoreInterrupted, ScoreRun, default_part_rows
    from ..runs.score import ScoreReport, build_scorer

    groups = prompt_groups(positive, negative, prompts, contents)
    check_scorer_file_options(scorer_file, model, pretrained, groups)
    batch_size = batch_size_for(device, batch_size)
    check_zeroshot_score(scorer_file, zeroshot_score)
    if wants_shard_mode(paths or [], output):
        from ..shards.options import EngineOptions, ScorerRecipe

        if html is not None or from_embeddings is not None:
            raise ValueError("--html and --from-embeddings are for single-file runs, not a score folder")
        recipe = ScorerRecipe(scorer_file or "zeroshot", model, pretrained, groups, zeroshot_score)
        precision_name = str(getattr(precision, "value", precision))  # the option may be an enum
        options = EngineOptions(
            engine=engine, batch_size=batch_size, workers=workers, precision=precision_name, device=device,
            max_pixels=max_pixels, embeddings=embeddings, image_column=image_column, key_column=key_column,
            ray_address=ray_address, actors=actors, gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor, ray_timeout=ray_timeout, stall_timeout=ray_stall_timeout,
            metadata=tuple(f.strip() for f in metadata.split(",") if f.strip()),
        )  # fmt: skip
        return score_shards_command(paths or [], output, recipe, options, overwrite)
    outputs = Outputs(None if output is None else Path(output), html, embeddings)
    outputs.validate()  # before any model or image is loaded
    part_rows = part_size or default_part_rows(batch_size)
    if part_rows % batch_size:
        raise ValueError(f"--part-size ({part_rows}) must be a multiple of --batch-size ({batch_size})")
    stored, files = _inputs(paths, from_embeddings, embeddings, files_from)
    names = stored.names if stored else [str(f) for f in files]
    if not names:
        given = [*(paths or []), *([f"--files-from {files_from}"] if files_from else [])]
        where = text_name(from_embeddings) if stored else ", ".join(map(text_name, given))
        raise fail(f"no image files found under {where}", EXIT_NOTHING_DONE)
    if stored and not (scorer_file or model):  # zero-shot on stored embeddings: the model that made them
        model, pretrained = stored.backbone_spec()
    scorer = build_scorer(
        scorer_file or "zeroshot", model=model, pretrained=pretrained, prompts=groups, device=device,
        formula=zeroshot_score,
    )  # fmt: skip
    if stored:
        options, batches = _embedding_batches(scorer, stored, batch_size)
    else:
        pipeline = dict(batch_size=batch_size, workers=workers, max_pixels=max_pixels, embeddings=embeddings)
        options, batches = _image_batches(scorer, files, precision=precision, decode=decode, **pipeline)
    run = ScoreRun(
        names,
        scorer.config(),
        outputs,
        options=options,
        part_rows=part_rows,
        label_threshold=scorer.label_threshold,
        feature_dim=scorer.backbone.feature_dim,
        embedding_info={"backbone": scorer.backbone.describe(), **options},
        overwrite=overwrite,
        batch_size=batch_size,
        files=not stored,
        keep_file=from_embeddings,
    )
    if run.n_done or run.changed:
        changed = (
            f"; {len(run.changed)} changed since they were scored and are scored again" if run.changed else ""
        )
        err_console.print(
            f"continuing an interrupted run: {run.n_done} of {len(names)} already scored{changed} "
            f"(in {text_name(run.folder)}; --overwrite starts over)"
        )
    try:
        result = run.run(batches, top=top, keep_rows=html is not None)
    except ScoreInterrupted as exc:
        raise fail(str(exc), EXIT_INTERRUPTED) from None
    for error in result.errors:
        warn("skipped", f"{error['path']}: {error['error']}")
    if html is not None:
        report = ScoreReport(result.rows or [], result.errors, result.seconds, scorer.config())
        title = (
            f"Aesthetic scores: {text_name(from_embeddings) if stored else ', '.join(map(text_name, paths))}"
        )
        result.written.append(
            write_html(render_score_report(report, title=title, max_thumbnails=html_limit), html)
        )
    _summary(result, top)
    if not result.n_scored:
        raise fail(_nothing_scored(result), EXIT_NOTHING_DONE)


def _image_batches(scorer, files: list[Path], *, precision: str, decode: str, **pipeline):
    """The options that change image scores (recorded with the parts) and the batch source for a run."""
    from ..encoders.compute import resolve_precision
    from ..pipeline.images import resolve_decode
    from ..runs.score import iter_scored

    options = {
        "batch_size": pipeline["batch_size"],
        "precision": resolve_precision(scorer.device, precision, cpu_bf16=True),
        "decode": "gpu" if resolve_decode(decode, scorer.device) else "cpu",
        "max_pixels": pipeline["max_pixels"],
    }

    def batches(order: list[int]):
        return iter_scored(
            scorer, [files[i] for i in order], precision=options["precision"], decode=decode, **pipeline
        )

    return options, batches


def _embedding_batches(scorer, stored: StoredEmbeddings, batch_size: int):
    """Like :func:`_image_batches` for a stored embeddings file (refused if made by another backbone)."""
    stored.check_scorer(scorer)
    options = {"batch_size": batch_size, "embeddings_file": stored.identity()}
    return options, functools.partial(stored.batches, scorer, batch_size=batch_size)


def _inputs(
    paths: list[Path] | None, from_embeddings: Path | None, embeddings: bool, files_from: str | None = None
):
    """(stored embeddings, None) or (None, image files) from the arguments."""
    from ..pipeline.images import find_images
    from ..runs.from_embeddings import StoredEmbeddings

    if from_embeddings is not None:
        if paths or files_from:
            raise ValueError("give either image paths or --from-embeddings FILE, not both")
        if embeddings:
            raise ValueError("--embeddings with --from-embeddings: the embeddings are already stored")
        return StoredEmbeddings.open(from_embeddings), None
    if not paths and not files_from:
        raise ValueError(
            "give image files or folders to score (or --files-from FILE, or --from-embeddings FILE)"
        )
    files = find_images(paths) if paths else []
    if files_from:
        seen = {str(f) for f in files}
        for name in read_file_list(files_from):  # each once; a missing one becomes an error row
            if name not in seen:
                seen.add(name)
                files.append(Path(name))
    return None, files


def read_file_list(source: str) -> list[str]:
    """The names in a list file (``-``: stdin): one per line, or NUL-separated when the data holds a NUL.

    Names are bytes on Linux: they are decoded as file names are (undecodable bytes kept), so any name a
    file system holds can be listed; NUL separation also allows names with line breaks.
    """
    import sys

    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(source, "rb") as handle:
            data = handle.read()
    entries = data.split(b"\0") if b"\0" in data else [line.rstrip(b"\r") for line in data.split(b"\n")]
    return [os.fsdecode(entry) for entry in entries if entry]


def _nothing_scored(result) -> str:
    from ..runs.score import NON_FINITE

    if result.n_non_finite:
        return f"none of the {result.n_inputs} images got a score: {NON_FINITE} for {result.n_non_finite}" + (
            f", {result.n_unreadable} unreadable" if result.n_unreadable else ""
        )
    return f"none of the {result.n_inputs} images could be read"


def _summary(result, top: int) -> None:
    from ..runs.score import NON_FINITE

    if top and result.top_rows:
        from ..runs.tables import print_table

        rows = [(str(r["rank"]), f"{r['score']:.3f}", r["label"], r["path"]) for r in result.top_rows]
        title = f"Top {len(result.top_rows)} of {result.n_scored}"
        print_table(console, title, ("rank", "score", "label", "path"), rows, right=("rank", "score"))
    line = f"scored {result.n_scored}, unreadable {result.n_unreadable}"
    if result.n_non_finite:
        line += f", {NON_FINITE} {result.n_non_finite}"
    if result.n_resumed:
        line += f" ({result.n_resumed} from the interrupted run)"
    line += f", {result.seconds:.1f} s, {result.images_per_second:.1f} images/s"
    if result.written:
        line += "; wrote " + ", ".join(text_name(p) for p in result.written)
    if result.removed:
        line += "; removed the previous run's " + ", ".join(text_name(p) for p in result.removed)
    console.print(line)
