"""Throughput of `embed` (JPEG files -> feature cache) against the image tower alone, in the same run.

Generates ``--n`` photo-like JPEGs (default 200 at 500x375), then for each precision measures:

- tower: ``encode_image`` on batches already decoded and resized (the ceiling for this model and CPU);
- embed: ``embed_dataset`` on the folder, i.e. the full job: worker decoding, batching, the model, float16
  shards, Parquet metadata and manifest writes.

ViT-B-32 with random weights (``--pretrained none``: no download needed). Prints images/s and the ratio.

    python benchmarks/bench_embed.py
    python benchmarks/bench_embed.py --n 400 --precision fp32,bf16 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bench_score import make_jpegs  # same generator as the score benchmark (this folder is on sys.path)
from clip_aesthetics import load_backbone
from clip_aesthetics.encoders.compute import autocast
from clip_aesthetics.features import DatasetSpec, embed_dataset
from clip_aesthetics.pipeline.images import iter_batches


@torch.inference_mode()
def tower_rate(backbone, batches: list[torch.Tensor], precision: str) -> float:
    """Images/s of normalise + encode_image alone on pre-decoded uint8 batches."""
    with autocast(backbone.device, precision):
        for images in {len(b): b for b in batches}.values():  # warm-up: kernels are chosen per shape
            backbone.encode_image(backbone.normalize(images))
        start = time.perf_counter()
        for images in batches:
            backbone.encode_image(backbone.normalize(images))
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def embed_rate(backbone, folder: Path, cache: Path, precision: str, batch_size: int, workers: int | None):
    spec = DatasetSpec("folder", str(folder), split="none")
    report = embed_dataset(
        spec,
        backbone,
        cache,
        batch_size=batch_size,
        shard_size=batch_size * 64,
        workers=workers,
        precision=precision,
        overwrite=True,
        progress=False,
    )
    assert report.n_embedded == report.n_records, report.errors[:3]
    return report.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    backbone = load_backbone(args.model, "none", device=args.device)
    print(
        f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, device {backbone.device}, "
        f"{args.model} (random weights), {args.n} JPEGs {width}x{height}, batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        make_jpegs(folder, args.n, width, height)
        paths = sorted(str(p) for p in folder.iterdir())
        batches = [
            b.images
            for b in iter_batches(paths, backbone.preprocess_cfg, batch_size=args.batch_size, progress=False)
        ]
        for precision in args.precision.split(","):
            tower = tower_rate(backbone, batches, precision)
            embedded = embed_rate(
                backbone, folder, Path(tmp) / "cache", precision, args.batch_size, args.workers
            )
            print(
                f"{precision:>5}: tower alone {tower:7.1f} images/s | embed (files -> cache) {embedded:7.1f} "
                f"images/s | embed / tower {embedded / tower:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
