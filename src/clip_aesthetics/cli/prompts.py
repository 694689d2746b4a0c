"""`clip-aesthetics prompts search`: the paper's prompt engineering study on a labelled split."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MODEL, PROMPT_METRICS, PROMPT_STRATEGIES, SPLITS
from ..fileio import check_output_folder, check_outputs
from ..runs.tables import format_metric, print_table
from .main import NOTHING_WRITTEN, app, console, on_interrupt, user_errors
from .options import (
    BatchSize,
    Dataset,
    DatasetRoot,
    Device,
    Precision,
    Pretrained,
    SplitFile,
    SplitKind,
    SplitSeed,
    Workers,
    ZeroShotScore,
    batch_size_for,
)

prompts_app = typer.Typer(no_args_is_help=True, help="Prompt engineering for zero-shot scoring.")
app.add_typer(prompts_app, name="prompts")


def default_cache(output: Path, model: str) -> Path:
    """Feature cache beside the results, named after the model, so reruns reuse the image embeddings."""
    return output.parent / f"features-{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}"


@prompts_app.command("search")
@on_interrupt(NOTHING_WRITTEN)
@user_errors
def search(
    dataset_root: DatasetRoot,
    dataset: Dataset = "ava",
    split: Annotated[str, typer.Option(help="Part to judge prompts on: train, val, test or all.")] = "val",
    split_kind: SplitKind = "official",
    split_file: SplitFile = None,
    split_seed: SplitSeed = None,
    model: Annotated[str, typer.Option("--model", "-m", help="CLIP backbone.")] = DEFAULT_MODEL,
    pretrained: Pretrained = None,
    positive: str = typer.Option(None, help="Positive adjectives: a file (one per line) or a,b,c."),
    negative: str = typer.Option(None, help="Negative adjectives: a file (one per line) or a,b,c."),
    contents: str = typer.Option(
        "imagenet",
        help="Content words for context prompts: imagenet (the authors' class names), imagenet-curated "
        "(open_clip's), a file, or a,b.",
    ),
    strategies: str = typer.Option(",".join(PROMPT_STRATEGIES), help="Strategies to try (comma separated)."),
    zeroshot_score: ZeroShotScore = None,
    metric: str = typer.Option("srcc", help=f"Rank pairs by: {', '.join(PROMPT_METRICS)}."),
    threshold: float = typer.Option(5.0, help="A true mean above this is a 'good' image."),
    output: Path = typer.Option(Path("prompt_search.json"), "--output", "-o", help="Ranked results (JSON)."),
    markdown: Path = typer.Option(None, help="Also write the ranked table as Markdown."),
    save_best: Path = typer.Option(None, help="Save the best pair as a scorer file (.json)."),
    cache: Path = typer.Option(None, help="Feature cache folder (default: beside --output)."),
    batch_size: BatchSize = None,
    workers: Workers = None,
    device: Device = "auto",
    precision: Precision = "auto",
    top: int = typer.Option(10, min=0, help="Rows to show."),
) -> None:
    """Rank positive x negative adjective pairs under fixed, context-aware and ensembled prompts."""
    from ..datasets import split_kind as resolve_split_kind
    from ..encoders.backbones import load_backbone
    from ..encoders.prompts import CLASS_LISTS, NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES
    from ..features.cache import load_features
    from ..features.embed import DatasetSpec, embed_dataset
    from ..metrics import check_threshold
    from ..scorers import save_scorer
    from ..scorers.zeroshot import check_formula
    from ..study.prompt_search import (
        best_scorer,
        contents_for,
        embed_adjectives,
        load_word_list,
        search_pairs,
        similarities,
        write_results,
    )

    if split not in SPLITS:
        raise ValueError(f"--split takes one of {', '.join(SPLITS)}, not {split!r}")
    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    if not chosen or set(chosen) - set(PROMPT_STRATEGIES):
        raise ValueError(f"--strategies takes a comma-separated subset of {', '.join(PROMPT_STRATEGIES)}")
    check_threshold(threshold, "--threshold")
    formula = check_formula(zeroshot_score or "cosine")
    split_kind = resolve_split_kind(split_kind, split_file)
    positives = load_word_list(positive, POSITIVE_ADJECTIVES)
    negatives = load_word_list(negative, NEGATIVE_ADJECTIVES)
    words = contents_for(contents)
    check_outputs(output, markdown)  # before the model loads: no folders made for a typo
    check_output_folder(cache or default_cache(output, model))
    backbone = load_backbone(model, pretrained, device=device)
    if not backbone.has_text:
        raise ValueError(f"prompt search needs a CLIP model, not {model}")
    cache = cache or default_cache(output, model)
    spec = DatasetSpec(dataset, str(dataset_root), split=split_kind, seed=split_seed)
    batch_size = batch_size_for(device, batch_size)
    embed_dataset(spec, backbone, cache, batch_size=batch_size, workers=workers, precision=precision)
    features = load_features(cache).select(split)
    if len(features) < 2:
        raise ValueError(f"split {split!r} has {len(features)} embedded images: nothing to rank prompts on")
    emb = embed_adjectives(backbone, tuple(dict.fromkeys(positives + negatives)), words, formula)
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
        "zeroshot_score": formula,
        "threshold": threshold,
        "contents": contents if contents in CLASS_LISTS else list(words),
    }
    write_results(rows, meta, output, markdown)
    if save_best is not None:
        save_scorer(best_scorer(backbone, rows[0], words, formula), save_best)
    _show(rows, top, len(features), output, save_best)


def _show(rows: list[dict], top: int, n_images: int, output: Path, save_best: Path | None) -> None:
    metrics = ("SRCC", "PLCC", "accuracy")
    table = [
        [str(row["rank"]), row["strategy"], row["positive"], row["negative"]]
        + [format_metric(row[k], digits=4) for k in ("srcc", "plcc", "accuracy")]
        for row in rows[:top]
    ]
    header = ("rank", "strategy", "positive", "negative", *metrics)
    title = f"Best prompt pairs on {n_images} images"
    print_table(console, title, header, table, right=("rank", *metrics), whole=metrics)
    line = f"{len(rows)} configurations; wrote {output}"
    if save_best is not None:
        line += f" and the best as {save_best}"
    console.print(line, highlight=False)
