"""`clip-aesthetics reproduce`: the paper's three steps and the ImageNet baselines in one command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..constants import DEFAULT_IMAGENET_MODEL, DEFAULT_MODEL, REPRODUCE_STEPS
from ..runs.tables import format_metric
from .main import app, console, user_errors

RECIPE_HELP = (
    "paper (default): the authors' settings wherever a reported figure depends on them: their split files "
    "(--split-file) or else their proportions (test 10%, validation 20% of the rest, seed 42); probes fitted "
    "on train + validation (their whole training file); timm's default preprocessing for MIIL's ResNet-50 "
    "(ImageNet mean/std, bicubic, crop 0.95); their zero-shot score (unnormalised text embeddings averaged); "
    "fp32; CLIP fine-tuned for at most 50 epochs. improved: the project's own: the official split, probes "
    "fitted on train only, MIIL's native preprocessing, cosine ensembling, bf16 on CUDA, up to 100 epochs. "
    "Each option below overrides its recipe value; the report lists every departure per row."
)


@app.command()
@user_errors
def reproduce(
    root: Path = typer.Argument(
        ..., help="The AVA_dataset folder (AVA.txt, images/, aesthetics_image_lists/)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output folder: scorers, feature caches, runs, report.md/.json, plots."
    ),
    recipe: str = typer.Option("paper", help=RECIPE_HELP),
    split_kind: str = typer.Option(
        None,
        help="official (generic_test.jpgl), random (paper: the authors' proportions and seed; improved: "
        "seeded 80/10/10) or file (--split-file). Default: the recipe's.",
    ),
    split_file: Path = typer.Option(
        None,
        help="The authors' split files: a folder with AVA_test.csv and AVA_train_split.csv + "
        "AVA_val_split.csv (or AVA_train.csv), from github.com/shiemn/CLIP-knows-IA.",
    ),
    split_seed: int = typer.Option(None, help="Seed of the random split / validation carve-out."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="CLIP backbone."),
    pretrained: str = typer.Option(None, help="CLIP weights: a tag (default openai), a file, or 'none'."),
    imagenet_model: list[str] = typer.Option(
        [DEFAULT_IMAGENET_MODEL], help="ImageNet baseline (timm:NAME); repeatable."
    ),
    imagenet_pretrained: list[str] = typer.Option(
        None,
        help="Weights of each --imagenet-model in the same order: a file, 'none', or '-' (the name's own).",
    ),
    miil_weights: Path = typer.Option(
        None,
        help="Alibaba-MIIL's ImageNet-21k ResNet-50 weights (resnet50_miil_21k.pth): adds the paper's "
        "ResNet-50 pair to the probes, CLIP RN50 vs this model.",
    ),
    steps: str = typer.Option(",".join(REPRODUCE_STEPS), help="Steps to run (comma separated)."),
    zeroshot_score: str = typer.Option(
        None, help="Zero-shot score of the paper's configurations: authors or cosine (default: the recipe's)."
    ),
    max_epochs: int = typer.Option(
        None, min=1, help="Fine-tuning epochs at most (default: the recipe's; early stopping may end sooner)."
    ),
    batch_size: int = typer.Option(128, min=1, help="Batch size for evaluation and fine-tuning."),
    workers: int = typer.Option(None, min=0, help="Decoding processes."),
    device: str = typer.Option(None, help="auto (default), cpu, cuda, ..."),
    precision: str = typer.Option(
        None, help="fp32, bf16, fp16 or auto (bf16 on CUDA). Default: the recipe's (paper: fp32)."
    ),
) -> None:
    """Reproduce the study: zero-shot prompts, CLIP vs ImageNet probes, CLIP vs ImageNet fine-tuning."""
    from ..study.reproduce import ReproduceConfig, Study, write_report

    config = ReproduceConfig(
        ava=str(root),
        out=str(output),
        recipe=recipe,
        split=split_kind,
        split_file=str(split_file) if split_file else None,
        seed=split_seed,
        model=model,
        pretrained=pretrained,
        imagenet_models=tuple(imagenet_model),
        imagenet_pretrained=tuple(imagenet_pretrained or ()),
        miil_weights=str(miil_weights) if miil_weights else None,
        steps=tuple(s.strip() for s in steps.split(",") if s.strip()),
        max_epochs=max_epochs,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        zeroshot_score=zeroshot_score,
    )
    study = Study(config, log=lambda line: console.print(line, highlight=False))
    study.run()
    document = write_report(study)
    table = Table(title=f"Test split ({config.recipe} recipe)")
    for column in ("scorer", "n", "SRCC", "PLCC", "accuracy", "departures"):
        table.add_column(column)
    for row in document["results"]:
        cells = [row["name"], str(row["n"])] + [format_metric(row[k]) for k in ("srcc", "plcc", "accuracy")]
        table.add_row(*cells, str(len(row["departures"])))
    console.print(table)
    console.print(
        f"wrote {output / 'report.md'}, {output / 'report.json'} and {output / 'plots'}", highlight=False
    )
