"""Why a scorer likes a photo: occlusion sensitivity over the whole frame, every variant scored in one batch.

The whole photo (not only the centre square the ranking score sees) is resized to the model's input, and
cut into a grid shaped like the frame (:data:`CELLS` along its long side, 6 x 4 for a 3:2 frame); each
variant greys out one cell with the image's mean colour. A cell's value is the score of the whole image
minus the score with that cell hidden: positive where the region raises the score, negative where it lowers
it. 25 variants for a 3:2 frame instead of 65 for an 8 x 8 grid: a few seconds on a 2-core CPU with ViT-B-32.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..pipeline.images import open_image, prepare

CELLS = 6  # cells along the long side of the frame


def grid_shape(width: int, height: int, cells: int = CELLS) -> tuple[int, int]:
    """(rows, columns) of square-ish cells over a ``width`` x ``height`` frame."""
    short = max(2, int(cells * min(width, height) / max(width, height) + 0.5))
    return (cells, short)[::-1] if width >= height else (cells, short)


def occlusion_variants(image: torch.Tensor, rows: int, cols: int | None = None) -> torch.Tensor:
    """(1 + rows*cols, 3, H, W) uint8: the image, then one variant per cell (row-major), the cell greyed."""
    cols = rows if cols is None else cols
    _, height, width = image.shape
    mean = image.float().mean(dim=(1, 2)).round().to(torch.uint8)[:, None, None]
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    variants = image.unsqueeze(0).repeat(1 + rows * cols, 1, 1, 1)
    for r in range(rows):
        for c in range(cols):
            variants[1 + r * cols + c, :, ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = mean
    return variants


def occlusion_map(scorer, path, precision: str = "auto") -> dict:
    """The heat map of ``path`` under ``scorer``: the whole frame's score and per-cell contributions."""
    photo = open_image(path, draft_size=2 * scorer.backbone.preprocess_cfg.size)
    rows, cols = grid_shape(*photo.size)
    whole = dataclasses.replace(scorer.backbone.preprocess_cfg, resize_mode="squash")  # nothing cropped
    variants = occlusion_variants(prepare(photo, whole), rows, cols)
    scores = scorer.score_images(variants, precision).score.numpy()
    contributions = (scores[0] - scores[1:]).reshape(rows, cols)
    return {
        "score": float(scores[0]),
        "grid": contributions.astype(np.float64).round(6).tolist(),
        "crop": [0.0, 0.0, 1.0, 1.0],  # the whole frame
    }
