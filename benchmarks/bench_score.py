"""Throughput of `score` against two baselines measured in the same run.

Baselines, both fp32 with open_clip's own preprocess on full-size PIL decoding:
    ``loop``: one file at a time, one model call per image (how people often score a folder);
    ``dataloader``: the usual pipeline, a torch DataLoader with worker processes and batched model calls.
Ours: clip_aesthetics.score_paths with its defaults (reduced-scale JPEG decoding, uint8 batches normalised on
the device, bf16 on CUDA and on CPUs with native bf16, nvJPEG with --decode auto on CUDA). All use the same
model with random weights (no download needed) and the same prompts; the script reports how closely the
scores agree with the loop's.

    python benchmarks/bench_score.py --n 200 --size 500x375
    python benchmarks/bench_score.py --n 40 --size 4000x3000 --baseline-n 20
    python benchmarks/bench_score.py --device cuda --model ViT-B-16 --n 5000 --batch-size 256   # on a GPU
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
from clip_aesthetics.encoders.compute import resolve_precision
from clip_aesthetics.encoders.prompts import PromptGroups

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
def loop_scores(scorer: ZeroShotScorer, paths: list[Path]) -> np.ndarray:
    """One file at a time: full-size decode, open_clip preprocess, one model call per image."""
    preprocess = open_clip.image_transform(scorer.backbone.preprocess_cfg.size, is_train=False)
    scores = []
    for path in paths:
        pixels = preprocess(Image.open(path).convert("RGB")).unsqueeze(0).to(scorer.device)
        scores.append(float(scorer(pixels).score[0]))
    return np.array(scores)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(Image.open(self.paths[index]).convert("RGB"))


@torch.inference_mode()
def dataloader_scores(scorer: ZeroShotScorer, paths: list[Path], batch_size: int, workers: int) -> np.ndarray:
    """The usual pipeline: DataLoader workers decode and preprocess with PIL, batched fp32 model calls."""
    preprocess = open_clip.image_transform(scorer.backbone.preprocess_cfg.size, is_train=False)
    loader = torch.utils.data.DataLoader(
        _Files(paths, preprocess),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=scorer.device.type == "cuda",
    )
    return np.concatenate([scorer(batch.to(scorer.device)).score.float().cpu().numpy() for batch in loader])


def timed(function, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    scores = function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return scores, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="images for the batched pipelines")
    parser.add_argument(
        "--baseline-n", type=int, default=None, help="images for the per-image loop (default --n)"
    )
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="ours (default: chosen by device)")
    parser.add_argument(
        "--baseline-workers", type=int, default=os.cpu_count(), help="the DataLoader baseline"
    )
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    loop_n = args.baseline_n or args.n
    scorer = ZeroShotScorer(load_backbone(args.model, "none", device=args.device), GROUPS).eval()
    print(
        f"{args.model} (random weights) on {scorer.device}, torch threads {torch.get_num_threads()}, "
        f"cores {os.cpu_count()}, {args.n} JPEGs of {args.size}, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.n, width, height)
        loop, loop_s = timed(loop_scores, scorer, paths[:loop_n])
        _, dataloader_s = timed(dataloader_scores, scorer, paths, args.batch_size, args.baseline_workers)
        report = score_paths(
            scorer,
            paths,
            batch_size=args.batch_size,
            workers=args.workers,
            precision=args.precision,
            progress=False,
        )
    rates = {"loop": loop_n / loop_s, "dataloader": args.n / dataloader_s, "ours": args.n / report.seconds}
    print(f"per-image loop (fp32)      {rates['loop']:8.1f} images/s ({loop_n} images)")
    print(f"DataLoader pipeline (fp32) {rates['dataloader']:8.1f} images/s ({args.baseline_workers} workers)")
    precision = resolve_precision(scorer.device, args.precision, cpu_bf16=True)
    print(f"clip-aesthetics ({precision:>4})    {rates['ours']:8.1f} images/s ({args.precision})")
    print(
        f"ratio ours / loop {rates['ours'] / rates['loop']:.2f}x, ours / DataLoader "
        f"{rates['ours'] / rates['dataloader']:.2f}x"
    )
    ours = {row["path"]: row["score"] for row in report.rows}
    ours_subset = np.array([ours[str(p)] for p in paths[:loop_n]])
    print(
        f"agreement with the loop on {loop_n} images: SRCC {spearmanr(loop, ours_subset)[0]:.4f}, "
        f"mean |score diff| {np.abs(loop - ours_subset).mean():.4f}, "
        f"max |score diff| {np.abs(loop - ours_subset).max():.4f} (scores on 1-10)"
    )


if __name__ == "__main__":
    main()
