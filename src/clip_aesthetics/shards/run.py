"""Score shards into a folder of per-shard Parquet files, resumably, with either engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..progress import progress_bar
from .options import EngineOptions, ScorerRecipe
from .readers import Shard, resolve_shards
from .writer import OutputFolder, build_manifest, finished_shards, scorer_identity

if TYPE_CHECKING:
    from ..scorers.base import Scorer


@dataclass
class ShardRunReport:
    """What a run did: shards written now, skipped (already done), failed; the manifest it wrote."""

    written: list[str] = field(default_factory=list)
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)
    manifest_path: str = ""

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


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
        ValueError: the output folder holds shards of another scorer (and not ``overwrite``), bad options.
        FileNotFoundError: an input shard does not exist.
    """
    if options.max_pixels is None:
        from ..images import DEFAULT_MAX_PIXELS

        options.max_pixels = DEFAULT_MAX_PIXELS
    if options.engine not in ("local", "ray"):
        raise ValueError(f"unknown --engine {options.engine!r} (choose local or ray)")
    start = time.perf_counter()
    shards = resolve_shards(inputs)
    folder = OutputFolder(output)
    recipe = scorer
    if isinstance(scorer, ScorerRecipe):  # with Ray, the driver's copy only names the scorer
        scorer = recipe.build("cpu" if options.engine == "ray" else options.device)
    identity = scorer_identity(scorer, options.embeddings)
    metas = finished_shards(folder, shards, identity, overwrite)
    report = ShardRunReport(skipped=len(metas))
    indexed = [(i, shard) for i, shard in enumerate(shards) if shard.url not in metas]
    config, threshold = scorer.config(), scorer.label_threshold
    if indexed:
        batches = _engine_batches(scorer, recipe, identity, options, indexed)
        with progress_bar(len(indexed), "shards", progress) as advance:
            _write_results(batches, shards, folder, identity, config, threshold, report, advance, metas)
    report.manifest = _manifest(shards, metas, report, identity, config, options)
    report.manifest_path = folder.write_manifest(report.manifest)
    report.seconds = time.perf_counter() - start
    return report


def _engine_batches(scorer, recipe, identity: str, options: EngineOptions, indexed: list[tuple[int, Shard]]):
    from .pipeline import BatchScorer

    if options.engine == "ray":
        from .engine_ray import run_ray

        return run_ray(recipe, identity, options, indexed, scorer.backbone.preprocess_cfg)
    from .engine_local import run_local

    return run_local(
        BatchScorer(scorer, options.precision, options.embeddings),
        indexed,
        batch_size=options.batch_size,
        workers=options.workers,
        max_pixels=options.max_pixels,
        draft=options.draft,
        image_column=options.image_column,
        key_column=options.key_column,
    )


def _write_results(batches, shards, folder, identity, config, threshold, report, advance, metas) -> None:
    from .pipeline import ShardAssembler

    assembler = ShardAssembler(shards)
    for batch in batches:
        for shard, result, reason in assembler.add(batch):
            if result is None:
                report.failed.append({"shard": shard.url, "error": reason})
            else:
                metas[shard.url] = folder.write_shard(result, identity, config, threshold)
                report.written.append(folder.shard_path(shard))
                report.samples += len(result.keys)
            advance(1)
    if assembler.open_shards:  # an engine ended early: say so rather than write a partial shard
        names = ", ".join(s.url for s in assembler.open_shards[:3])
        raise RuntimeError(
            f"the engine stopped before finishing {len(assembler.open_shards)} shards ({names})"
        )


def _manifest(shards, metas: dict[str, dict], report, identity, config, options) -> dict:
    metas = [metas[s.url] for s in shards if s.url in metas]
    run = {
        "engine": options.engine,
        "precision": options.precision,
        "batch_size": options.batch_size,
        "embeddings": options.embeddings,
        "image_column": options.image_column,
        "key_column": options.key_column,
        "columns": ["key", "shard", "score", "label", "raw", "pred_1..pred_10 (distribution heads)", "error"]
        + (["embedding (float16)"] if options.embeddings else []),
    }
    return build_manifest(metas, report.failed, identity, config, run)
