"""Culling a shoot: the one-decode analysis against a two-pass baseline, and the 10,000-photo scale.

1. Analysis throughput (images/s). Baseline, measured in the same run: what a straightforward culling tool
   does, ``score_paths`` for the embeddings/scores plus a second pass that opens every file at full size
   for the technical checks, capture time and thumbnail. Ours: ``analyse_folder`` (one decode per photo in
   the pipeline's workers, at reduced scale, checks + thumbnail + embedding), then a reopen from its cache.
2. Grouping 10,000 frames (512-d embeddings): with capture times and by content alone.
3. The review page's photo list for 10,000 frames: build time and JSON size.

    python benchmarks/bench_cull.py --n 40 --size 3000x2000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench_score import GROUPS, make_jpegs


def two_pass_baseline(scorer, paths: list[Path], thumbs: Path, workers: int | None) -> float:
    """Seconds for score_paths plus a full-size second pass for checks, capture times and thumbnails."""
    from clip_aesthetics import score_paths
    from clip_aesthetics.culling.capture import capture_time
    from clip_aesthetics.culling.technical import technical
    from clip_aesthetics.images import open_image

    start = time.perf_counter()
    score_paths(scorer, paths, workers=workers, progress=False)
    for path in paths:
        image = open_image(path)
        technical(image)
        capture_time(path)
        image.thumbnail((384, 384))
        image.save(thumbs / path.name, "JPEG", quality=85)
    return time.perf_counter() - start


def analysis(args) -> None:
    from clip_aesthetics import ZeroShotScorer, load_backbone
    from clip_aesthetics.culling.shoot import analyse_folder

    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLIP_AESTHETICS_CACHE"] = str(Path(tmp) / "cache")
        folder = Path(tmp) / "shoot"
        folder.mkdir()
        paths = make_jpegs(folder, args.n, width, height)
        scorer = ZeroShotScorer(load_backbone(args.model, "none"), GROUPS).eval()
        (Path(tmp) / "thumbs").mkdir()
        baseline = two_pass_baseline(scorer, paths, Path(tmp) / "thumbs", args.workers)
        start = time.perf_counter()
        analyse_folder(folder, scorer.backbone, workers=args.workers, batch_size=32)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        analyse_folder(folder, scorer.backbone, workers=args.workers, batch_size=32)
        reopen = time.perf_counter() - start
    print(f"analysis of {args.n} JPEGs {args.size}, {args.model}:")
    print(
        f"  two-pass baseline {args.n / baseline:.1f} images/s; ours {args.n / ours:.1f} images/s "
        f"({baseline / ours:.2f}x); reopen from the cache {reopen * 1000:.0f} ms"
    )


def scale(n: int) -> None:
    from clip_aesthetics.app.session import ReviewSession
    from clip_aesthetics.culling.grouping import group_frames
    from clip_aesthetics.culling.shoot import Shoot
    from clip_aesthetics.culling.xmp import Labels

    rng = np.random.default_rng(0)
    scenes = rng.normal(size=(n // 4, 512))
    embeddings = np.repeat(scenes, 4, axis=0)[:n] + rng.normal(0, 0.1, (n, 512))  # bursts of four
    times = np.repeat(np.arange(n // 4) * 60.0, 4)[:n] + np.tile(np.arange(4) * 0.5, n // 4 + 1)[:n]
    start = time.perf_counter()
    groups = group_frames(embeddings, times.tolist(), ["exif"] * n)
    with_times = time.perf_counter() - start
    start = time.perf_counter()
    group_frames(embeddings)
    content = time.perf_counter() - start
    print(
        f"grouping {n} frames: {with_times:.2f} s with capture times, {content:.2f} s by content alone "
        f"({len(set(groups.tolist()))} groups)"
    )

    frames = [
        {
            "rel": f"2024/IMG_{i:05d}.jpg",
            "size": 1,
            "mtime_ns": 1,
            "time": times[i],
            "time_source": "exif",
            "time_text": "2024-05-01T10:00:00.000",
            "sharpness": 100.0 + i % 7,
            "highlights": 0.0,
            "shadows": 0.0,
            "thumb": f"{i:024d}.jpg",
        }
        for i in range(n)
    ]
    session = ReviewSession(Path("/shoot"), scorer=SimpleNamespace(method="zeroshot"))  # scores given below
    session.shoot = Shoot(Path("/shoot"), Path("/cache"), frames, embeddings.astype(np.float32))
    session.labels = {f["rel"]: Labels() for f in frames}
    session.index = {f["rel"]: i for i, f in enumerate(frames)}
    session.rel_of = {str(session.shoot.path(i)): f["rel"] for i, f in enumerate(frames)}
    from clip_aesthetics.culling.cull import cull_rows

    start = time.perf_counter()
    session.rows = cull_rows(session.shoot, rng.uniform(1, 10, n), groups=groups)  # a re-rank
    ranking = time.perf_counter() - start
    start = time.perf_counter()
    payload = json.dumps(session.photos())
    listing = time.perf_counter() - start
    print(
        f"review list of {n} frames: re-ranking {ranking:.2f} s, /api/photos {listing * 1000:.0f} ms, "
        f"{len(payload) / 1e6:.1f} MB of JSON"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="JPEGs for the analysis benchmark")
    parser.add_argument("--size", default="3000x2000")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--scale", type=int, default=10_000, help="frames for the grouping/list benchmark")
    args = parser.parse_args()
    scale(args.scale)
    analysis(args)


if __name__ == "__main__":
    main()
