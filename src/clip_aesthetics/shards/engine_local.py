"""The local engine: DataLoader worker processes read and decode whole shards, this process scores.

Worker ``k`` of ``W`` streams shards ``k, k+W, ...`` (reading and decoding overlap the model), so decoding
parallelism is over shards: give at least as many shards as workers. No Ray needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..encoders.compute import threads_beside_workers
from ..pipeline.images import default_workers, draft_size_for
from .pipeline import BatchScorer, collate_rows, decode_row, shard_rows
from .readers import Shard


class _ShardStream(IterableDataset):
    def __init__(self, shards: list[tuple[int, Shard]], cfg, max_pixels, draft_size, columns: dict):
        self.shards, self.cfg, self.max_pixels, self.draft_size = shards, cfg, max_pixels, draft_size
        self.columns = columns

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for index, shard in mine:
            for row in shard_rows(index, shard, **self.columns):
                yield decode_row(row, self.cfg, self.max_pixels, self.draft_size)


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoders share the cores with the model


def run_local(
    batch_scorer: BatchScorer,
    shards: list[tuple[int, Shard]],
    *,
    batch_size: int = 64,
    workers: int | None = None,
    max_pixels: int,
    draft: bool = True,
    columns: dict | None = None,
) -> Iterator:
    """Scored batches (Arrow tables of one schema) for ``shards`` (pairs of index and shard), markers
    included; ``columns``: what the readers take besides the image (image_column, key_column, metadata)."""
    scorer = batch_scorer.scorer
    cfg = scorer.backbone.preprocess_cfg
    workers = default_workers(scorer.device) if workers is None else workers
    workers = min(workers, len(shards))
    stream = _ShardStream(shards, cfg, max_pixels, draft_size_for(cfg, draft), columns or {})
    loader = DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_rows,
        worker_init_fn=_init_worker if workers else None,
        prefetch_factor=4 if workers else None,
    )
    with threads_beside_workers(workers, scorer.device):  # decoders and the model share the cores
        for batch in loader:
            yield batch_scorer(batch)
