"""Data for fine-tuning: labelled splits as target tensors, per-epoch shards, and batch augmentation.

Images are decoded every epoch by the shared pipeline
(:func:`clip_aesthetics.pipeline.images.iter_batches`: worker processes, uint8 tensors, pinned memory);
nothing holds the decoded dataset in memory. Each epoch's order is a seeded permutation
(``DistributedSampler`` semantics: padded to a multiple of the process count, then strided by rank), so it
depends only on (seed, epoch, rank) and a resumed run sees the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DistributedSampler

from ..datasets import Record, SplitInfo, load_and_split
from ..encoders.backbones import PreprocessConfig
from ..pipeline.images import LoadedBatch, iter_batches
from .config import TrainConfig
from .loss import N_BINS

CROP_SCALE = (0.5, 1.0)  # milder than ImageNet's (0.08, 1): a tight crop changes an image's composition
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass
class LabelledSplit:
    """One split as parallel arrays: image paths, target distributions (N, 10) and mean scores (N,)."""

    ids: list[str]
    paths: list[str]
    targets: torch.Tensor
    means: np.ndarray
    has_votes: bool

    def __len__(self) -> int:
        return len(self.paths)


def two_point_distribution(mean: float) -> np.ndarray:
    """A distribution on the two bins around ``mean`` with exactly that mean (for labels without votes)."""
    mean = min(max(mean, 1.0), 10.0)
    low = min(math.floor(mean), N_BINS - 1)
    dist = np.zeros(N_BINS)
    dist[low - 1], dist[low] = 1.0 - (mean - low), mean - low
    return dist


def labelled_split(records: list[Record]) -> LabelledSplit:
    """Arrays of a list of labelled records (votes as distributions, or two-point stand-ins)."""
    has_votes = all(r.votes is not None for r in records)
    dists = [r.distribution if r.votes is not None else two_point_distribution(r.mean) for r in records]
    targets = torch.tensor(np.array(dists, dtype=np.float32).reshape(-1, N_BINS))
    return LabelledSplit(
        ids=[r.id for r in records],
        paths=[str(r.path) for r in records],
        targets=targets,
        means=np.array([r.mean for r in records], dtype=np.float64),
        has_votes=has_votes,
    )


def load_splits(config: TrainConfig) -> tuple[dict[str, LabelledSplit], SplitInfo, str]:
    """Parse the dataset, split it as configured; returns the splits, their description and the parse summary.

    Raises:
        ValueError: the dataset is unlabelled, a split is too small, or EMD is asked for without votes.
    """
    val, test = config.val_fraction, config.test_fraction
    parsed, splits, info = load_and_split(
        config.dataset_kind,
        config.dataset,
        config.split,
        fractions=(1.0 - val - test, val, test),
        val_fraction=val,
        seed=config.split_seed,
    )
    if not parsed.labelled:
        raise ValueError(f"{config.dataset} has no score labels for every image: fine-tuning needs them")
    out = {
        name: labelled_split([r for r in records if r.path is not None]) for name, records in splits.items()
    }
    if len(out["train"]) < 1 or len(out["val"]) < 2:
        raise ValueError(
            f"split too small: {len(out['train'])} train and {len(out['val'])} validation images "
            "(need >= 1 and >= 2; change --val-fraction or --split-kind)"
        )
    if config.loss == "emd" and not out["train"].has_votes:
        raise ValueError(f"{config.dataset_kind} labels are mean scores without votes: use --loss mse")
    return out, info, parsed.report.summary()


def epoch_order(n: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This rank's indices for ``epoch``: a seeded shuffle, padded and strided like DistributedSampler."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """This rank's share of an evaluation set: every item exactly once over all ranks (no padding)."""
    return list(range(rank, n, world_size))


def iter_indexed_batches(
    paths: list[str],
    order: list[int],
    cfg: PreprocessConfig,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    progress: bool | None,
    description: str,
) -> Iterator[tuple[LoadedBatch, list[int]]]:
    """Decode ``paths[order]`` in order; yields each batch with the split indices of its decoded images."""
    for batch in iter_batches(
        [paths[i] for i in order],
        cfg,
        batch_size=batch_size,
        workers=workers,
        pin_memory=pin_memory,
        progress=progress,
        description=description,
    ):
        yield batch, [order[i] for i in batch.indices]


def augment_batch(images: torch.Tensor) -> torch.Tensor:
    """Random resized crop (area 50-100%, aspect 3/4-4/3) and horizontal flip of a uint8 batch, on its device.

    One affine ``grid_sample`` call for the whole batch; the output has the input's size and dtype. Random
    numbers come from the global generator of the batch's device, which the trainer seeds per epoch.
    """
    n, device = images.shape[0], images.device
    rand = torch.rand(n, 5, device=device)
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * rand[:, 0]
    log_ratio = math.log(CROP_RATIO[0]) + (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])) * rand[:, 1]
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image's width and height
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1.0 - width) * (2.0 * rand[:, 2] - 1.0)  # in grid coordinates, [-1, 1]
    centre_y = (1.0 - height) * (2.0 * rand[:, 3] - 1.0)
    flip = torch.where(rand[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)
