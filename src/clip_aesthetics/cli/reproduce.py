"""`clip-aesthetics reproduce`: the paper's three steps and the ImageNet baselines in one command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..constants import DEFAULT_IMAGENET_MODEL, DEFAULT_MODEL, REPRODUCE_STEPS
from ..tables import format_metric
from .app import app, console, user_errors


@app.command()
@user_errors
def reproduce(
    root: Path = typer.Argument(
        ..., help="The AVA_dataset folder (AVA.txt, images/, aesthetics_image_lists/)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output folder: scorers, feature caches, runs, report.md/.json, plots."
    ),
    split_kind: str = typer.Option(
        "official", help="official (generic_test.jpgl) or random (seeded 80/10/10)."
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
    max_epochs: int = typer.Option(
        100, min=1, help="Fine-tuning epochs at most (early stopping may end sooner)."
    ),
    batch_size: int = typer.Option(128, min=1, help="Batch size for evaluation and fine-tuning."),
    workers: int = typer.Option(None, min=0, help="Decoding processes."),
    device: str = typer.Option(None, help="auto (default), cpu, cuda, ..."),
    precision: str = typer.Option("auto", help="auto (bf16 on CUDA), fp32, bf16, fp16."),
) -> None:
    """Reproduce the study: zero-shot prompts, CLIP vs ImageNet probes, CLIP vs ImageNet fine-tuning."""
    from ..reproduce import ReproduceConfig, Study, write_report

    config = ReproduceConfig(
        ava=str(root),
        out=str(output),
        split=split_kind,
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
    )
    study = Study(config, log=lambda line: console.print(line, highlight=False))
    study.run()
    document = write_report(study)
    table = Table(title="Test split")
    for column in ("scorer", "n", "SRCC", "PLCC", "accuracy"):
        table.add_column(column)
    for row in document["results"]:
        cells = [row["name"], str(row["n"])] + [format_metric(row[k]) for k in ("srcc", "plcc", "accuracy")]
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"wrote {output / 'report.md'}, {output / 'report.json'} and {output / 'plots'}", highlight=False
    )
