"""The Ray Data engine: read shards and decode in CPU tasks, score in a pool of stateful scorer actors.

    shards --flat_map(read and decode, a CPU task per shard)--> rows: key, uint8 pixels at model size
           --map_batches(ScorerActor, ActorPoolStrategy)--> scores --iter_batches--> driver writes per shard

Only uint8 pixels at model size cross the object store, never float tensors or full-size images. Each actor
loads the model once (on its GPU with ``--gpus-per-actor``); the driver reassembles rows per shard and
writes each shard file when its last row is in, so resume works exactly as with the local engine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np

from .options import EngineOptions, ScorerRecipe
from .pipeline import BatchScorer, decode_row, shard_rows
from .readers import Shard


def _read_and_decode(
    item: dict, cfg, max_pixels: int, draft_size: int | None, columns: dict
) -> Iterator[dict]:
    """A CPU task per shard: stream its samples and decode each to uint8 at model size."""
    import torch

    torch.set_num_threads(1)  # one decoding task per CPU slot
    for row in shard_rows(int(item["shard"]), Shard(item["url"]), **columns):
        yield decode_row(row, cfg, max_pixels, draft_size)


class ScorerActor:
    """One model copy per actor, built once; scores decoded batches (keeps the bookkeeping columns)."""

    def __init__(self, source, identity: str, options: EngineOptions):
        import torch

        from .writer import scorer_identity

        torch.set_num_threads(max(1, int(options.cpus_per_actor)))
        scorer = source.build(options.device) if isinstance(source, ScorerRecipe) else source
        if scorer_identity(scorer, options.embeddings) != identity:  # e.g. other weights on this node
            raise RuntimeError("a Ray worker built a different scorer than the driver (weights differ?)")
        self.score = BatchScorer(scorer, options.precision, options.embeddings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.score(batch)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), or start a local one; True if we started it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError('--engine ray needs Ray Data: pip install "clip-aesthetics[ray]"') from None
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, configure_logging=False)
    return True


def run_ray(
    source, identity: str, options: EngineOptions, indexed: list[tuple[int, Shard]], cfg
) -> Iterator[dict]:
    """Scored column batches for ``indexed`` shards (markers included), as the local engine yields them."""
    import ray

    from ..images import draft_size_for

    started = connect(options.ray_address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
        items = [{"shard": index, "url": shard.url} for index, shard in indexed]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))  # one read task per shard
        # flat_map (rows out) is never fused into the actors below: decoding stays in CPU tasks
        dataset = dataset.flat_map(
            _read_and_decode,
            fn_kwargs={
                "cfg": cfg,
                "max_pixels": options.max_pixels,
                "draft_size": draft_size_for(cfg, options.draft),
                "columns": {"image_column": options.image_column, "key_column": options.key_column},
            },
        )
        dataset = dataset.map_batches(
            ScorerActor,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            fn_constructor_kwargs={"source": source, "identity": identity, "options": options},
            num_gpus=options.gpus_per_actor or None,
            num_cpus=options.cpus_per_actor,
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
    finally:
        if started:
            ray.shutdown()
