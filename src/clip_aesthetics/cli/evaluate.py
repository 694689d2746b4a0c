"""`clip-aesthetics evaluate` and `compare`: scorers on a labelled dataset split, metrics and predictions."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..constants import DEFAULT_MAX_PIXELS, TABLE_METRICS
from ..fileio import atomic_write_text, check_outputs
from ..runs.tables import format_interval, format_metric, print_table
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
    BatchSize,
    Dataset,
    DatasetRoot,
    Decode,
    Device,
    MaxPixels,
    Precision,
    Split,
    SplitFile,
    SplitKind,
    SplitSeed,
    Workers,
    ZeroShotScore,
    batch_size_for,
)
from .score import check_scorer_file_options, check_zeroshot_score, prompt_groups

if TYPE_CHECKING:  # the library is imported inside the commands, so that --help is instant
    from ..encoders.prompts import PromptGroups
    from ..features.hub import CachedFeatures
    from ..runs.evaluate import EvaluationResult, EvaluationSet
    from ..scorers.base import Scorer

METHODS = ("zeroshot", "probe", "finetune")
MADE_BY = {"probe": "clip-aesthetics fit-probe", "finetune": "clip-aesthetics finetune"}
SHOW_FAILED = 10

# Options of evaluate and compare only; the shared vocabulary is in options.py.
Manifest = Annotated[
    Path | None, typer.Option(help="Broken-image manifest (default: broken_images.json if present).")
]
ZeroShotModel = Annotated[
    str | None, typer.Option("--model", "-m", help="Zero-shot backbone: ViT-B-32, local-dir:PATH, ...")
]
ZeroShotPretrained = Annotated[
    str | None, typer.Option(help="Zero-shot weights: a tag (default openai), a file, or 'none'.")
]
Positive = Annotated[
    list[str] | None, typer.Option("--positive", help="Zero-shot positive prompt (repeatable).")
]
Negative = Annotated[
    list[str] | None, typer.Option("--negative", help="Zero-shot negative prompt (repeatable).")
]
Prompts = Annotated[Path | None, typer.Option(help="JSON or YAML file with 'positive' and 'negative' lists.")]
Threshold = Annotated[float, typer.Option(help="A true mean above this is 'good' (AVA convention: 5).")]
PredThreshold = Annotated[
    float | None,
    typer.Option(help="A predicted score above this is 'good' (default: the scorer's own rule)."),
]
Bootstrap = Annotated[int, typer.Option(min=0, help="Bootstrap resamples for 95% intervals (0: none).")]
FeatureCaches = Annotated[
    list[Path] | None,
    typer.Option(
        "--features",
        help="A feature cache made by `embed` (repeatable): records it holds are scored from their "
        "features when it was made with the scorer's model, weights and preprocessing.",
    ),
]


def resolve_method(method: str | None, scorer_file: str | None) -> str:
    """The method to evaluate: a scorer file's own, which an explicit ``--method`` must agree with."""
    from ..scorers.registry import scorer_file_method

    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if scorer_file is None:
        if method in MADE_BY:
            raise ValueError(f"--method {method} needs --scorer FILE (a scorer saved by `{MADE_BY[method]}`)")
        return "zeroshot"
    declared = scorer_file_method(scorer_file)
    if method is not None and method != declared:
        raise ValueError(
            f"--method {method} but {scorer_file} is a {declared} scorer; drop --method or fix it"
        )
    return declared


def _check_suffix(path: Path | None, suffix: str, option: str) -> None:
    if path is not None and path.suffix.lower() != suffix:
        raise ValueError(f"{option} must be a {suffix} file, not {path.name!r}")


HEADINGS = {"srcc": "SRCC", "plcc": "PLCC", "accuracy": "acc", "emd": "EMD", "mse": "MSE", "mae": "MAE"}


def _metric_cells(metrics: dict, intervals: dict, names: list[str]) -> list[str]:
    cells = []
    for name in names:
        text = format_metric(metrics.get(name))
        cells.append(f"{text}\n{format_interval(intervals[name])}" if name in intervals else text)
    return cells


def print_results(named: list[tuple[str, EvaluationResult]], title: str) -> None:
    """A rich table: one row per scorer with n, the metrics it has, failures, time and images/s."""
    names = [m for m in TABLE_METRICS if any(m in r.metrics for _, r in named)]
    numbers = ["n", *[HEADINGS[n] for n in names], "failed", "time", "img/s"]
    rows = []
    for name, result in named:
        cells = _metric_cells(result.metrics, result.intervals, names)
        speed = [f"{result.seconds:.1f} s", f"{result.images_per_second:.1f}"]
        rows.append([name, str(result.n_scored), *cells, str(result.n_failed), *speed])
    # metrics (and their intervals) are never cut: past 80 columns each scorer becomes a block of lines
    print_table(console, title, ["scorer", *numbers], rows, right=numbers, whole=numbers)


def _report_failed(result: EvaluationResult) -> None:
    for item in result.failed[:SHOW_FAILED]:
        warn("failed", f"{item['id']} ({item['path']}): {item['error']}")
    if result.n_failed > SHOW_FAILED:
        err_console.print(f"... and {result.n_failed - SHOW_FAILED} more (listed in the metrics file)")


def _load_set(
    root: Path, dataset: str, split: str, kind: str, seed: int | None, manifest: Path | None
) -> EvaluationSet:
    from ..runs.evaluate import load_split

    evaluation_set = load_split(dataset, root, split, kind, seed=seed, manifest=manifest)
    report = evaluation_set.dataset.report
    console.print(
        f"{dataset}: {report.summary()}; split {split} ({evaluation_set.info.kind}): "
        f"{len(evaluation_set.records)} images",
        highlight=False,
    )
    if not evaluation_set.records:
        raise fail(f"split {split!r} of {root} has no images to evaluate", EXIT_NOTHING_DONE)
    return evaluation_set


@app.command()
@on_interrupt(NOTHING_WRITTEN)
@user_errors
def evaluate(
    root: DatasetRoot,
    output: Annotated[Path, typer.Option("--output", "-o", help="Metrics file (.json).")],
    dataset: Dataset = "ava",
    split: Split = "test",
    split_kind: SplitKind = "official",
    split_file: SplitFile = None,
    split_seed: SplitSeed = None,
    manifest: Manifest = None,
    method: Annotated[str | None, typer.Option(help="zeroshot (default), probe or finetune.")] = None,
    scorer_file: Annotated[
        str | None, typer.Option("--scorer", help="A saved scorer file (.json/.safetensors).")
    ] = None,
    model: ZeroShotModel = None,
    pretrained: ZeroShotPretrained = None,
    positive: Positive = None,
    negative: Negative = None,
    prompts: Prompts = None,
    zeroshot_score: ZeroShotScore = None,
    predictions: Annotated[Path | None, typer.Option(help="Per-image predictions (.csv).")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for scatter and histogram PNGs.")] = None,
    html: Annotated[
        Path | None, typer.Option(help="Self-contained HTML report of the photos (.html).")
    ] = None,
    threshold: Threshold = 5.0,
    pred_threshold: PredThreshold = None,
    bootstrap: Bootstrap = 0,
    batch_size: BatchSize = None,
    workers: Workers = None,
    device: Device = "auto",
    precision: Precision = "auto",
    decode: Decode = "auto",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    features: FeatureCaches = None,
) -> None:
    """Evaluate one scorer on a labelled dataset split: metrics JSON, predictions CSV, optional plots."""
    from ..features.hub import open_caches
    from ..runs.evaluate import (
        evaluate_scorer,
        metrics_document,
        plot_evaluation,
        write_json,
        write_predictions,
    )
    from ..runs.html_report import write_html

    _check_suffix(output, ".json", "--output")
    _check_suffix(predictions, ".csv", "--predictions")
    _check_suffix(html, ".html", "--html")
    check_outputs(output, predictions, html, plots / "scatter.png" if plots else None)
    resolve_method(method, scorer_file)
    groups = prompt_groups(positive, negative, prompts)
    check_scorer_file_options(scorer_file, model, pretrained, groups)
    check_zeroshot_score(scorer_file, zeroshot_score)
    evaluation_set = _load_set(
        root, dataset, split, _split_kind(split_kind, split_file), split_seed, manifest
    )
    scorer = _build(scorer_file, model, pretrained, groups, device, _formula(zeroshot_score))
    batch_size = batch_size_for(device, batch_size)
    caches = open_caches(features or [])
    _check_caches(caches, scorer)
    precision = _precision_used(device, precision)
    result = evaluate_scorer(
        scorer,
        evaluation_set.records,
        caches=caches,
        threshold=threshold,
        pred_threshold=pred_threshold,
        bootstrap=bootstrap,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        max_pixels=max_pixels,
        decode=decode,
    )
    _report_failed(result)
    print_results([(scorer_file or "zeroshot", result)], f"{dataset} {split}: {result.n_scored} images")
    write_json({**metrics_document(result, evaluation_set), "precision": precision}, output)
    written = [output]
    if predictions is not None:
        written.append(write_predictions(result, predictions))
    if plots is not None and result.n_scored >= 2:
        written += plot_evaluation(result, plots, title=Path(scorer_file or "zeroshot").stem)
    if html is not None:
        written.append(
            write_html(evaluation_html(result, f"{dataset} {split}: {scorer_file or 'zeroshot'}"), html)
        )
    console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
    if result.n_scored < 2:
        raise fail(
            f"only {result.n_scored} of {len(result.records)} images could be scored", EXIT_NOTHING_DONE
        )


def _check_caches(caches: list[CachedFeatures], scorer: Scorer) -> None:
    """Refuse a --features cache that cannot stand in for the scorer's encoder, saying why."""
    for cache in caches:
        reason = cache.mismatch(scorer)
        if reason is not None:
            raise ValueError(f"--features {cache.path} does not match this scorer: {reason}")


def evaluation_html(result: EvaluationResult, title: str) -> str:
    """The HTML report of an evaluation: photos by predicted score with their true mean."""
    from ..runs.html_report import render_evaluation_report

    rows = [
        {
            "id": result.records[i].id,
            "path": str(result.records[i].path),
            "score": float(result.pred[i]),
            "true_mean": float(result.records[i].mean),
        }
        for i in result.scored
    ]
    return render_evaluation_report(
        rows,
        result.failed,
        result.metrics,
        result.scorer_config,
        title=title,
        seconds=result.seconds,
        threshold=result.thresholds.get("pred"),
    )


def _build(
    scorer_file: str | None,
    model: str | None,
    pretrained: str | None,
    groups: PromptGroups | None,
    device: str,
    formula: str | None = None,
) -> Scorer:
    from ..runs.score import build_scorer

    check_scorer_file_options(scorer_file, model, pretrained, groups)
    return build_scorer(
        scorer_file or "zeroshot",
        model=model,
        pretrained=pretrained,
        prompts=groups,
        device=device,
        formula=formula,
    )


def _formula(zeroshot_score: str | None) -> str | None:
    """--zeroshot-score checked (None: the scorer's default, or a scorer file's own formula)."""
    from ..scorers.zeroshot import check_formula

    return None if zeroshot_score is None else check_formula(zeroshot_score)


def _split_kind(split_kind: str, split_file: Path | None) -> str:
    from ..datasets import split_kind as resolve

    return resolve(split_kind, split_file)


def _names(scorer_files: list[str], zeroshot: bool) -> list[tuple[str, str | None]]:
    """(display name, file) per scorer; file stems unless two collide, then the paths as given."""
    stems = [Path(f).stem for f in scorer_files]
    unique = len(set(stems)) == len(stems) and "zeroshot" not in stems
    named = [(stem if unique else f, f) for stem, f in zip(stems, scorer_files, strict=True)]
    return ([("zeroshot", None)] if zeroshot else []) + named


@app.command()
@on_interrupt(NOTHING_WRITTEN)
@user_errors
def compare(
    root: DatasetRoot,
    output: Annotated[Path, typer.Option("--output", "-o", help="Comparison table (.md).")],
    json_output: Annotated[
        Path | None, typer.Option("--json", help="The same table with details (.json).")
    ] = None,
    dataset: Dataset = "ava",
    split: Split = "test",
    split_kind: SplitKind = "official",
    split_file: SplitFile = None,
    split_seed: SplitSeed = None,
    manifest: Manifest = None,
    scorer_files: Annotated[
        list[str] | None, typer.Option("--scorer", help="A scorer file (repeatable).")
    ] = None,
    zeroshot: Annotated[bool, typer.Option("--zeroshot", help="Also evaluate zero-shot prompts.")] = False,
    model: ZeroShotModel = None,
    pretrained: ZeroShotPretrained = None,
    positive: Positive = None,
    negative: Negative = None,
    prompts: Prompts = None,
    zeroshot_score: ZeroShotScore = None,
    threshold: Threshold = 5.0,
    bootstrap: Bootstrap = 0,
    batch_size: BatchSize = None,
    workers: Workers = None,
    device: Device = "auto",
    precision: Precision = "auto",
    decode: Decode = "auto",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    features: FeatureCaches = None,
) -> None:
    """Evaluate several scorers on the same split and write one table (Markdown, and JSON with --json)."""
    _check_suffix(output, ".md", "--output")
    _check_suffix(json_output, ".json", "--json")
    check_outputs(output, json_output)
    scorer_files = scorer_files or []
    if not scorer_files and not zeroshot:
        raise ValueError("nothing to compare: give --scorer FILE (repeatable) and/or --zeroshot")
    groups = prompt_groups(positive, negative, prompts)
    check_zeroshot_score(None, zeroshot_score)
    if not zeroshot and (model or pretrained or groups or zeroshot_score):
        raise ValueError(
            "--model, --pretrained, --zeroshot-score and prompt options describe the --zeroshot scorer: "
            "add --zeroshot"
        )
    from ..features.hub import open_caches
    from ..scorers.registry import scorer_file_method

    for path in scorer_files:
        scorer_file_method(path)  # fail on a bad file now, not after the first scorer has run
    caches = open_caches(features or [])
    evaluation_set = _load_set(
        root, dataset, split, _split_kind(split_kind, split_file), split_seed, manifest
    )
    batch_size = batch_size_for(device, batch_size)
    options = {"threshold": threshold, "bootstrap": bootstrap, "batch_size": batch_size, "workers": workers}
    precision = _precision_used(device, precision)
    options.update(precision=precision, max_pixels=max_pixels, decode=decode, caches=caches)
    names = _names(scorer_files, zeroshot)
    sources = ["zeroshot" if path is None else path for _, path in names]
    # --model/--pretrained/prompts describe the zero-shot scorer; a file names its own backbone.
    zeroshot_options = {"model": model, "pretrained": pretrained, "prompts": groups, "device": device}
    zeroshot_options["formula"] = _formula(zeroshot_score)
    results = _evaluate_by_encoder(sources, zeroshot_options, evaluation_set, options)
    named = [(name, results[i]) for i, (name, _) in enumerate(names)]
    for _, result in named:
        _report_failed(result)
    print_results(named, f"{dataset} {split}: {len(evaluation_set.records)} images")
    _write_comparison(
        named, evaluation_set, {"threshold": threshold, "precision": precision}, output, json_output
    )


def _precision_used(device: str, precision: str) -> str:
    """The precision ``auto`` stands for here (the rule every command shares), recorded with the metrics."""
    from ..encoders.backbones import resolve_device
    from ..encoders.compute import resolve_precision

    return resolve_precision(resolve_device(device), precision)


def _evaluate_by_encoder(
    sources: list[str], zeroshot_options: dict, evaluation_set: EvaluationSet, options: dict
) -> dict[int, EvaluationResult]:
    """Results by source index; heads on one encoder together, so each image is encoded once for them."""
    from ..runs.evaluate import evaluate_scorers
    from ..runs.score import load_scorer_groups

    results: dict[int, EvaluationResult] = {}
    used: set[Path] = set()
    for group in load_scorer_groups(sources, **zeroshot_options):
        indices, scorers = zip(*group, strict=True)
        results.update(
            zip(indices, evaluate_scorers(scorers, evaluation_set.records, **options), strict=True)
        )
        used |= {c.path for c in options["caches"] if c.mismatch(scorers[0]) is None}
        del group, scorers  # one encoder in memory at a time
        gc.collect()
    for cache in options["caches"]:
        if cache.path not in used:
            warn("note:", f"--features {cache.path} matched none of the scorers' encoders")
    return results


def _write_comparison(
    named: list[tuple[str, EvaluationResult]],
    evaluation_set: EvaluationSet,
    settings: dict,
    output: Path,
    json_output: Path | None,
) -> None:
    from ..runs.evaluate import comparison_markdown, comparison_row, package_versions, write_json

    rows = [comparison_row(name, result) for name, result in named]
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, comparison_markdown(rows))
    written = [output]
    if json_output is not None:
        document = {**evaluation_set.describe(), **settings, "rows": rows}
        written.append(write_json({**document, "versions": package_versions()}, json_output))
    console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
