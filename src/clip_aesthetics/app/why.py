"""Why a scorer likes a photo: occlusion sensitivity, every occluded variant scored in one batch.

The model's input (the resized, centre-cropped photo) is cut into a grid; each variant greys out one cell
with the image's mean colour. A cell's value is the score of the whole image minus the score with that
cell hidden: positive where the region raises the score, negative where it lowers it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backbones import PreprocessConfig
from ..images import open_image, prepare

GRID = 8


def occlusion_variants(image: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(1 + grid², 3, H, W) uint8: the image, then one variant per cell (row-major) with the cell greyed."""
    _, height, width = image.shape
    mean = image.float().mean(dim=(1, 2)).round().to(torch.uint8)[:, None, None]
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    variants = image.unsqueeze(0).repeat(1 + grid * grid, 1, 1, 1)
    for r in range(grid):
        for c in range(grid):
            variants[1 + r * grid + c, :, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = mean
    return variants


def crop_box(width: int, height: int, cfg: PreprocessConfig) -> list[float]:
    """The part of the photo the model sees, as fractions [left, top, width, height]."""
    if cfg.resize_mode == "squash":
        return [0.0, 0.0, 1.0, 1.0]
    side = min(width, height)
    return [(width - side) / 2 / width, (height - side) / 2 / height, side / width, side / height]


def occlusion_map(scorer, path, precision: str = "auto", grid: int = GRID) -> dict:
    """The heat map of ``path`` under ``scorer``: score, per-cell contributions and where they lie."""
    photo = open_image(path)
    cfg = scorer.backbone.preprocess_cfg
    scores = scorer.score_images(occlusion_variants(prepare(photo, cfg), grid), precision).score.numpy()
    contributions = (scores[0] - scores[1:]).reshape(grid, grid)
    return {
        "score": float(scores[0]),
        "grid": contributions.astype(np.float64).round(6).tolist(),
        "crop": crop_box(*photo.size, cfg),
    }
