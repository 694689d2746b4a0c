"""Throughput of `score` against the usual per-image loop, measured in the same run.

Baseline ("naive"): for each file, PIL opens it at full size, open_clip's own preprocess transforms it and
the model is called on that one image. Ours: clip_aesthetics.score_paths (worker decoding, reduced-scale
JPEG decoding, batched model calls). Both use the same ViT-B-32 with random weights (no download needed)
and the same prompt groups; the script also reports how closely the two agree (SRCC, max |diff|).

    python benchmarks/bench_score.py --n 200 --size 500x375
    python benchmarks/bench_score.py --n 40 --size 4000x3000 --naive-n 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from scipy.stats import spearmanr

from clip_aesthetics import ZeroShotScorer, load_backbone, score_paths
from clip_aesthetics.prompts import PromptGroups

GROUPS = PromptGroups(("a outstanding picture",), ("a horrible picture",))


def make_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth gradients, a subject and sensor noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = top + (bottom - top) * (y / height)[..., None]
        cx, cy, r = (
            rng.uniform(0.2, 0.8) * width,
            rng.uniform(0.2, 0.8) * height,
            rng.uniform(0.1, 0.3) * height,
        )
        image[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=92)
        paths.append(path)
    return paths


@torch.inference_mode()
def naive_scores(scorer: ZeroShotScorer, paths: list[Path]) -> np.ndarray:
    """The usual loop: full-size decode, open_clip preprocess, one model call per image."""
    preprocess = open_clip.image_transform(scorer.backbone.preprocess_cfg.size, is_train=False)
    scores = []
    for path in paths:
        pixels = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
        scores.append(float(scorer(pixels).score[0]))
    return np.array(scores)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="images for our pipeline")
    parser.add_argument("--naive-n", type=int, default=None, help="images for the naive loop (default: --n)")
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    naive_n = args.naive_n or args.n
    scorer = ZeroShotScorer(load_backbone(args.model, "none", device="cpu"), GROUPS).eval()
    print(f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, {args.model} (random weights)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.n, width, height)
        start = time.perf_counter()
        naive = naive_scores(scorer, paths[:naive_n])
        naive_rate = naive_n / (time.perf_counter() - start)
        report = score_paths(
            scorer,
            paths,
            batch_size=args.batch_size,
            workers=args.workers,
            precision=args.precision,
            progress=False,
        )
        ours_rate = args.n / report.seconds
    ours = {row["path"]: row["score"] for row in report.rows}
    ours_subset = np.array([ours[str(p)] for p in paths[:naive_n]])
    print(
        f"images {args.size}: naive loop {naive_rate:.1f} images/s ({naive_n} images), "
        f"clip-aesthetics {ours_rate:.1f} images/s ({args.n} images, precision {args.precision}), "
        f"ratio {ours_rate / naive_rate:.2f}x"
    )
    print(
        f"agreement on {naive_n} images: SRCC {spearmanr(naive, ours_subset)[0]:.4f}, "
        f"mean |score diff| {np.abs(naive - ours_subset).mean():.4f}, "
        f"max |score diff| {np.abs(naive - ours_subset).max():.4f} (scores on 1-10)"
    )


if __name__ == "__main__":
    main()
