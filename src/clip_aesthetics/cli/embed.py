"""`clip-aesthetics embed` (dataset -> feature cache) and `fit-probe` (feature cache -> probe scorer file)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .app import EXIT_NOTHING_DONE, app, console, err_console, fail, user_errors, warn

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
@user_errors
def embed(
    root: Path = typer.Argument(..., help="Dataset folder (for --dataset csv: the CSV file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder; an unfinished cache is resumed."),
    dataset: str = typer.Option(
        "ava", "--dataset", "-d", help="ava, csv, aadb, tad66k, para, koniq, folder."
    ),
    split: str = typer.Option("official", help="official (the dataset's), random (seeded), or none."),
    fractions: str = typer.Option("0.8,0.1,0.1", help="train,val,test fractions for --split random."),
    val_fraction: float = typer.Option(0.05, help="Share of train used as val when the dataset has none."),
    split_seed: int = typer.Option(None, help="Seed of the random split or val carve-out (default 0 / 123)."),
    model: str = typer.Option("ViT-B-32", "--model", "-m", help="ViT-B-32, timm:NAME, local-dir:PATH, ..."),
    pretrained: str = typer.Option(None, help="Weights: a tag (default openai), a file, or 'none'."),
    batch_size: int = typer.Option(64, min=1, help="Images per model call."),
    shard_size: int = typer.Option(
        None, min=1, help="Records per shard file, a multiple of --batch-size (default: about 4096)."
    ),
    workers: int = typer.Option(None, min=0, help="Decoding processes (default: depends on the device)."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ..."),
    precision: str = typer.Option(
        "auto", help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32, bf16, fp16."
    ),
    decode: str = typer.Option("auto", help="JPEG decoding: auto (nvJPEG on CUDA), cpu, gpu."),
    overwrite: bool = typer.Option(False, help="Rebuild a cache made with another model or dataset."),
) -> None:
    """Embed every image of a dataset into a resumable feature cache (float16 shards + Parquet + manifest)."""
    from ..backbones import load_backbone
    from ..features import DatasetSpec, embed_dataset
    from ..scorers.base import resolve_precision

    spec = DatasetSpec(dataset, str(root), split, parse_fractions(fractions), val_fraction, split_seed)
    backbone = load_backbone(model, pretrained, device=device)
    report = embed_dataset(
        spec,
        backbone,
        out,
        batch_size=batch_size,
        shard_size=shard_size,
        workers=workers,
        precision=resolve_precision(backbone.device, precision, cpu_bf16=True),
        decode=decode,
        overwrite=overwrite,
    )
    for error in report.errors[:SHOW_FAILED]:
        warn("failed", f"{error['id']} ({error['path']}): {error['reason']}")
    if len(report.errors) > SHOW_FAILED:
        err_console.print(f"... and {len(report.errors) - SHOW_FAILED} more (listed in {out}/manifest.json)")
    console.print(
        f"embedded {report.n_embedded} of {report.n_records} images ({report.n_failed} unreadable) in "
        f"{report.n_shards} shards ({report.shards_resumed} already done); "
        f"this run: {report.images_this_run} images in {report.seconds:.1f} s, "
        f"{report.images_per_second:.1f} images/s; cache: {out}",
        highlight=False,
    )
    if report.n_embedded == 0:
        raise fail(f"none of the {report.n_records} images could be read", EXIT_NOTHING_DONE)


@app.command("fit-probe")
@user_errors
def fit_probe_command(
    cache: Path = typer.Argument(..., help="Feature cache folder made by `clip-aesthetics embed`."),
    out: Path = typer.Option(..., "--out", "-o", help="Probe scorer file to write (.safetensors)."),
    solver: str = typer.Option("ols", help="ols (the paper) or ridge."),
    alpha: str = typer.Option(None, help="Ridge penalty: a number, or auto (chosen on val; the default)."),
    target: str = typer.Option("mean", help="mean (score) or distribution (the 10 vote fractions)."),
    metrics_out: Path = typer.Option(None, "--metrics", help="Also write the fit record (metrics) as JSON."),
) -> None:
    """Fit a linear probe on cached features (train split); report val and test metrics; save the scorer."""
    from ..probe import fit_probe

    if out.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file, not {out.name!r}")
    result = fit_probe(cache, solver=solver, alpha=parse_alpha(alpha), target=target)
    result.save(out)
    if metrics_out is not None:
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(result.fit, indent=1), encoding="utf-8")
    _print_fit(result.fit)
    console.print(
        f"wrote {out}; score photos with: clip-aesthetics score PHOTOS --scorer {out}", highlight=False
    )


def _print_fit(fit: dict) -> None:
    selection = fit.get("alpha_selection") or {}
    alpha = (
        f", alpha {fit['alpha']:.4g}" + (" (auto, on val)" if selection else "")
        if fit["solver"] == "ridge"
        else ""
    )
    n = fit["n"]
    table = Table(title=f"{fit['solver']} probe on {fit['target']}{alpha}; train n = {n['train']}")
    names = [m for m in PROBE_METRICS if any(m in v for v in fit["metrics"].values())]
    for column in ("split", "n", *names):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, metrics in fit["metrics"].items():
        values = [metrics.get(m) for m in names]
        table.add_row(split, str(metrics["n"]), *("-" if v is None or v != v else f"{v:.3f}" for v in values))
    console.print(table)
    if selection.get("at_grid_edge"):
        warn("warning:", "the chosen alpha is at the edge of the grid searched")
