"""`clip-aesthetics finetune`: fine-tune a backbone's image tower on a labelled dataset (torchrun too)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..fileio import check_output_folder
from ..runs.tables import format_metric
from .main import app, console, on_interrupt, user_errors

FINETUNE_TEST_METRICS = (("srcc", "SRCC"), ("plcc", "PLCC"), ("accuracy", "acc"))


def _given(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def _build_config(dataset: Path | None, resume: Path | None, output: Path | None, options: dict) -> tuple:
    """(config, run folder, resuming) from the command line."""
    from ..finetune.config import TrainConfig
    from ..finetune.run import resume_config

    if resume is not None:
        if output is not None and output.resolve() != resume.resolve():
            raise ValueError(f"--output {output} differs from --resume {resume}: give one run folder")
        if dataset is not None:
            options = {**options, "dataset": str(dataset)}
        return resume_config(resume, **options), resume, True
    if dataset is None or output is None:
        raise ValueError("give DATASET and --output RUN_DIR (or --resume RUN_DIR)")
    return TrainConfig(dataset=str(dataset), **options), output, False


def _run_folder_kept(arguments: dict) -> str:
    run = arguments.get("resume") or arguments.get("output")
    return f"{run} keeps its last checkpoint (said above): continue with --resume {run}"


@app.command()
@on_interrupt(_run_folder_kept)
@user_errors
def finetune(
    dataset: Path = typer.Argument(
        None, help="Dataset folder (AVA_dataset) or label file (with --resume: optional, the run's)."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Run folder to create."),
    resume: Path = typer.Option(
        None,
        help="Continue the run in this folder from its last checkpoint. The original options may be given "
        "again; only --max-epochs, --workers and --device may change.",
    ),
    dataset_kind: str = typer.Option(
        None, "--dataset", "-d", help="Format: ava (default), csv, aadb, tad66k, para, koniq."
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Backbone: ViT-B-32 (default), RN50, timm:NAME, ..."
    ),
    pretrained: str = typer.Option(None, help="Weights: tag (default openai), file, or 'none' (random)."),
    loss: str = typer.Option(None, help="emd (default, r = 2) or mse (on the predicted mean)."),
    optimizer: str = typer.Option(None, help="sgd (default, momentum 0.5) or adamw."),
    lr_backbone: float = typer.Option(None, help="Tower learning rate (default 1e-4)."),
    lr_head: float = typer.Option(None, help="Head learning rate (default 1e-2)."),
    momentum: float = typer.Option(None, help="SGD momentum (default 0.5)."),
    weight_decay: float = typer.Option(None, help="Weight decay of weight matrices (default 0)."),
    schedule: str = typer.Option(None, help="constant (default) or cosine (decays to 0 at --max-epochs)."),
    warmup_epochs: float = typer.Option(None, help="Linear learning-rate warm-up, in epochs (default 0)."),
    batch_size: int = typer.Option(None, min=1, help="Global batch per optimiser step (default 128)."),
    accumulate: int = typer.Option(None, min=1, help="Gradient accumulation steps per optimiser step."),
    max_epochs: int = typer.Option(None, min=1, help="Upper bound on epochs (default 100)."),
    patience: int = typer.Option(
        None, min=1, help="Early stopping: epochs without a better val metric (10)."
    ),
    dropout: float = typer.Option(None, help="Dropout before the head (default 0)."),
    freeze_backbone: bool = typer.Option(None, "--freeze-backbone", help="Train the head only."),
    freeze_blocks: int = typer.Option(None, min=0, help="Freeze the stem and the first N tower blocks."),
    augment: bool = typer.Option(None, "--augment", help="Random resized crop + flip (default: none)."),
    split_kind: str = typer.Option(
        None,
        help="official (default: the dataset's own), random, or file (--split-file: the authors' files).",
    ),
    split_file: Path = typer.Option(
        None,
        help="With --split-kind file: a folder of the authors' AVA_*.csv split files, or a test-id file.",
    ),
    val_fraction: float = typer.Option(None, help="Validation fraction (of train for official; 0.05)."),
    test_fraction: float = typer.Option(None, help="Test fraction of a random split (0.1)."),
    split_seed: int = typer.Option(None, help="Split seed (default: 123 official, 0 random)."),
    seed: int = typer.Option(None, help="Seed of initialisation, data order, dropout, augmentation (0)."),
    precision: str = typer.Option(None, help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16."),
    workers: int = typer.Option(None, min=0, help="Decoding processes per training process."),
    device: str = typer.Option(None, help="auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK)."),
    stop_after: int = typer.Option(None, min=1, help="Stop after this epoch; --resume continues later."),
) -> None:
    """Fine-tune a CLIP (or timm ImageNet) image tower with a 10-bin head and EMD loss (paper's recipe)."""
    from ..datasets import split_kind as resolve_split_kind
    from ..finetune.run import finetune as run_finetune

    if split_kind is not None or split_file is not None:
        split_kind = resolve_split_kind(split_kind or "official", split_file)
    options = _given(
        dataset_kind=dataset_kind, model=model, pretrained=pretrained, loss=loss, optimizer=optimizer,
        lr_backbone=lr_backbone, lr_head=lr_head, momentum=momentum, weight_decay=weight_decay,
        schedule=schedule, warmup_epochs=warmup_epochs, batch_size=batch_size, accumulate=accumulate,
        max_epochs=max_epochs, patience=patience, dropout=dropout, freeze_backbone=freeze_backbone,
        freeze_blocks=freeze_blocks, augment=augment, split=split_kind, val_fraction=val_fraction,
        test_fraction=test_fraction, split_seed=split_seed, seed=seed, precision=precision,
        workers=workers, device=device,
    )  # fmt: skip
    config, run_dir, resuming = _build_config(dataset, resume, output, options)
    check_output_folder(run_dir)
    result = run_finetune(config, run_dir, resume=resuming, stop_after=stop_after, log=_print)
    _report(result, run_dir)


def _report(result, run_dir: Path) -> None:
    if not result.epochs_run:
        _print(f"no epoch to run: {run_dir} has finished {result.epochs} epochs")
    status = "stopped early" if result.stopped_early else "finished" if result.finished else "paused"
    best = run_dir / "best.safetensors"
    _print(f"{status} after epoch {result.epochs}; best epoch {result.best_epoch}; scorer {best}")
    if result.test:
        t = result.test
        metrics = ", ".join(f"{name} {format_metric(t.get(key))}" for key, name in FINETUNE_TEST_METRICS)
        emd = f", EMD {format_metric(t['emd'], digits=4)}" if "emd" in t else ""
        _print(f"test ({t['n']} images): {metrics}{emd}")


def _print(line: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process speaks for all
        console.print(line, highlight=False)
