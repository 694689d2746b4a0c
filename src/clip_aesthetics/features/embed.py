"""Embedding a dataset into a feature cache through the shared image pipeline, resumably.

Records are embedded in their dataset order; shard ``k`` holds records ``[k * S, (k + 1) * S)``. Only shards
that the manifest does not list yet are computed, in one pass of the batched pipeline. Batches never cross a
shard boundary and always start at one (``S`` is a multiple of the batch size), so a resumed run puts every
image in the same batch as an uninterrupted run would and ends with identical features.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..datasets import Record, load_and_split, load_dataset
from ..encoders.backbones import Backbone
from ..encoders.compute import autocast
from ..pipeline.images import iter_batches, resolve_decode
from .cache import (
    FEATURE_DTYPE,
    OpenShard,
    cache_plan,
    complete_manifest,
    open_for_writing,
    pending_shards,
    write_shard,
)

DEFAULT_SHARD_SIZE = 4096
SPLIT_KINDS = ("official", "random", "none")


@dataclass(frozen=True)
class DatasetSpec:
    """Which records to embed and how they are split (stored in the manifest).

    ``split='none'`` leaves every record without a split (unlabelled folders); probes need a split.
    """

    name: str
    root: str
    split: str = "official"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    val_fraction: float = 0.05
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLIT_KINDS and not self.split.startswith("file:"):  # file:PATH, see splits
            raise ValueError(f"unknown split {self.split!r} (choose {', '.join(SPLIT_KINDS)})")

    def to_dict(self) -> dict:
        """The definition as given; the resolved seed and the ids of each split are in the split info."""
        data = {"name": self.name, "root": str(Path(self.root).resolve()), "split": self.split}
        if self.split == "random":
            data["fractions"] = list(self.fractions)
        elif self.split == "official":
            data["val_fraction"] = self.val_fraction
        return data


@dataclass
class EmbedReport:
    """What an embed run did; ``n_*`` count the whole cache, ``seconds`` and the rate this run only."""

    out: Path
    n_records: int
    n_embedded: int
    n_failed: int
    n_shards: int
    shards_resumed: int
    images_this_run: int
    seconds: float
    errors: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images_this_run / self.seconds if self.seconds > 0 else float("nan")


def dataset_records(spec: DatasetSpec) -> tuple[list[Record], list[str | None], dict]:
    """Parse and split a dataset: records (parser order), each one's split, and a description for manifests.

    The description holds the parse summary (records dropped as missing or broken) and the split info (the
    seed used and a digest of each split's ids).
    """
    if spec.split == "none":
        parsed, splits, info = load_dataset(spec.name, spec.root), None, None
    else:
        parsed, splits, info = load_and_split(
            spec.name, spec.root, spec.split, fractions=spec.fractions, val_fraction=spec.val_fraction,
            seed=spec.seed,
        )  # fmt: skip
    if not parsed.records:
        raise ValueError(f"{spec.name} dataset at {spec.root} has no records (is the path right?)")
    described = {**spec.to_dict(), "parse": parsed.report.summary()}
    if splits is None:
        return parsed.records, [None] * len(parsed.records), {**described, "split_info": None}
    name_of = {r.id: name for name, members in splits.items() for r in members}
    return (
        parsed.records,
        [name_of.get(r.id) for r in parsed.records],
        {**described, "split_info": info.to_dict()},
    )


def _embed_batch(backbone: Backbone, images: torch.Tensor, precision: str) -> np.ndarray:
    with autocast(backbone.device, precision):
        features = backbone.encode_image(backbone.normalize(images))
    stored = features.to(torch.float16).cpu().numpy()
    if not np.isfinite(stored).all():
        raise ValueError(f"{backbone.spec} produced features outside float16's range: they cannot be cached")
    return stored


class _ShardRouter:
    """Routes each pipeline result (by position in the run) to its shard; writes a shard once it is full."""

    def __init__(
        self, out: Path, manifest: dict, records, splits, order, shard_size: int, dim: int, batch_size: int
    ) -> None:
        self.out, self.manifest, self.records, self.splits = out, manifest, records, splits
        self.order, self.shard_size, self.dim, self.batch_size = order, shard_size, dim, batch_size
        self.open: dict[int, OpenShard] = {}

    def add(self, position: int, features: np.ndarray | None, error: str | None) -> None:
        index = self.order[position]
        k = index // self.shard_size
        if k not in self.open:
            size = min(len(self.records), (k + 1) * self.shard_size) - k * self.shard_size
            self.open[k] = OpenShard(k, k * self.shard_size, np.zeros((size, self.dim), FEATURE_DTYPE))
        shard = self.open[k]
        if error is None:
            shard.features[index - shard.start] = features
        else:
            shard.errors[index - shard.start] = error
        shard.seen += 1
        if shard.seen == len(shard.features):
            write_shard(self.out, self.manifest, self.open.pop(k), self.records, self.splits, self.batch_size)


@torch.inference_mode()
def embed_records(
    backbone: Backbone,
    records: Sequence[Record],
    splits: Sequence[str | None],
    out: str | os.PathLike,
    *,
    source: dict,
    batch_size: int = 64,
    shard_size: int | None = None,
    workers: int | None = None,
    precision: str = "auto",
    decode: str = "auto",
    overwrite: bool = False,
    progress: bool | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EmbedReport:
    """Embed ``records`` into the cache folder ``out``, continuing a matching cache where it stopped.

    Args:
        backbone: the model; its ``encode_image`` output is stored.
        records: the records in a fixed order (shard k holds records [k * shard_size, (k + 1) * shard_size)).
        splits: each record's split (train/val/test or None).
        out: the cache folder.
        source: the dataset and split description stored in the manifest (from :func:`dataset_records`).
        batch_size: images per model call; must divide ``shard_size``.
        shard_size: records per shard file (default: the multiple of ``batch_size`` nearest 4096).
        workers: decoding processes (see :func:`~clip_aesthetics.pipeline.images.iter_batches`).
        precision: ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``.
        decode: JPEG decoding, ``auto`` (nvJPEG on CUDA), ``cpu`` or ``gpu``.
        overwrite: rebuild a cache made with another backbone, preprocessing or dataset.
        progress: show a progress bar (default: when stderr is a terminal).
        on_batch: called after each batch with the number of batches done in this run.

    Raises:
        ValueError: a cache of another setup is in ``out`` (without ``overwrite``), or the shard size is not
            a multiple of the batch size.
    """
    if shard_size is None:
        shard_size = batch_size * max(1, round(DEFAULT_SHARD_SIZE / max(batch_size, 1)))
    if batch_size < 1 or shard_size < 1 or shard_size % batch_size:
        raise ValueError(
            f"--shard-size ({shard_size}) must be a multiple of --batch-size ({batch_size}), so a resumed "
            "run batches every image as an uninterrupted one does"
        )
    start_time, out = time.perf_counter(), Path(out)
    decoder = "gpu" if resolve_decode(decode, backbone.device) else "cpu"
    plan = cache_plan(backbone, records, source, precision, shard_size, decoder)
    manifest = open_for_writing(out, plan, overwrite)
    shard_size = manifest["shard_size"]  # a finished cache made with another batch size is used as it is
    n_shards = -(-len(records) // shard_size)
    pending = pending_shards(out, manifest, n_shards)
    order = [i for k in pending for i in range(k * shard_size, min(len(records), (k + 1) * shard_size))]
    router = _ShardRouter(out, manifest, records, splits, order, shard_size, backbone.feature_dim, batch_size)
    batches = iter_batches(
        ["" if records[i].path is None else str(records[i].path) for i in order],
        backbone.preprocess_cfg,
        batch_size=batch_size,
        workers=workers,
        pin_memory=backbone.device.type == "cuda",
        progress=progress,
        description="embedding",
        device=backbone.device,
        decode=decoder,
    )
    for n_batches, batch in enumerate(batches, start=1):
        features = _embed_batch(backbone, batch.images, precision) if batch.indices else None
        for j, position in enumerate(batch.indices):
            router.add(position, features[j], None)
        for position, reason in batch.errors:
            router.add(position, None, reason)
        if on_batch is not None:
            on_batch(n_batches)
    manifest = complete_manifest(out, manifest, len(records))
    counts = manifest["counts"]
    return EmbedReport(
        out=out,
        n_records=counts["records"],
        n_embedded=counts["embedded"],
        n_failed=counts["failed"],
        n_shards=n_shards,
        shards_resumed=n_shards - len(pending),
        images_this_run=len(order),
        seconds=time.perf_counter() - start_time,
        errors=manifest["errors"],
    )


def embed_dataset(spec: DatasetSpec, backbone: Backbone, out: str | os.PathLike, **options) -> EmbedReport:
    """Parse and split a dataset, then :func:`embed_records` it into ``out`` (same keyword options)."""
    records, splits, source = dataset_records(spec)
    return embed_records(backbone, records, splits, out, source=source, **options)
