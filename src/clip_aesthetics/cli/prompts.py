"""`clip-aesthetics prompts search`: the paper's prompt engineering study on a labelled split."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.table import Table

from ..backbones import DEFAULT_MODEL, load_backbone
from ..features.cache import load_features
from ..features.embed import DatasetSpec, embed_dataset
from ..metrics import check_threshold
from ..prompt_search import (
    METRICS,
    STRATEGIES,
    best_scorer,
    contents_for,
    embed_adjectives,
    load_word_list,
    search_pairs,
    similarities,
    write_results,
)
from ..prompts import CLASS_LISTS, NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES
from ..scorers import save_scorer
from .app import app, console, user_errors

prompts_app = typer.Typer(no_args_is_help=True, help="Prompt engineering for zero-shot scoring.")
app.add_typer(prompts_app, name="prompts")


def default_cache(output: Path, model: str) -> Path:
    """Feature cache beside the results, named after the model, so reruns reuse the image embeddings."""
    return output.parent / f"features-{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}"


@prompts_app.command("search")
@user_errors
def search(
    dataset_root: Path = typer.Argument(..., help="Dataset folder (e.g. AVA_dataset)."),
    dataset: str = typer.Option("ava", help="Dataset format: ava, csv, aadb, tad66k, para, koniq."),
    split: str = typer.Option("val", help="Split to judge prompts on: train, val or test."),
    split_kind: str = typer.Option("official", help="official or random (seeded) split."),
    split_seed: int = typer.Option(None, help="Seed of the random split / validation carve-out."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="CLIP backbone."),
    pretrained: str = typer.Option(None, help="Weights: a tag (default openai), a file, or 'none'."),
    positive: str = typer.Option(None, help="Positive adjectives: a file (one per line) or a,b,c."),
    negative: str = typer.Option(None, help="Negative adjectives: a file (one per line) or a,b,c."),
    contents: str = typer.Option(
        "imagenet",
        help="Content words for context prompts: imagenet (the authors' class names), imagenet-curated "
        "(open_clip's), a file, or a,b.",
    ),
    strategies: str = typer.Option(",".join(STRATEGIES), help="Strategies to try (comma separated)."),
    metric: str = typer.Option("srcc", help=f"Rank pairs by: {', '.join(METRICS)}."),
    threshold: float = typer.Option(5.0, help="A true mean above this is a 'good' image."),
    output: Path = typer.Option(Path("prompt_search.json"), "--output", "-o", help="Ranked results (JSON)."),
    markdown: Path = typer.Option(None, help="Also write the ranked table as Markdown."),
    save_best: Path = typer.Option(None, help="Save the best pair as a scorer file (.json)."),
    cache: Path = typer.Option(None, help="Feature cache folder (default: beside --output)."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(None, min=0),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("auto"),
    top: int = typer.Option(10, min=0, help="Rows to show."),
) -> None:
    """Rank positive x negative adjective pairs under fixed, context-aware and ensembled prompts."""
    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    if not chosen or set(chosen) - set(STRATEGIES):
        raise ValueError(f"--strategies takes a comma-separated subset of {', '.join(STRATEGIES)}")
    check_threshold(threshold, "--threshold")
    positives = load_word_list(positive, POSITIVE_ADJECTIVES)
    negatives = load_word_list(negative, NEGATIVE_ADJECTIVES)
    words = contents_for(contents)
    backbone = load_backbone(model, pretrained, device=device)
    if not backbone.has_text:
        raise ValueError(f"prompt search needs a CLIP model, not {model}")
    cache = cache or default_cache(output, model)
    spec = DatasetSpec(dataset, str(dataset_root), split=split_kind, seed=split_seed)
    embed_dataset(spec, backbone, cache, batch_size=batch_size, workers=workers, precision=precision)
    features = load_features(cache).select(split)
    if len(features) < 2:
        raise ValueError(f"split {split!r} has {len(features)} embedded images: nothing to rank prompts on")
    emb = embed_adjectives(backbone, tuple(dict.fromkeys(positives + negatives)), words)
    sims = {k: v for k, v in similarities(features.features, emb).items() if k in chosen}
    rows = search_pairs(
        sims, emb.adjectives, positives, negatives, features.means, threshold=threshold, metric=metric
    )
    meta = {
        "dataset": spec.to_dict(),
        "split": split,
        "n_images": len(features),
        "backbone": backbone.describe(),
        "metric": metric,
        "threshold": threshold,
        "contents": contents if contents in CLASS_LISTS else list(words),
    }
    write_results(rows, meta, output, markdown)
    if save_best is not None:
        save_scorer(best_scorer(backbone, rows[0], words), save_best)
    _show(rows, top, len(features), output, save_best)


def _show(rows: list[dict], top: int, n_images: int, output: Path, save_best: Path | None) -> None:
    table = Table(title=f"Best prompt pairs on {n_images} images")
    for column in ("rank", "strategy", "positive", "negative", "SRCC", "PLCC", "accuracy"):
        table.add_column(column)
    for row in rows[:top]:
        table.add_row(
            str(row["rank"]),
            row["strategy"],
            row["positive"],
            row["negative"],
            f"{row['srcc']:.4f}",
            f"{row['plcc']:.4f}",
            f"{row['accuracy']:.4f}",
        )
    console.print(table)
    line = f"{len(rows)} configurations; wrote {output}"
    if save_best is not None:
        line += f" and the best as {save_best}"
    console.print(line, highlight=False)
