"""`clip-aesthetics score`: score and rank photos."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..images import DEFAULT_MAX_PIXELS, find_images
from ..prompts import PromptGroups, PromptRecipe, expand, load_prompt_file
from ..report import DEFAULT_MAX_THUMBNAILS, render_score_report, write_html
from ..scoring import build_scorer, errors_path_for, score_paths, write_rows
from .app import EXIT_NOTHING_DONE, app, console, err_console, fail, user_errors


def prompt_groups(
    positive: list[str] | None, negative: list[str] | None, prompts: Path | None, contents: str | None = None
) -> PromptGroups | None:
    """Custom prompts from the command line or a file; None keeps the paper's defaults."""
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
    from ..prompt_search import contents_for

    words, recipe = contents_for(contents), PromptRecipe()
    return PromptGroups(expand(recipe.positive_adjectives, words), expand(recipe.negative_adjectives, words))


@app.command()
@user_errors
def score(
    paths: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
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
    output: Path = typer.Option(None, "--output", "-o", help="Ranked results: .csv, .jsonl or .parquet."),
    batch_size: int = typer.Option(64, min=1, help="Images per model call."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ..."),
    precision: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16."),
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
) -> None:
    """Score and rank photos by aesthetic quality (zero-shot by default: 'outstanding' vs 'horrible')."""
    groups = prompt_groups(positive, negative, prompts, contents)
    files = find_images(paths)
    if not files:
        raise fail(f"no image files found under {', '.join(map(str, paths))}", EXIT_NOTHING_DONE)
    scorer = build_scorer(
        scorer_file or "zeroshot", model=model, pretrained=pretrained, prompts=groups, device=device
    )
    report = score_paths(
        scorer,
        files,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        max_pixels=max_pixels,
        decode=decode,
    )
    for error in report.errors:
        err_console.print(f"[yellow]skipped[/yellow] {error['path']}: {error['error']}", highlight=False)
    if output is not None:
        write_rows(report.rows, output)
        if report.errors:
            write_rows(report.errors, errors_path_for(output).with_suffix(".csv"))
    if html is not None:
        title = f"Aesthetic scores: {', '.join(map(str, paths))}"
        write_html(render_score_report(report, title=title, max_thumbnails=html_limit), html)
    _summary(report, top, output, html)
    if not report.rows:
        raise fail(f"none of the {len(files)} images could be read", EXIT_NOTHING_DONE)


def _summary(report, top: int, output: Path | None, html: Path | None = None) -> None:
    if top and report.rows:
        table = Table(title=f"Top {min(top, len(report.rows))} of {len(report.rows)}")
        for column in ("rank", "score", "label", "path"):
            table.add_column(column, justify="right" if column in ("rank", "score") else "left")
        for row in report.rows[:top]:
            table.add_row(str(row["rank"]), f"{row['score']:.3f}", row["label"], row["path"])
        console.print(table)
    line = (
        f"scored {report.n_scored}, unreadable {len(report.errors)}, "
        f"{report.seconds:.1f} s, {report.images_per_second:.1f} images/s"
    )
    if output is not None:
        line += f"; wrote {output}"
        if report.errors:
            line += f" and {errors_path_for(output).with_suffix('.csv')}"
    if html is not None:
        line += f"; HTML report {html}"
    console.print(line, highlight=False)
