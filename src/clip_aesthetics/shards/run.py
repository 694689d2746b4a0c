"""Score shards into a folder of per-shard Parquet files, resumably, with either engine."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..progress import progress_bar
from .options import EngineOptions, ScorerRecipe
from .readers import Shard, is_url, resolve_shards, source_identity
from .writer import (
    OutputFolder,
    RunIdentity,
    build_manifest,
    check_metadata_fields,
    finished_shards,
    scorer_identity,
)

if TYPE_CHECKING:
    from ..scorers.base import Scorer


@dataclass
class ShardRunReport:
    """What a run did: shards written now, skipped (already done), rescored (their source changed), failed;
    the manifest it wrote."""

    written: list[str] = field(default_factory=list)
    skipped: int = 0
    changed: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)
    manifest_path: str = ""

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


class ShardRunInterrupted(Exception):
    """Ctrl-C (or SIGTERM turned into it) during a run; ``report`` says what was written and kept."""

    def __init__(self, report: ShardRunReport):
        super().__init__(f"interrupted: {len(report.written)} shards written this run were kept")
        self.report = report


def score_shards(
    inputs: list[str],
    output: str,
    scorer: Scorer | ScorerRecipe,
    options: EngineOptions,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> ShardRunReport:
    """Score every sample of ``inputs`` into ``output``/<shard>.parquet; skip shards already done.

    Raises:
        ValueError: the output folder holds shards of another scorer or settings (and not ``overwrite``), the
            output folder holds an input, bad options.
        FileNotFoundError: none of the input shards exists.
        ShardRunInterrupted: interrupted; the shards written so far are kept (a rerun goes on from them).
    """
    start = time.perf_counter()
    _check_options(options)
    shards = resolve_shards(inputs)
    check_output_apart(output, [s.url for s in shards], "score")
    folder = OutputFolder(output)
    recipe = scorer
    if isinstance(scorer, ScorerRecipe):  # with Ray, the driver's copy only names the scorer
        scorer = recipe.build("cpu" if options.engine == "ray" else options.device)
    run = RunIdentity(scorer_identity(scorer, options.embeddings), run_settings(scorer, options))
    with ThreadPoolExecutor(max_workers=16) as pool:
        sources = dict(
            zip((s.url for s in shards), pool.map(source_identity, (s.url for s in shards)), strict=True)
        )
    metas, changed = finished_shards(folder, shards, run, sources, overwrite)
    report = ShardRunReport(skipped=len(metas), changed=changed)
    indexed = [(i, shard) for i, shard in enumerate(shards) if shard.url not in metas]
    config, threshold = scorer.config(), scorer.label_threshold
    try:
        if indexed:
            batches = _engine_batches(scorer, recipe, run, options, indexed)
            with progress_bar(len(indexed), "shards", progress) as advance:
                for shard, result, reason in _results(batches, shards):
                    if result is None:
                        report.failed.append({"shard": shard.url, "error": reason})
                    else:
                        metas[shard.url] = folder.write_shard(
                            result, run, config, threshold, sources[shard.url]
                        )
                        report.written.append(folder.shard_path(shard))
                        report.samples += len(result.keys)
                    advance(1)
    except KeyboardInterrupt:
        report.manifest = _manifest(shards, metas, report, run, config, options)
        folder.write_manifest(report.manifest)
        raise ShardRunInterrupted(report) from None
    report.manifest = _manifest(shards, metas, report, run, config, options)
    report.manifest_path = folder.write_manifest(report.manifest)
    report.seconds = time.perf_counter() - start
    return report


def _check_options(options: EngineOptions) -> None:
    if options.engine not in ("local", "ray"):
        raise ValueError(f"unknown --engine {options.engine!r} (choose local or ray)")
    if options.max_pixels is None:
        from ..pipeline.images import DEFAULT_MAX_PIXELS

        options.max_pixels = DEFAULT_MAX_PIXELS
    options.metadata = tuple(options.metadata)
    check_metadata_fields(options.metadata)


def run_settings(scorer, options: EngineOptions) -> dict:
    """Everything besides the scorer that changes a shard's rows (recorded in each file, checked on rerun)."""
    from ..encoders.compute import resolve_precision
    from ..pipeline.images import draft_size_for

    device = "cuda" if options.engine == "ray" and options.gpus_per_actor else scorer.device
    return {
        "precision": resolve_precision(device, options.precision, cpu_bf16=True),
        "max_pixels": options.max_pixels,
        "decode": "cpu",
        "jpeg_draft_size": draft_size_for(scorer.backbone.preprocess_cfg, options.draft),
        "image_column": options.image_column,
        "key_column": options.key_column,
        "metadata": list(options.metadata),
        "embeddings": options.embeddings,
    }


def check_output_apart(output: str, inputs: list[str], command: str) -> None:
    """Refuse an output folder that holds any input (writing there could replace it).

    Raises:
        ValueError: naming the input found in the output folder.
    """
    root = _normal(output)
    for url in inputs:
        target = _normal(url)
        if target == root or target.startswith(root.rstrip("/") + "/"):
            raise ValueError(
                f"--output {output} holds the input {url}: `{command}` never writes where its inputs are; "
                "give another folder"
            )


def _normal(location: str) -> str:
    """A comparable form of a path or URL: local paths absolute with links resolved."""
    if is_url(location):
        return location.rstrip("/")
    return str(Path(os.path.abspath(location)).resolve())


def _engine_batches(
    scorer, recipe, run: RunIdentity, options: EngineOptions, indexed: list[tuple[int, Shard]]
):
    if options.engine == "ray":
        from .engine_ray import run_ray

        return run_ray(recipe, scorer, run, options, indexed)
    from .engine_local import run_local
    from .pipeline import BatchScorer

    return run_local(
        BatchScorer(scorer, run.settings["precision"], options.embeddings),
        indexed,
        batch_size=options.batch_size,
        workers=options.workers,
        max_pixels=options.max_pixels,
        draft=options.draft,
        columns=options.read_columns(),
    )


def _results(batches, shards: list[Shard]):
    """``(shard, result, failure)`` per finished shard, from the engine's scored batches."""
    from .pipeline import ShardAssembler

    assembler = ShardAssembler(shards)
    for batch in batches:
        yield from assembler.add(batch)
    if assembler.open_shards:  # an engine ended early: say so rather than write a partial shard
        names = ", ".join(s.url for s in assembler.open_shards[:3])
        raise RuntimeError(
            f"the engine stopped before finishing {len(assembler.open_shards)} shards ({names}); "
            "rerun the same command to score them"
        )


def _manifest(shards, metas: dict[str, dict], report, run: RunIdentity, config, options) -> dict:
    metas = [metas[s.url] for s in shards if s.url in metas]
    columns = ["key", "shard", "pos", "score", "label", "raw", "pred_1..pred_10 (distribution heads)"]
    columns += ["error", "digest", *options.metadata] + (["embedding"] if options.embeddings else [])
    settings = {"engine": options.engine, "batch_size": options.batch_size, **run.settings}
    settings["columns"] = columns
    manifest = build_manifest(metas, report.failed, run.scorer_id, config, settings)
    manifest["settings"] = run.settings
    manifest["shards"]["rescored_changed_source"] = report.changed
    return manifest
