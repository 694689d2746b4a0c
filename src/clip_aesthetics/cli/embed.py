"""`clip-aesthetics embed` (dataset -> feature cache) and `fit-probe` (feature cache -> probe scorer file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MODEL
from ..fileio import atomic_write_json, check_output_folder, check_outputs
from ..runs.tables import format_metric, print_table
from .main import (
    EXIT_NOTHING_DONE,
    NOTHING_WRITTEN,
    app,
    console,
    err_console,
    fail,
    on_interrupt,
    user_errors,
    warn,
)
from .options import (
    AnyDataset,
    BatchSize,
    CpuBf16Precision,
    DatasetRoot,
    Decode,
    Device,
    Model,
    Pretrained,
    SplitFile,
    SplitSeed,
    Workers,
    batch_size_for,
)

SHOW_FAILED = 10
PROBE_METRICS = ("srcc", "plcc", "accuracy", "mse", "emd")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``0.8,0.1,0.1`` -> (0.8, 0.1, 0.1)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--fractions takes three numbers like 0.8,0.1,0.1, not {text!r}") from None
    if len(values) != 3:
        raise ValueError(f"--fractions takes three numbers (train,val,test), got {len(values)}")
    return values  # type: ignore[return-value]


def parse_alpha(text: str | None) -> float | str | None:
    """``auto``, a number, or None."""
    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--alpha takes a number or 'auto', not {text!r}") from None


@app.command()
@on_interrupt("the finished shards stay in {output}: run the same command again to continue")
@user_errors
def embed(
    root: DatasetRoot,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Cache folder; an unfinished cache is resumed.")
    ],
    dataset: AnyDataset = "ava",
    split_kind: Annotated[
        str,
        typer.Option(
            help="official (the dataset's), random (seeded), file (--split-file: the authors' split files), "
            "or none (every record as test)."
        ),
    ] = "official",
    split_file: SplitFile = None,
    fractions: Annotated[
        str, typer.Option(help="train,val,test fractions for --split-kind random.")
    ] = "0.8,0.1,0.1",
    val_fraction: Annotated[
        float, typer.Option(help="Share of train used as val when the dataset has none.")
    ] = 0.05,
    split_seed: SplitSeed = None,
    model: Model = DEFAULT_MODEL,
    pretrained: Pretrained = None,
    batch_size: BatchSize = None,
    shard_size: Annotated[
        int | None,
        typer.Option(min=1, help="Records per shard file, a multiple of --batch-size (default: about 4096)."),
    ] = None,
    workers: Workers = None,
    device: Device = "auto",
    precision: CpuBf16Precision = "auto",
    decode: Decode = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Rebuild a cache made with another model or dataset.")
    ] = False,
) -> None:
    """Embed every image of a dataset into a resumable feature cache (float16 shards + Parquet + manifest)."""
    from ..datasets import split_kind as resolve_split_kind
    from ..encoders.backbones import load_backbone
    from ..encoders.compute import resolve_precision
    from ..features import DatasetSpec, embed_dataset

    check_output_folder(output)  # before the model loads
    split_kind = resolve_split_kind(split_kind, split_file)
    spec = DatasetSpec(dataset, str(root), split_kind, parse_fractions(fractions), val_fraction, split_seed)
    backbone = load_backbone(model, pretrained, device=device)
    report = embed_dataset(
        spec,
        backbone,
        output,
        batch_size=batch_size_for(device, batch_size),
        shard_size=shard_size,
        workers=workers,
        precision=resolve_precision(backbone.device, precision, cpu_bf16=True),
        decode=decode,
        overwrite=overwrite,
    )
    for error in report.errors[:SHOW_FAILED]:
        warn("failed", f"{error['id']} ({error['path']}): {error['error']}")
    if len(report.errors) > SHOW_FAILED:
        err_console.print(
            f"... and {len(report.errors) - SHOW_FAILED} more (listed in {output}/manifest.json)"
        )
    console.print(
        f"embedded {report.n_embedded} of {report.n_records} images ({report.n_failed} unreadable) in "
        f"{report.n_shards} shards ({report.shards_resumed} already done); "
        f"this run: {report.images_this_run} images in {report.seconds:.1f} s, "
        f"{report.images_per_second:.1f} images/s; cache: {output}",
        highlight=False,
    )
    if report.n_embedded == 0:
        raise fail(f"none of the {report.n_records} images could be read", EXIT_NOTHING_DONE)


@app.command("fit-probe")
@on_interrupt(NOTHING_WRITTEN)
@user_errors
def fit_probe_command(
    cache: Annotated[Path, typer.Argument(help="Feature cache folder made by `clip-aesthetics embed`.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Probe scorer file to write (.safetensors).")
    ],
    solver: Annotated[str, typer.Option(help="ols (the paper) or ridge.")] = "ols",
    alpha: Annotated[
        str | None, typer.Option(help="Ridge penalty: a number, or auto (chosen on val; the default).")
    ] = None,
    target: Annotated[
        str, typer.Option(help="mean (score) or distribution (the 10 vote fractions).")
    ] = "mean",
    metrics_out: Annotated[
        Path | None, typer.Option("--metrics", help="Also write the fit record (metrics) as JSON.")
    ] = None,
) -> None:
    """Fit a linear probe on cached features (train split); report val and test metrics; save the scorer."""
    from ..features.fit_probe import fit_probe

    check_outputs(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"--output must be a .safetensors file, not {output.name!r}")
    result = fit_probe(cache, solver=solver, alpha=parse_alpha(alpha), target=target)
    result.save(output)
    if metrics_out is not None:
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(metrics_out, result.fit, indent=1)
    _print_fit(result.fit)
    console.print(
        f"wrote {output}; score photos with: clip-aesthetics score PHOTOS --scorer {output}",
        highlight=False,
    )


def _print_fit(fit: dict) -> None:
    selection = fit.get("alpha_selection") or {}
    alpha = (
        f", alpha {fit['alpha']:.4g}" + (" (auto, on val)" if selection else "")
        if fit["solver"] == "ridge"
        else ""
    )
    n = fit["n"]
    title = f"{fit['solver']} probe on {fit['target']}{alpha}; train n = {n['train']}"
    names = [m for m in PROBE_METRICS if any(m in v for v in fit["metrics"].values())]
    rows = [
        [split, str(metrics["n"]), *(format_metric(metrics.get(m)) for m in names)]
        for split, metrics in fit["metrics"].items()
    ]
    print_table(console, title, ["split", "n", *names], rows, right=["n", *names], whole=["n", *names])
    if selection.get("at_grid_edge"):
        warn("warning:", "the chosen alpha is at the edge of the grid searched")
